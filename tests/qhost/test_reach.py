"""Reaching the broker from q (issue 12): KX's httpProxy/httpsProxy options and proxy environment through a
real tinyproxy to mosquitto (plain and mutual TLS inside the tunnel), the proxy's failures as short q
errors, several brokers for one connection (a list of symbols: the first that answers; `.mqtt.stats[]`
names it), certificate rotation without a new conn."""
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from broker import Broker, Certs, free_port
from qhost import NIL, KRaw, QError, Sym

S = Sym
PROXY_USER, PROXY_PASSWORD = "gw-proxy", "pr0xy-pw"
ENV = ("PAHO_C_CLIENT_USE_HTTP_PROXY", "http_proxy", "https_proxy", "no_proxy", "mqtt_http_proxy",
       "mqtt_https_proxy", "mqtt_no_proxy")


class Tinyproxy:
    """tinyproxy on 127.0.0.1 requiring Basic authentication; its log counts the CONNECTs."""

    def __init__(self, connect_ports=()):
        self.dir = tempfile.mkdtemp(prefix="qhost-tinyproxy-")
        rules = "".join(f"ConnectPort {p}\n" for p in connect_ports)
        for attempt in range(5):
            self.port = free_port()
            conf = os.path.join(self.dir, "tinyproxy.conf")
            user = "User root\nGroup root\n" if os.geteuid() == 0 else ""
            with open(conf, "w") as f:
                f.write(f"Port {self.port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 16\nAllow 127.0.0.1\n"
                        f"LogLevel Info\nLogFile \"{self.dir}/tinyproxy.log\"\n{user}"
                        f"BasicAuth {PROXY_USER} {PROXY_PASSWORD}\n{rules}")
            self.proc = subprocess.Popen(["tinyproxy", "-d", "-c", conf], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 10
            while self.proc.poll() is None and time.time() < deadline:
                try:
                    import socket
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.02)
            self.close()
        raise RuntimeError("tinyproxy would not start: " + self.log())

    def url(self, password=PROXY_PASSWORD):
        return f"http://{PROXY_USER}:{password}@127.0.0.1:{self.port}"

    def log(self):
        try:
            return open(os.path.join(self.dir, "tinyproxy.log")).read()
        except OSError:
            return ""

    def connects(self):
        return self.log().count("Request (file descriptor")

    def close(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="module")
def proxy():
    p = Tinyproxy()
    yield p
    p.close()


@pytest.fixture
def clean_env():
    """The proxy variables unset for the test, restored after (the host reads the process environment)."""
    saved = {k: os.environ.pop(k) for k in ENV if k in os.environ}
    yield os.environ
    for k in ENV:
        os.environ.pop(k, None)
    os.environ.update(saved)


def roundtrip(q, topic):
    q.call("subx", S(topic), 1)
    time.sleep(0.2)
    q.call("pubx", S(topic), "through", 1, 0)
    q.loop_until(lambda: ["through"] in [m[1:] for m in q.callbacks(".mqtt.msgrcvd") if m[0] == topic], 10)


def test_http_and_https_proxy_options(engine, broker, proxy, clean_env):
    q = engine
    before = proxy.connects()
    q.conn(broker.tcp_uri, "viaproxy", {S("httpProxy"): S(proxy.url())})
    assert q.call("isConnected", NIL) is True
    assert proxy.connects() == before + 1, proxy.log()
    roundtrip(q, "reach/plain")
    st = q.call("stats", NIL)
    assert st["broker"] == broker.tcp_uri
    q.call("disconnect", 0)
    # Mutual TLS inside the tunnel: httpsProxy (httpProxy is for plain brokers and is not used here).
    c = broker.certs
    q.conn(broker.mtls_uri, "viaproxys", {S("trustStore"): S(c.ca), S("keyStore"): S(c.client_cert),
                                          S("privateKey"): S(c.client_key), S("httpsProxy"): S(proxy.url()),
                                          S("httpProxy"): S("http://127.0.0.1:1")})
    assert q.call("isConnected", NIL) is True
    assert proxy.connects() == before + 2, proxy.log()
    roundtrip(q, "reach/tls")
    q.call("disconnect", 0)


