"""Whole-process scenarios: each child (child.py) is its own "q process" with the extension loaded; the test
drives it with subprocess and judges what it reports, its exit status and its stderr.

- exit with messages in flight: the library's exit hook closes the connection; no crash, no callback after
  the hook (counted by the host, reported by C atexit probes ordered around the hook);
- disconnect[0] with messages in flight, reconnect, again and again: libe's memory stays flat;
- kill -9 with a spilled backlog, restart on the same spoolDir: every message reaches a subscriber.
"""
import json
import os
import signal
import subprocess
import sys
import time

from broker import Sub

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "child.py")

PROBE_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
extern long qhost_stat(int);
static void report(const char *tag) {
    char b[256];
    int l = snprintf(b, sizeof b, "probe_%s {\"k\": %ld, \"k_wrong\": %ld, \"sd0x\": %ld, \"handler\": %ld}\n",
                     tag, qhost_stat(0), qhost_stat(1), qhost_stat(5), qhost_stat(6));
    if (write(1, b, l) < 0) _exit(3);
}
static void after(void) { report("after"); }
static void before(void) { report("before"); }
void probe_arm(const char *which) { atexit(strcmp(which, "after") == 0 ? after : before); }
"""


def child(*args, **kw):
    return subprocess.Popen([sys.executable, CHILD, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def facts(out):
    """The child's `key json` lines → {key: value} (last one wins)."""
    d = {}
    for line in out.splitlines():
        k, _, v = line.partition(" ")
        try:
            d[k] = json.loads(v)
        except ValueError:
            pass
    return d


def clean(err):
    for bad in ("panicked", "Segmentation", "Aborted", "Traceback", "double free", "SIGSEGV"):
        assert bad not in err, err[-3000:]


def test_exit_with_messages_in_flight(broker, tmp_path):
    """A q process exits (normally) right after publishing 25,000 QoS 1 messages, most still queued or in
    flight: exit status 0, no panic or crash, the extension's exit hook closed the connection (sd0x once more
    between the C probes that run just before and just after it), and no callback reached q after the
    interpreter's last words — the host's k() count is the same then, before the hook and after it."""
    probe = str(tmp_path / "probe.so")
    src = tmp_path / "probe.c"
    src.write_text(PROBE_C)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", probe, str(src)], check=True)
    p = child("exit", broker.tcp_uri, 20000, probe)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, (p.returncode, err[-3000:])
    clean(err)
    f = facts(out)
    st, last, before, after = f["stats"], f["python_exit"], f["probe_before"], f["probe_after"]
    print(f"\nat exit: queued {st['queued']} inflight {st['inflight']} acked {st['acked']}; "
          f"callbacks {last['callbacks']}; probes {before} {after}")
    assert f["published"] == 25000
    assert st["queued"] + st["inflight"] > 0, "precondition: messages in flight at exit"
    assert f["callbacks_before_burst"] > 0  # the loop ran and callbacks were delivered before the exit
    assert after["sd0x"] == before["sd0x"] + 1, "the exit hook removed the connection's fd from q's loop"
    assert before["k"] == last["k"] and after["k"] == last["k"], "no callback after Python's last words"
    assert after["handler"] == before["handler"], "no fd handler ran during the exit hook"
    assert after["k_wrong"] == 0 and last["k_wrong"] == 0


def test_disconnect_reconnect_in_flight_cycles(broker):
    """20 rounds of: conn, sub, 2,000 QoS 1 publishes, a 50 ms loop (some acknowledged and
    received: callbacks run), a batch of 1,000 more, disconnect[0] with messages in flight. No crash, one fd in q's loop at most, and libe's used memory (m4) flat after the first rounds."""
    p = child("cycle", broker.tcp_uri, 20)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, (p.returncode, err[-3000:])
    clean(err)
    f = facts(out)
    rounds = [facts(line)["round"] for line in out.splitlines() if line.startswith("round ")]
    assert len(rounds) == 20
    print("\n" + "\n".join(str(r) for r in rounds))
    assert all(r["inflight"] + r["queued"] > 0 for r in rounds), "precondition: messages in flight"
    assert any(r["acked"] > 0 for r in rounds), "precondition: callbacks ran between the disconnects"
    assert all(r["nfds"] == 0 for r in rounds)
    used = f["used"]
    assert len(set(used[2:])) == 1, used
    assert f["k_wrong"] == 0


