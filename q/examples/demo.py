#!/usr/bin/env python3
"""Driver of q/examples/demo (run that script: it installs and builds first).

Starts mosquitto with TLS and mutual TLS on 127.0.0.1 (certificates made with openssl, tests/qhost/broker.py),
a subscriber (`qmqtt sub -v` over mutual TLS) printing what arrives, then the telemetry example: with q when
`q` is on PATH and $QHOME is set (the library is offered to q as mqttkdb.so through LD_LIBRARY_PATH; nothing
is installed into $QHOME), otherwise through the q host harness (tests/qhost/telemetry.py: the same .mqtt calls
against KX's libe.so). Says which of the two it ran.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(root, "tests", "qhost"))
from broker import Broker  # noqa: E402

topic = os.environ.get("QMQTT_TOPIC", "gateway/telemetry")
ticks = int(os.environ.get("QMQTT_TICKS", "50"))


def main():
    broker = Broker()
    c = broker.certs
    print(f"== mosquitto on 127.0.0.1: TLS {broker.tls_uri}, mutual TLS {broker.mtls_uri} (certificates in {c.dir})")
    qmqtt = os.path.join(root, "target", "release", "qmqtt")
    sub = subprocess.Popen([qmqtt, "sub", "-L", broker.mtls_uri, "--cafile", c.ca, "--cert", c.client_cert,
                            "--key", c.client_key, "-t", topic + "/#", "-q", "1", "-v", "-i", "demo-sub"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    received = []

    def show():
        for line in sub.stdout:
            line = line.rstrip("\n")
            received.append(line)
            if len(received) <= 8 or len(received) % 40 == 0:
                print(f"   subscriber <- {line}")

    threading.Thread(target=show, daemon=True).start()
    time.sleep(0.5)
    env = dict(os.environ, QMQTT_URL=broker.mtls_uri, QMQTT_CA=c.ca, QMQTT_CERT=c.client_cert,
               QMQTT_KEY=c.client_key, QMQTT_TOPIC=topic, QMQTT_TICKS=str(ticks))
    q = shutil.which("q")
    try:
        if q and os.environ.get("QHOME"):
            print(f"== running q/examples/telemetry.q with q ({q})")
            libdir = tempfile.mkdtemp(prefix="qmqtt-lib-")
            shutil.copy(os.path.join(root, "target", "release", "libqmqtt.so"), os.path.join(libdir, "mqttkdb.so"))
            env["LD_LIBRARY_PATH"] = libdir + ":" + env.get("LD_LIBRARY_PATH", "")
            # telemetry.q stops its timer after QMQTT_TICKS ticks and shows the stats; exit a second later.
            wrapper = os.path.join(libdir, "demo.q")
            with open(wrapper, "w") as f:
                f.write("\\l telemetry.q\nf:.z.ts\n.z.ts:{f x;if[n>=ticks;.z.ts:{exit 0};system\"t 1000\"]}\n")
            rc = subprocess.run([q, wrapper, "-q"], stdin=subprocess.DEVNULL, env=env,
                                cwd=os.path.join(root, "q", "examples")).returncode
            ran = "q"
        else:
            print("== no q on PATH (or $QHOME unset): running the same .mqtt calls through the q host harness"
                  " (tests/qhost/telemetry.py, KX's libe.so)")
            env["QMQTT_LIB"] = os.path.join(root, "target", "release", "libqmqtt.so")
            rc = subprocess.run([sys.executable, os.path.join(root, "tests", "qhost", "telemetry.py")],
                                env=env).returncode
            ran = "the q host harness (no q here)"
        want = ticks * 4
        deadline = time.time() + 10
        while len(received) < want and time.time() < deadline:
            time.sleep(0.05)
        print(f"== demo ran via {ran}: publisher exit code {rc}; subscriber received {len(received)} of {want}"
              " readings")
        return 0 if rc == 0 and len(received) >= want else 1
    finally:
        sub.terminate()
        sub.wait()
        broker.close()


if __name__ == "__main__":
    sys.exit(main())
