#!/usr/bin/env python3
"""The telemetry gateway demo without q: does what q/examples/telemetry.q does — the same .mqtt calls, the
same environment variables — through the q host harness (KX's libe.so + qhost.so + our library).

  QMQTT_URL QMQTT_CA QMQTT_CERT QMQTT_KEY QMQTT_TOPIC QMQTT_TICKS   as in telemetry.q
Needs the library built (cargo build --release; or QMQTT_LIB=path). When QMQTT_URL is
not set, a local mosquitto with generated certificates is started and its mutual-TLS
listener is used, so `tests/qhost/telemetry.py` runs anywhere mosquitto is installed.
"""
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qhost import NIL, Host, Sym  # noqa: E402


def main():
    from qhost import qhost_path
    if not os.path.exists(qhost_path()):  # first run: fetch libe.so (pinned) and build the host shim
        import subprocess
        subprocess.run([os.path.join(os.path.dirname(os.path.abspath(__file__)), "build")], check=True,
                       stdout=subprocess.DEVNULL)
    broker = None
    if not os.environ.get("QMQTT_URL"):
        from broker import Broker
        broker = Broker()
        c = broker.certs
        os.environ.update(QMQTT_URL=broker.mtls_uri, QMQTT_CA=c.ca, QMQTT_CERT=c.client_cert,
                          QMQTT_KEY=c.client_key)
        print(f"started a local mosquitto (mutual TLS on {broker.mtls_uri})")
    try:
        run()
    finally:
        if broker:
            broker.close()


def run():
    env = lambda k, d="": os.environ.get(k) or d  # noqa: E731
    url = env("QMQTT_URL", "ssl://localhost:8883")
    topic = env("QMQTT_TOPIC", "gateway/telemetry")
    ticks = int(env("QMQTT_TICKS", "50"))
    sensors = ["temp", "humidity", "pressure", "vibration"]
    base = {"temp": 20.0, "humidity": 45.0, "pressure": 1013.0, "vibration": 0.0}

    q = Host()
    opts = {Sym(k): Sym(env(v)) for k, v in (("trustStore", "QMQTT_CA"), ("keyStore", "QMQTT_CERT"),
                                             ("privateKey", "QMQTT_KEY")) if env(v)}
    opts.update({Sym("keepAliveInterval"): 30, Sym("queueMessages"): 100000, Sym("fullPolicy"): Sym("dropOldest")})

    acked = [0]
    q.handlers[".mqtt.msgsent"] = lambda tok: acked.__setitem__(0, acked[0] + 1)
    q.handlers[".mqtt.disconn"] = lambda cause: print("disconnected:", cause)

    q.conn(url, f"telemetry-{os.getpid()}", opts)  # .mqtt.conn[url;`telemetry-pid;opts]
    print(f"connected to {url}; publishing to {topic}/<sensor>")
    print(f"publishing {len(sensors)} readings every 100ms for {ticks} ticks")
    topics = [Sym(f"{topic}/{s}") for s in sensors]
    tokens = []
    for n in range(1, ticks + 1):  # .z.ts every 100 ms
        t0 = time.time()
        stamp = time.strftime("%Y.%m.%dD%H:%M:%S")
        readings = [f"{stamp},{base[s] + 0.1 * random.randrange(100):.1f}" for s in sensors]
        tokens = q.call("pubbatch", topics, readings, 1, False)
        q.loop(max(0, int(100 - (time.time() - t0) * 1000)))
    q.loop_until(lambda: acked[0] >= ticks * len(sensors), 5)
    print(f"sent {ticks * len(sensors)} readings, last token {tokens[-1] if tokens else None}")
    stats = q.call("stats", NIL)
    width = max(len(k) for k in stats)
    for k, v in stats.items():
        print(f"{k:<{width}}| {v}")
    print(f"acknowledged so far: {acked[0]}")
    q.call("disconnect", 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