def test_proxy_environment_as_kx_documents(engine, broker, proxy, clean_env):
    q, env = engine, clean_env
    before = proxy.connects()
    env["https_proxy"] = proxy.url()
    # Without PAHO_C_CLIENT_USE_HTTP_PROXY=TRUE the environment is not read.
    q.conn(broker.tls_uri, "env0", {S("trustStore"): S(broker.certs.ca)})
    assert proxy.connects() == before
    env["PAHO_C_CLIENT_USE_HTTP_PROXY"] = "TRUE"
    env["https_proxy"] = "http://127.0.0.1:1"
    env["mqtt_https_proxy"] = proxy.url()
    q.conn(broker.tls_uri, "env1", {S("trustStore"): S(broker.certs.ca)})
    assert proxy.connects() == before + 1, proxy.log()
    # mqtt_no_proxy exempts the broker; a blank httpsProxy option means no proxy at all.
    env["mqtt_no_proxy"] = "localhost"
    q.conn(broker.tls_uri, "env2", {S("trustStore"): S(broker.certs.ca)})
    del env["mqtt_no_proxy"]
    q.conn(broker.tls_uri, "env3", {S("trustStore"): S(broker.certs.ca), S("httpsProxy"): S("")})
    assert proxy.connects() == before + 1, proxy.log()
    q.call("disconnect", 0)


def test_proxy_failures_are_short_q_errors(engine, broker, proxy, clean_env):
    q = engine
    with pytest.raises(QError) as e:
        q.conn(broker.tcp_uri, "badpw", {S("httpProxy"): S(proxy.url("wrong"))})
    assert e.value.msg == "proxy: authentication failed"
    last = q.call("stats", NIL)["lastError"]
    assert f"127.0.0.1:{proxy.port}" in last and "wrong" not in last, last
    with pytest.raises(QError) as e:
        q.conn(broker.tcp_uri, "nouser", {S("httpProxy"): S(f"http://127.0.0.1:{proxy.port}")})
    assert e.value.msg == "proxy: authentication required"
    with pytest.raises(QError) as e:
        q.conn(broker.tcp_uri, "noproxy", {S("httpProxy"): S(f"http://127.0.0.1:{free_port()}")})
    assert e.value.msg == "proxy: unreachable"
    # A ConnectPort rule that does not allow the broker's port: the proxy's 403, named in lastError.
    strict = Tinyproxy(connect_ports=(443,))
    try:
        with pytest.raises(QError) as e:
            q.conn(broker.tcp_uri, "port", {S("httpProxy"): S(strict.url())})
        assert e.value.msg == "proxy: connect refused"
        last = q.call("stats", NIL)["lastError"]
        assert f"127.0.0.1:{strict.port}" in last and "403" in last, last
    finally:
        strict.close()
    with pytest.raises(QError) as e:
        q.conn(broker.tcp_uri, "badurl", {S("httpProxy"): S("socks5://127.0.0.1:1")})
    assert e.value.msg == "httpProxy invalid"


def test_several_brokers_first_that_answers(engine, broker):
    q = engine
    dead = f"tcp://127.0.0.1:{free_port()}"
    addr = KRaw(q.syms([dead, broker.tcp_uri]))
    try:
        q.call("connX", addr, S("ha"), {S(""): NIL})
    finally:
        q.r0(addr.ptr)
    assert q.call("isConnected", NIL) is True
    st = q.call("stats", NIL)
    assert st["broker"] == broker.tcp_uri and st["connected"] is True
    roundtrip(q, "reach/ha")
    q.call("disconnect", 0)
    # The same as one comma-separated symbol (paho's serverURIs written out).
    q.conn(f"{dead},{broker.tcp_uri}", "ha2")
    assert q.call("stats", NIL)["broker"] == broker.tcp_uri
    q.call("disconnect", 0)
    with pytest.raises(QError) as e:
        q.conn(f"{dead},{dead}", "ha3")
    assert e.value.msg != "internal error"


