#!/usr/bin/env python3
"""Caller-thread cost of the q layer for benches/run: what q's main thread pays per `.mqtt.pubx` call and per
message of a `.mqtt.pubbatch` call, and the longest single call while the broker is frozen (SIGSTOP).

  tests/qhost/qbench_cost.py [--lib libqmqtt.so] [--quick] [--n 200000] [--batch 100] [--frozen 20000]

Runs in the host harness (qhost.py: libe + the host's k/krr/sd1 and event loop) against its own local TLS
mosquitto (broker.py), connected as a q program would: `.mqtt.conn[uri;id;enlist[`trustStore]!enlist`ca]`
with the default publish queue (4 MiB, 100 000 messages). Every call is timed in C (qhost_time_calls, the
per-call clock_gettime pair around the exported function); Python only builds the arguments and sorts the
timings. QoS 1, 64-byte payload, topic `bench/cost`:

  pub             n single calls, in rounds of 10 000 that fit the queue (drained between rounds), q's event
                  loop run every 256 calls (msgsent callbacks), as between q statements;
  pubbatch[B]     n/B calls of B messages, same rounds; times are per message (call time / B);
  frozen pub      broker SIGSTOPped after everything is acknowledged, then `--frozen` single calls: the queue
                  only grows (not full: refused must be 0), nothing is acknowledged; the broker is then
                  resumed and everything must be acknowledged; three rounds;
  frozen pubbatch the same with `--frozen`/B batch calls, per call (not per message).

Prints one line per case for benches/mqtt/main.rs to parse:
  COST case=NAME calls=C per=M unit=U median_ns=X p999_ns=Y max_ns=Z mean_ns=W refused=R preempted=P
       blocked=B steal_ms=S io_wakeups=I round_max_ns=A,B,... round_preempted=a,b,...
(per = messages per call; median/p99.9/max/mean are ns per U: `msg` for `pub`/`pubbatch[B]`, `call` for the
frozen cases, which run FROZEN_ROUNDS times. What can stretch a call on a shared machine, counted during the
timed calls: preempted = involuntary context switches of the calling thread, blocked = voluntary ones (it
waited, e.g. on a lock), steal_ms = time the hypervisor took from this VM (all CPUs, /proc/stat, 10 ms
ticks); io_wakeups = wake-ups of the connection's I/O thread; round_max_ns / round_preempted = the longest call and the
involuntary context switches of each round.)
Exit 1 with a message when a case fails (refused calls, messages not acknowledged).
"""
import argparse
import ctypes
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qhost import KP, NIL, Host, Sym  # noqa: E402
from broker import Broker  # noqa: E402

ROUND = 10_000  # messages per round: well inside the default 4 MiB / 100 000-message queue at 64 B
FROZEN_ROUNDS = 3  # freeze / publish / thaw / drain, each round timed on its own (round_max_ns)


