#!/usr/bin/env python3
"""Caller-thread cost of .mqtt.pub and .mqtt.pubbatch, timed in C by the host's bench hooks (no Python in
the timed loop): what q's main thread pays per message. Starts a local mosquitto unless QMQTT_URL is set.

  tests/qhost/bench.py [--n 100000] [--batch 100] [--json]
Prints one line per case: median, p99.9, mean and max ns per message, and refused calls (queue full).
"""
import argparse
import ctypes
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qhost import NIL, Host, Sym  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100000, help="single publishes per case")
    ap.add_argument("--batch", type=int, default=100, help="messages per pubbatch call")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    broker = None
    url = os.environ.get("QMQTT_URL")
    if not url:
        from broker import Broker
        broker = Broker()
        url = broker.tcp_uri
    q = Host()
    q.handlers[".mqtt.msgsent"] = lambda tok: None
    results = []
    try:
        q.conn(url, "qhost-bench", {Sym("queueMessages"): 1000000, Sym("queueBytes"): 512 << 20})
        out = (ctypes.c_double * 4)()
        for qos in (0, 1):
            for size in (32, 256):
                topic, qk, rk = q.k(Sym("bench/t")), q.k(qos), q.k(False)
                msg = q.k("x" * size)
                err = q.h.qhost_bench_pub(q.fns["pubx"], topic, msg, qk, rk, a.n, 256, out)
                results.append(dict(call="pub", qos=qos, size=size, median=out[0], p999=out[1], mean=out[2],
                                    max=out[3], refused=err))
                msgs = q.k(["x" * size] * a.batch)
                iters = max(1, a.n // a.batch)
                err = q.h.qhost_bench_batch(q.fns["pubbatch"], topic, msgs, qk, rk, a.batch, iters, 4, out)
                results.append(dict(call=f"pubbatch[{a.batch}]", qos=qos, size=size, median=out[0], p999=out[1],
                                    mean=out[2], max=out[3], refused=err))
                for x in (topic, qk, rk, msg, msgs):
                    q.r0(x)
                # let the queue drain before the next case
                q.loop_until(lambda: q.call("stats", NIL)["queued"] == 0, 60)
        st = q.call("stats", NIL)
        q.call("disconnect", 1000)
    finally:
        if broker:
            broker.close()
    if a.json:
        print(json.dumps(dict(results=results, stats={k: v for k, v in st.items()})))
    else:
        for r in results:
            print(f"{r['call']:>14} qos {r['qos']} {r['size']:>4} B: median {r['median']:7.0f} ns/msg  "
                  f"p99.9 {r['p999']:8.0f}  mean {r['mean']:7.0f}  max {r['max']:9.0f}  refused {r['refused']}")
        print(f"sent {st['sent']} acked {st['acked']} dropped {st['dropped']}")


if __name__ == "__main__":
    main()
