"""MQTT 5 from q through the host: `MQTTVersion 5` and KX's `cleanstart`, the MQTT 5 conn options, pubp /
pubbatchp with properties, msgrcvdp with the received ones, msgfail with the reason, and the negotiated limits
in .mqtt.stats[] — against mosquitto 2.0 with tight limits it enforces (Receive Maximum 2, Topic Alias Maximum
2, Maximum Packet Size 256: a client breaking one is disconnected), with mosquitto_sub / mosquitto_pub -V 5 as
independent peers; and a shared subscription splitting a stream across three q processes."""
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from broker import Broker, free_port
from qhost import NIL, QError, Sym

S = Sym


@pytest.fixture(scope="module")
def strict():
    b = Broker(mqtt5_limits=True)
    yield b
    b.close()


def v5(**kw):
    """conn options: MQTTVersion 5 and kw (symbol keys)."""
    opts = {S("MQTTVersion"): 5}
    opts.update({S(k): v for k, v in kw.items()})
    return opts


def wait_calls(q, name, n, timeout=20):
    q.loop_until(lambda: len(q.callbacks(name)) >= n, timeout)
    return q.callbacks(name)


def pub5(broker, topic, msg, *props):
    """mosquitto_pub -V 5 -q 1 with `-D publish NAME VALUE` for each (name, value)."""
    args = ["mosquitto_pub", "-V", "5", "-h", "127.0.0.1", "-p", str(broker.tcp_port), "-q", "1", "-t", topic,
            "-m", msg]
    for name, *value in props:
        args += ["-D", "publish", name, *value]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Sub5:
    """mosquitto_sub -V 5 -F FORMAT on the plain listener; ready once a probe went through."""

    def __init__(self, broker, topic, fmt):
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-V", "5", "-h", "127.0.0.1", "-p", str(broker.tcp_port), "-q", "1", "-t", topic,
             "-F", fmt, "-i", f"qhost-sub5-{free_port()}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()
        probe = topic.rstrip("#").rstrip("/") + "/__probe"
        deadline = time.time() + 10
        while not any("__probe" in x for x in self.lines):
            pub5(broker, probe, "__probe")
            if time.time() > deadline:
                raise RuntimeError("mosquitto_sub -V 5 did not start receiving")
            time.sleep(0.05)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    def wait_for(self, n, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline and len(self.got()) < n:
            time.sleep(0.02)
        return self.got()

    def got(self):
        return [x for x in self.lines if "__probe" not in x]

    def close(self):
        self.proc.kill()
        self.proc.wait()


TOPICS = [f"tele/site-0001/gateway-000{i}/t1" for i in range(4)]  # 30 bytes each
PROPS = {S("messageExpiry"): 60, S("contentType"): "text/plain", S("payloadFormat"): 1,
         S("responseTopic"): "reply/q5", S("correlationData"): b"c1", S("userProperties"): {S("unit"): "C"}}


def test_v5_tight_limits_properties_aliases(engine, strict):
    q = engine
    sub = Sub5(strict, "tele/#", "%t|%p|%E|%C|%F|%R|%D|%P")
    try:
        assert q.conn(strict.tcp_uri, "q5", v5(cleanstart=True, sessionExpiryInterval=60, receiveMaximum=8,
                                               userProperties={S("site"): "gw1"})) == NIL
        st = q.call("stats", NIL)
        # What mosquitto's CONNACK said.
        assert (st["serverReceiveMaximum"], st["serverMaximumPacketSize"], st["serverTopicAliasMaximum"],
                st["serverKeepAlive"]) == (2, 256, 2, 10), st
        # Four topics over two aliases, QoS 1 and 2, far more than 2 in flight wanted: the broker would
        # disconnect us for a third message in flight, a third alias or a packet over 256 bytes.
        want = []
        toks = []
        for i in range(60):
            t = TOPICS[(i // 3) % 4]
            toks.append(q.call("pubp", S(t), f"{i:016}", 1 + i % 2, False, PROPS))
            want.append(f"{t}|{i:016}")
        # The batch form: the same properties on each message.
        btoks = q.call("pubbatchp", [TOPICS[0], TOPICS[3]], ["b0", "b1"], 1, False, PROPS)
        assert len(btoks) == 2
        want += [f"{TOPICS[0]}|b0", f"{TOPICS[3]}|b1"]
        # Larger than the broker's Maximum Packet Size: msgfail with the reason, the connection stays.
        big = q.call("pubp", S("tele/big"), "x" * 300, 1, False, {})
        fails = wait_calls(q, ".mqtt.msgfail", 1)
        sent = wait_calls(q, ".mqtt.msgsent", 62)
        assert len(fails) == 1 and fails[0][0] == big, fails
        assert fails[0][1].startswith("Packet too large (0x95)"), fails
        assert sorted(a[0] for a in sent) == sorted(toks + btoks)
        lines = sub.wait_for(62)
        assert sorted(x.split("|")[0] + "|" + x.split("|")[1] for x in lines) == sorted(want), lines
        for x in lines:
            t, p, expiry, ctype, fmt, rtopic, corr, user = x.split("|")
            assert 0 < int(expiry) <= 60 and (ctype, fmt, rtopic, corr, user) == (
                "text/plain", "1", "reply/q5", "c1", "unit:C"), x
        st = q.call("stats", NIL)
        assert st["topicAliased"] > 0 and st["topicAliasBytesSaved"] > 0, st
        assert st["failed"] == 1 and st["reconnects"] == 0 and st["connected"] is True, st
        assert q.callbacks(".mqtt.disconn") == []
        # topicAliases 0: no alias, however often a topic repeats.
        h = q.call("connhx", S(strict.tcp_uri), S("q5noalias"), {S(""): NIL, **v5(topicAliases=0)})
        toks = [q.call("pubph", h, S(TOPICS[0]), f"n{i}", 1, False, {}) for i in range(5)]
        sent = wait_calls(q, ".mqtt.msgsenth", 5)
        assert sorted(a[1] for a in sent) == sorted(toks)
        st = q.call("statsh", h)
        assert st["sent"] == 5 and st["topicAliased"] == 0, st
    finally:
        sub.close()


def test_v5_received_properties_and_refusals(engine, broker):
    q = engine
    # Received properties reach msgrcvdp (rcvProperties 1b) from mosquitto_pub -V 5 -D publish ….
    assert q.conn(broker.tcp_uri, "q5rx", v5(rcvProperties=True)) == NIL
    assert q.call("subx", S("rx/#"), 1) == NIL
    time.sleep(0.3)
    q.loop(50)
    pub5(broker, "rx/1", "hello", ("message-expiry-interval", "30"), ("content-type", "text/plain"),
         ("response-topic", "r/t"), ("correlation-data", "abc"), ("payload-format-indicator", "1"),
         ("user-property", "unit", "C"), ("user-property", "sensor", "t1"))
    pub5(broker, "rx/2", "plain")
    got = wait_calls(q, ".mqtt.msgrcvdp", 2)
    assert q.callbacks(".mqtt.msgrcvd") == []
    (t1, m1, p1), (t2, m2, p2) = sorted(got, key=lambda a: a[0])
    assert (t1, m1, t2, m2, p2) == ("rx/1", "hello", "rx/2", "plain", {})
    assert 0 < p1.pop("messageExpiry") <= 30, p1
    assert p1 == {"contentType": "text/plain", "responseTopic": "r/t", "correlationData": b"abc",
                  "payloadFormat": 1, "userProperties": {"unit": "C", "sensor": "t1"}}, p1
    q.call("disconnect", 0)


def test_v5_refused_publish_is_msgfail(engine):
    q = engine
    fd, acl = tempfile.mkstemp()
    os.write(fd, b"topic readwrite ok/#\n")
    os.close(fd)
    b = Broker(tcp_extra=f"acl_file {acl}\n")
    try:
        h = q.call("connhx", S(b.tcp_uri), S("q5acl"), {S(""): NIL, **v5()})
        denied = q.call("pubph", h, S("no/x"), "1", 1, False, {S("userProperties"): {S("a"): "b"}})
        ok = q.call("pubxh", h, S("ok/x"), "2", 1, False)
        fails = wait_calls(q, ".mqtt.msgfailh", 1)
        sent = wait_calls(q, ".mqtt.msgsenth", 1)
        q.loop(200)
        # The broker's PUBACK reason code (Not authorized), not retried; the allowed one delivered.
        assert q.callbacks(".mqtt.msgfailh") == [[h, denied, "Not authorized (0x87)"]], fails
        assert q.callbacks(".mqtt.msgsenth") == [[h, ok]], sent
        assert q.call("statsh", h)["failed"] == 1
    finally:
        b.close()
        os.unlink(acl)


def test_v5_cleanstart_and_session_expiry_resume(engine, broker):
    q = engine
    opts = v5(cleanstart=False, sessionExpiryInterval=60)
    assert q.conn(broker.tcp_uri, "q5keep", v5(cleanstart=True)) == NIL
    q.call("disconnect", 0)
    assert q.conn(broker.tcp_uri, "q5keep", opts) == NIL
    assert q.call("subx", S("keep/#"), 1) == NIL
    time.sleep(0.3)
    q.loop(50)
    q.call("disconnect", 100)
    # Offline: the broker keeps the session (Session Expiry 60 s) and queues for it.
    pub5(broker, "keep/1", "while away")
    assert q.conn(broker.tcp_uri, "q5keep", opts) == NIL
    assert wait_calls(q, ".mqtt.msgrcvd", 1) == [["keep/1", "while away"]]
    q.call("disconnect", 0)
    # cleanstart 1b (the default) starts afresh: nothing queued while away arrives.
    pub5(broker, "keep/2", "lost")
    assert q.conn(broker.tcp_uri, "q5keep", v5(cleanstart=True)) == NIL
    q.loop(500)
    assert q.callbacks(".mqtt.msgrcvd") == [["keep/1", "while away"]]


def test_v5_option_and_property_errors(engine, broker):
    q = engine
    for opts, err in [
        ({S("sessionExpiryInterval"): 60}, "sessionExpiryInterval: MQTT 5 only"),
        ({S("userProperties"): {S("a"): "b"}}, "userProperties: MQTT 5 only"),
        ({S("cleanstart"): True}, "cleanstart: MQTT 5 only"),
        ({S("MQTTVersion"): 6}, "MQTTVersion invalid"),
        (v5(receiveMaximum=0), "receiveMaximum invalid"),
        (v5(userProperties=5), "userProperties type incorrect"),
        (v5(topicAliases=-1), "topicAliases invalid"),
        (v5(maximumPacketSize=10), "maximumPacketSize invalid"),
    ]:
        with pytest.raises(QError, match=f"^{re.escape(err)}$"):
            q.conn(broker.tcp_uri, "q5err", opts)
    # Properties on an MQTT 3.1.1 connection: refused; none (an empty dictionary) is fine.
    assert q.conn(broker.tcp_uri, "q5v4") == NIL
    with pytest.raises(QError, match="^properties need MQTTVersion 5$"):
        q.call("pubp", S("t"), "x", 1, False, {S("messageExpiry"): 5})
    assert isinstance(q.call("pubp", S("t"), "x", 1, False, {}), int)
    assert q.conn(broker.tcp_uri, "q5e", v5()) == NIL
    for props, err in [
        (5, "props type"),
        ({S("expiry"): 5}, "props: unsupported property name"),
        ({S("messageExpiry"): "x"}, "messageExpiry type incorrect"),
        ({S("messageExpiry"): -1}, "messageExpiry invalid"),
        ({S("payloadFormat"): 2}, "payloadFormat invalid"),
        ({S("responseTopic"): "a/#"}, "responseTopic invalid"),
        ({S("userProperties"): "x"}, "userProperties type incorrect"),
    ]:
        with pytest.raises(QError, match=f"^{re.escape(err)}$"):
            q.call("pubp", S("t"), "x", 1, False, props)
    with pytest.raises(QError, match="^props type$"):
        q.call("pubbatchp", S("t"), ["a"], 1, False, 5)
    assert len(q.call("pubbatchp", S("t"), ["a", "b"], 1, False, NIL)) == 2


def test_v5_brokers_disconnect_reason_reaches_disconn(engine):
    """A scripted MQTT 5 broker accepts, then sends DISCONNECT Server busy with a Reason String (mosquitto 2.0.11
    sends none a test can provoke): disconn gets the reason code and the broker's words."""
    import socket
    q = engine
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    reason = b"maintenance"

    def broker():
        c, _ = srv.accept()
        c.recv(4096)  # CONNECT
        c.sendall(bytes([0x20, 3, 0, 0, 0]))  # CONNACK: accepted, no properties
        time.sleep(0.3)
        props = bytes([0x1F, 0, len(reason)]) + reason  # Reason String
        c.sendall(bytes([0xE0, 2 + len(props), 0x89, len(props)]) + props)  # DISCONNECT Server busy
        time.sleep(0.5)
        c.close()

    t = threading.Thread(target=broker, daemon=True)
    t.start()
    try:
        assert q.conn(f"tcp://127.0.0.1:{port}", "q5dis", v5(autoReconnect=False)) == NIL
        got = wait_calls(q, ".mqtt.disconn", 1)
        assert "Server busy (0x89)" in got[0][0] and "the broker says: maintenance" in got[0][0], got
        assert q.call("stats", NIL)["connected"] is False
    finally:
        t.join(5)
        srv.close()


def test_v5_over_tls_round_trip(engine, broker):
    """MQTT 5 over TLS: properties out with pubp and back in with msgrcvdp on a handle connection."""
    q = engine
    h = q.call("connhx", S(broker.tls_uri), S("q5tls"),
               {S(""): NIL, **v5(rcvProperties=True), S("trustStore"): S(broker.certs.ca)})
    assert q.call("subxh", h, S("tls5/#"), 2) == NIL
    time.sleep(0.3)
    q.loop(50)
    props = {S("contentType"): "application/json", S("correlationData"): b"\x00\x01",
             S("userProperties"): {S("unit"): "C", S("unit "): "K"}}
    tok = q.call("pubph", h, S("tls5/a"), b"{}", 2, False, props)
    got = wait_calls(q, ".mqtt.msgrcvdph", 1)
    assert got == [[h, "tls5/a", "{}", {"contentType": "application/json", "correlationData": b"\x00\x01",
                                         "userProperties": {"unit": "C", "unit ": "K"}}]], got
    assert wait_calls(q, ".mqtt.msgsenth", 1) == [[h, tok]]


SHARED_N = 30000


@pytest.mark.parametrize("version", [5, 4], ids=["mqtt5", "mqtt311"])
def test_shared_subscription_splits_a_stream_across_three_q_processes(broker, version):
    """A central kdb+ ingesting a fleet: three q processes (child.py, each loading the extension through the
    host) subscribe to $share/fleet/tele/# at QoS 1; mosquitto_pub sends 30,000 numbered QoS 1 messages.
    Every number reaches exactly one process, and each process gets a share. mosquitto 2.0 offers shared
    subscriptions under MQTT 3.1.1 too."""
    child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")
    procs = [subprocess.Popen([sys.executable, child, "share", broker.tcp_uri, "$share/fleet/tele/#", str(version),
                               f"fleet-{version}-{i}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    facts = [{} for _ in procs]

    def read(p, f):
        for line in p.stdout:
            k, _, v = line.partition(" ")
            f[k] = json.loads(v)

    readers = [threading.Thread(target=read, args=(p, f), daemon=True) for p, f in zip(procs, facts)]
    for t in readers:
        t.start()
    try:
        deadline = time.time() + 60
        while not all(f.get("subscribed") for f in facts):
            assert time.time() < deadline and all(p.poll() is None for p in procs), [p.poll() for p in procs]
            time.sleep(0.05)
        lines = "".join(f"{i}\n" for i in range(SHARED_N))
        subprocess.run(["mosquitto_pub", "-V", "5" if version == 5 else "311", "-h", "127.0.0.1", "-p",
                        str(broker.tcp_port), "-q", "1", "-t", "tele/site-0001/gateway-0001/t1", "-l",
                        "-i", f"fleet-pub-{version}"], input=lines.encode(), check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while sum(f.get("count", 0) for f in facts) < SHARED_N and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # room for a message delivered twice to show up
        for p in procs:
            p.stdin.write("stop\n")
            p.stdin.flush()
        for p, t in zip(procs, readers):
            p.wait(30)
            t.join(10)
            assert p.returncode == 0, p.stderr.read()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    got = [f["got"] for f in facts]
    print(f"\nMQTT {'5' if version == 5 else '3.1.1'}: shares {[len(g) for g in got]}")
    assert all(f["other"] == [] for f in facts), [f["other"] for f in facts]
    assert all(f["stats"]["reconnects"] == 0 for f in facts), [f["stats"] for f in facts]
    assert all(len(g) > 0 for g in got), [len(g) for g in got]
    everything = sorted(n for g in got for n in g)
    assert len(everything) == SHARED_N and everything == list(range(SHARED_N)), (
        f"{len(everything)} received, {len(set(everything))} distinct of {SHARED_N}")