class Aedes:
    """aedes (tests/common/aedes.js: tools/need aedes) with plain, WebSocket and WebSocket-over-TLS
    listeners on free ports, the TLS one with `certs`' server certificate."""

    def __init__(self, certs):
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
        # tests/qhost/run sources tools/env.sh, which says where the tools cache is.
        cache = os.environ.get("QMQTT_CACHE") or os.environ["QM_CACHE"]
        env = dict(os.environ, NODE_PATH=os.path.join(cache, "npm", "node_modules"))
        self.log = tempfile.NamedTemporaryFile(prefix="qhost-aedes-", suffix=".log", delete=False)
        for attempt in range(5):
            self.tcp_port, self.ws_port, self.wss_port = free_port(), free_port(), free_port()
            self.proc = subprocess.Popen(
                ["node", os.path.join(root, "tests", "common", "aedes.js"), str(self.tcp_port),
                 str(self.ws_port), str(self.wss_port), certs.server_cert, certs.server_key],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log)
            if self.proc.stdout.readline().strip() == b"ready":
                return
            self.close()
        raise RuntimeError("aedes would not start: " + open(self.log.name).read())

    def close(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def test_ws_and_wss_from_q(engine, broker, proxy, clean_env):
    q = engine
    try:
        a = Aedes(broker.certs)
    except (OSError, RuntimeError) as e:
        pytest.fail(f"aedes (tools/need aedes): {e}")
    try:
        q.conn(f"ws://127.0.0.1:{a.ws_port}/mqtt", "ws")
        roundtrip(q, "reach/ws")
        q.call("disconnect", 0)
        # wss through the proxy: TLS and the WebSocket upgrade inside the tunnel.
        before = proxy.connects()
        q.conn(f"wss://localhost:{a.wss_port}/mqtt", "wss", {S("trustStore"): S(broker.certs.ca),
                                                            S("httpsProxy"): S(proxy.url())})
        assert proxy.connects() == before + 1, proxy.log()
        roundtrip(q, "reach/wss")
        assert q.call("stats", NIL)["broker"] == f"wss://localhost:{a.wss_port}/mqtt"
        q.call("disconnect", 0)
    finally:
        a.close()


def replace(src, dst):
    """As rotation tools do: a new file beside `dst`, renamed over it."""
    shutil.copy(src, dst + ".new")
    os.rename(dst + ".new", dst)


def test_certificate_rotation_without_a_new_conn(engine, capfd):
    """The broker's CA and chain and the client's CA, certificate and key replaced on disk, the broker restarted:
    the same connection comes back (files read again). Then a broken certificate: the previous material stays
    in use, and the log says why."""
    q = engine
    b = Broker()
    try:
        mine = tempfile.mkdtemp(prefix="qhost-rotate-")
        ca, cert, key = (os.path.join(mine, n) for n in ("ca.pem", "client.pem", "client.key"))
        for s, d in ((b.certs.ca, ca), (b.certs.client_cert, cert), (b.certs.client_key, key)):
            shutil.copy(s, d)
        q.conn(b.mtls_uri, "rotate", {S("trustStore"): S(ca), S("keyStore"): S(cert), S("privateKey"): S(key)})
        roundtrip(q, "reach/rot/1")
        new = Certs(tempfile.mkdtemp(prefix="qhost-rotate-new-"))
        for s, d in ((new.ca, b.certs.ca), (new.server_cert, b.certs.server_cert),
                     (new.server_key, b.certs.server_key), (new.ca, ca), (new.client_cert, cert),
                     (new.client_key, key)):
            replace(s, d)
        b.restart()

        def back(n):
            st = q.call("stats", NIL)
            return st["reconnects"] >= n and st["connected"] is True
        q.loop_until(lambda: back(1), 20)
        roundtrip(q, "reach/rot/2")
        with open(cert + ".new", "w") as f:
            f.write("not a certificate\n")
        os.rename(cert + ".new", cert)
        b.restart()
        q.loop_until(lambda: back(2), 20)
        roundtrip(q, "reach/rot/3")
        q.call("disconnect", 0)
        err = capfd.readouterr().err
        assert "TLS files changed but cannot be used" in err and "previous certificates and keys" in err, err
    finally:
        b.close()