def steal_ms():
    """CPU time stolen from this (virtual) machine by its host so far, all CPUs, in ms (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            cpu = f.readline().split()
        return int(cpu[8]) * 1000 // os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0


def summary(times, per):
    """median, p99.9, max, mean of the timings (ns), divided by `per`."""
    t = sorted(times)
    n = len(t)
    return dict(median_ns=t[n // 2] / per, p999_ns=t[int((n - 1) * 0.999)] / per, max_ns=t[-1] / per,
                mean_ns=sum(t) / n / per)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=None, help="the extension (default: $QMQTT_LIB or target/*/libqmqtt.so)")
    ap.add_argument("--quick", action="store_true", help="smaller counts (smoke test)")
    ap.add_argument("--n", type=int, default=None, help="messages per case (default 200000, quick 20000)")
    ap.add_argument("--batch", type=int, default=100, help="messages per pubbatch call")
    ap.add_argument("--frozen", type=int, default=None, help="calls with the broker frozen (default 20000, quick 5000)")
    a = ap.parse_args()
    n = a.n or (20_000 if a.quick else 200_000)
    frozen = a.frozen or (5_000 if a.quick else 20_000)
    broker = Broker()
    q = Host(lib=a.lib)
    q.handlers[".mqtt.msgsent"] = lambda tok: None
    h = q.h
    h.qhost_time_calls.restype = ctypes.c_long
    h.qhost_time_calls.argtypes = [KP, KP, KP, KP, KP, ctypes.c_long, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_longlong)]
    pub, pubbatch = q.fns["pubx"], q.fns["pubbatch"]
    failures = []
    lines = []
    ks = []
    total = 0  # messages queued so far (each must be acknowledged)

    def stats():
        return q.call("stats", NIL)

    def settle(what, timeout=60):
        """Run q's event loop until every queued message is acknowledged."""
        ok = q.loop_until(lambda: stats()["acked"] >= total, timeout)
        q.calls.clear()
        if not ok:
            st = stats()
            raise SystemExit(f"qbench_cost: {what}: only {st['acked']} of {total} messages acknowledged "
                             f"(stats {st})")

    ctx = {}  # what disturbed the timed calls of the current case (summed over its rounds)

    def add(k, v):
        ctx[k] = ctx.get(k, 0) + v

    def timed(f, args, calls, loop_every):
        buf = (ctypes.c_longlong * calls)()
        w0, s0 = stats()["wakeups"], steal_ms()
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
        err = h.qhost_time_calls(f, *args, calls, loop_every, buf)
        r1 = resource.getrusage(resource.RUSAGE_THREAD)
        add("preempted", r1.ru_nivcsw - r0.ru_nivcsw)
        ctx.setdefault("round_preempted", []).append(r1.ru_nivcsw - r0.ru_nivcsw)
        add("blocked", r1.ru_nvcsw - r0.ru_nvcsw)
        add("steal_ms", steal_ms() - s0)
        add("io_wakeups", stats()["wakeups"] - w0)
        ctx.setdefault("round_max", []).append(max(buf))
        return list(buf), err

    def report(case, calls, per, times, refused, unit="msg"):
        s = summary(times, per if unit == "msg" else 1)
        rmax = ",".join(f"{x / (per if unit == 'msg' else 1):.0f}" for x in ctx.pop("round_max", []))
        lines.append(f"COST case={case} calls={calls} per={per} unit={unit} median_ns={s['median_ns']:.1f} "
                     f"p999_ns={s['p999_ns']:.1f} max_ns={s['max_ns']:.1f} mean_ns={s['mean_ns']:.1f} "
                     f"refused={refused} preempted={ctx.pop('preempted', 0)} blocked={ctx.pop('blocked', 0)} "
                     f"steal_ms={ctx.pop('steal_ms', 0)} io_wakeups={ctx.pop('io_wakeups', 0)} round_max_ns={rmax} "
                     f"round_preempted={','.join(str(x) for x in ctx.pop('round_preempted', []))}")
        if refused:
            failures.append(f"{case}: {refused} calls refused (queue full?)")

    try:
        q.conn(broker.tls_uri, "qbench-cost", {Sym("trustStore"): Sym(broker.certs.ca)})
        topic, qos, ret = q.k(Sym("bench/cost")), q.k(1), q.k(False)
        msg = q.k("x" * 64)
        msgs = q.k(["x" * 64] * a.batch)
        ks = [topic, qos, ret, msg, msgs]
        # warm-up: first-touch of the queue's pages, TLS session, caches
        _, err = timed(pub, (topic, msg, qos, ret), 5_000, 256)
        total += 5_000 - err
        settle("warm-up")
        ctx.clear()

        times, refused = [], 0
        for r in range(0, n, ROUND):
            c = min(ROUND, n - r)
            t, err = timed(pub, (topic, msg, qos, ret), c, 256)
            times += t
            refused += err
            total += c - err
            settle("pub")
        report("pub", len(times), 1, times, refused)

        times, refused = [], 0
        calls_per_round = max(1, ROUND // a.batch)
        for r in range(0, max(1, n // a.batch), calls_per_round):
            c = min(calls_per_round, n // a.batch - r)
            t, err = timed(pubbatch, (topic, msgs, qos, ret), c, 4)
            times += t
            refused += err
            total += (c - err) * a.batch
            settle("pubbatch")
        report(f"pubbatch[{a.batch}]", len(times), a.batch, times, refused)

        # Broker frozen: calls must only queue. The queue must not fill (that would be a refusal, not a
        # measurement of the queueing path).
        for case, f, arg, calls, per in (("frozen-pub", pub, msg, frozen, 1),
                                         (f"frozen-pubbatch[{a.batch}]", pubbatch, msgs,
                                          max(1, frozen // a.batch), a.batch)):
            times, refused = [], 0
            for _ in range(FROZEN_ROUNDS):
                broker.freeze()
                try:
                    t, err = timed(f, (topic, arg, qos, ret), calls, 256 if per == 1 else 4)
                    st = stats()
                finally:
                    broker.thaw()
                times += t
                refused += err
                total += (calls - err) * per
                if st["queued"] + st["inflight"] < calls * per * 9 // 10:
                    failures.append(f"{case}: only {st['queued']} queued and {st['inflight']} in flight while "
                                    "frozen: was the broker frozen?")
                settle(case)
            report(case, len(times), per, times, refused, unit="call")
    finally:
        for x in ks:
            q.r0(x)
        try:
            q.call("disconnect", 1000)
        except Exception:  # noqa: BLE001 — the connection may already be gone; the broker goes anyway
            pass
        broker.close()
    for line in lines:
        print(line)
    wrong = q.stat(1)
    if wrong:
        failures.append(f"{wrong} calls into q from a thread other than q's main thread")
    if failures:
        print("qbench_cost: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