def test_kill9_with_spilled_backlog_then_restart(broker, tmp_path):
    """Store-and-forward across a crash: with the broker down, a q process with a spoolDir publishes 5,000
    numbered QoS 1 messages at a gateway's pace and is killed with SIGKILL once stats say all of them were
    spilled to disk (asserted: messages only in memory at a kill are lost by design). The broker comes back;
    a second process opens the same spoolDir and runs until the spool is empty; an independent QoS 1
    subscriber must see every number at least once (duplicates are allowed and reported)."""
    n = 5000
    d = str(tmp_path / "spool")
    p = child("spool-pub", broker.tcp_uri, d, n, stdin=subprocess.PIPE)
    sub = None
    try:
        assert p.stdout.readline().startswith("connected")
        broker.stop()
        p.stdin.write("go\n")
        p.stdin.flush()
        f = {}
        while "stats" not in f:
            line = p.stdout.readline()
            assert line, p.stderr.read()[-3000:]
            f.update(facts(line))
        assert f["down"] is True
        assert f["published"] == n
        st = f["stats"]
        assert st["spilled"] == n, f"precondition: all {n} spilled before the kill ({st})"
        assert st["spooled"] == n
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        assert p.returncode == -signal.SIGKILL
        clean(p.stderr.read())
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if broker.proc is None:
            broker.start()
    sub = Sub(broker, "proc/spool/#", qos=1)
    try:
        p2 = child("spool-drain", broker.tcp_uri, d)
        out, err = p2.communicate(timeout=120)
        assert p2.returncode == 0, (p2.returncode, err[-3000:])
        clean(err)
        f2 = facts(out)
        assert f2["empty"] is True, f2["stats"]
        deadline = time.time() + 20
        while True:
            nums = [int(line.split(" ", 1)[1]) for line in list(sub.lines) if line.startswith("proc/spool/t ")]
            if len(set(nums)) >= n or time.time() > deadline:
                break
            time.sleep(0.05)
        missing = sorted(set(range(n)) - set(nums))
        dups = len(nums) - len(set(nums))
        print(f"\nreceived {len(nums)} ({dups} duplicates), missing {len(missing)}; drain stats {f2['stats']}")
        assert not missing, missing[:20]
    finally:
        sub.close()


def test_installed_as_mqttkdb_ssl(broker, tmp_path):
    """KX tells TLS users to edit mqtt.q to load `mqttkdb_ssl`: install.sh installs the library under that name
    too, and a q process whose mqtt.q loads mqttkdb_ssl connects over TLS and round-trips a message."""
    import hashlib
    import shutil
    from qhost import lib_path
    root = os.path.dirname(os.path.dirname(HERE))
    pkg, qhome = tmp_path / "pkg", tmp_path / "qhome"
    for d in ("l64", "q", "bin"):
        (pkg / d).mkdir(parents=True)
    qhome.mkdir()
    shutil.copy(lib_path(), pkg / "l64" / "mqttkdb.so")
    shutil.copy(os.path.join(root, "q", "mqtt.q"), pkg / "q" / "mqtt.q")
    (pkg / "bin" / "qmqtt").write_text("#!/bin/sh\n")
    shutil.copy(os.path.join(root, "deploy", "install.sh"), pkg / "install.sh")
    with open(pkg / "SHA256SUMS", "w") as f:
        for rel in ("l64/mqttkdb.so", "q/mqtt.q", "bin/qmqtt", "install.sh"):
            f.write(f"{hashlib.sha256((pkg / rel).read_bytes()).hexdigest()}  {rel}\n")
    env = dict(os.environ, QHOME=str(qhome))
    r = subprocess.run(["sh", str(pkg / "install.sh"), "--prefix", str(tmp_path / "bin"), "--force-platform"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    ssl = qhome / "l64" / "mqttkdb_ssl.so"
    assert ssl.read_bytes() == (qhome / "l64" / "mqttkdb.so").read_bytes()
    # KX's TLS instructions: mqtt.q edited to load mqttkdb_ssl
    script = tmp_path / "mqtt_ssl.q"
    script.write_text((qhome / "mqtt.q").read_text().replace("`mqttkdb 2:", "`mqttkdb_ssl 2:"))
    code = f"""
import sys; sys.path.insert(0, {HERE!r})
from qhost import Host, Sym as S
q = Host(lib={str(ssl)!r}, script={str(script)!r})
q.conn({broker.tls_uri!r}, "kxssl", {{S("trustStore"): S({broker.certs.ca!r})}})
q.call("subx", S("kxssl/t"), 1)
q.call("pubx", S("kxssl/t"), "over tls", 1, 0)
q.loop_until(lambda: q.callbacks(".mqtt.msgrcvd"), 10)
print("got", q.callbacks(".mqtt.msgrcvd"))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "got [['kxssl/t', 'over tls']]" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(["sh", str(qhome / "qmqtt" / "install.sh"), "--uninstall"], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0 and not ssl.exists(), r.stdout + r.stderr
