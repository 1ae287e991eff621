"""One "q process" for test_process.py: loads the extension through the host (as q's `2:` does) and plays
a scenario given on the command line; reports on stdout, one `key value` (or `key json`) line per fact.

  child.py exit URI N PROBE_SO       connect, subscribe, publish N QoS 1 messages, loop briefly, exit(0)
  child.py cycle URI ROUNDS          disconnect[0] with messages in flight, reconnect, … ROUNDS times
  child.py spool-pub URI DIR N       connect with spoolDir; after "go" on stdin (broker stopped) publish N
                                     numbered QoS 1 messages at a gateway's pace; wait for them to be spilled
  child.py spool-drain URI DIR       connect with the same spoolDir; loop until the spool is empty
  child.py share URI FILTER VERSION ID
                                     connect (MQTTVersion VERSION), subscribe to FILTER at QoS 1, report the
                                     count of messages received as it grows; on a line on stdin, report the
                                     payloads received (as numbers) and disconnect
"""
import atexit
import ctypes
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qhost import NIL, ST_K, ST_K_WRONG, Host, Sym  # noqa: E402

S = Sym


def say(key, value):
    print(key, json.dumps(value), flush=True)


def stats(q):
    st = q.call("stats", NIL)
    return {k: v for k, v in st.items() if isinstance(v, int)}


def exit_with_in_flight(uri, n, probe_so):
    q = Host()
    # The probe (a tiny C library) registers C atexit handlers that print the host's counters. C runs atexit
    # handlers in reverse order: "after" is registered before the extension registers its exit hook (at its
    # first conn), so it runs after that hook; "before" is registered after conn, so it runs before it.
    probe = ctypes.CDLL(probe_so)
    probe.probe_arm(b"after")
    q.conn(uri, "proc-exit", {S("queueMessages"): 100000, S("queueBytes"): 16 << 20})
    probe.probe_arm(b"before")
    q.call("subx", S("proc/exit/#"), 1)
    toks = [q.call("pubx", S("proc/exit/t"), f"{i:06d}", 1, 0) for i in range(n)]
    q.loop(300)
    say("callbacks_before_burst", len(q.calls))
    # A last burst right before exit (one batch call: faster than the I/O thread can send and have
    # acknowledged), without running the loop: messages queued and in flight at exit.
    toks += q.call("pubbatch", S("proc/exit/t"), [f"{i:06d}" for i in range(n, n + n // 4)], 1, False)
    say("published", len(toks))
    st = stats(q)
    say("stats", st)

    def last_words():
        # Python's atexit handlers run before C's (Py_Finalize comes before exit()); from here on Python is
        # going away: unhook the Python handler so that a callback from the exit hook would be counted by the
        # host (ST_K) and reported by the probe, instead of calling into a finalised interpreter.
        q.h.qhost_set_handler(ctypes.cast(None, type(q._handler)))
        say("python_exit", {"k": q.stat(ST_K), "k_wrong": q.stat(ST_K_WRONG), "callbacks": len(q.calls),
                            "inflight": st["inflight"], "queued": st["queued"]})

    atexit.register(last_words)
    sys.exit(0)


def cycle(uri, rounds):
    q = Host()
    topic, msg, qos, ret = q.k(S("proc/cycle/t")), q.k("y" * 100), q.k(1), q.k(False)
    used = []
    for r in range(rounds):
        q.conn(uri, "proc-cycle", {S("queueMessages"): 100000, S("queueBytes"): 16 << 20})
        q.call("subx", S("proc/cycle/#"), 1)
        for _ in range(2000):
            q.r0(q.call_k("pubx", topic, msg, qos, ret))
        q.loop(50)
        acked = stats(q)["acked"]
        # then a burst the I/O thread cannot have sent yet: in flight at the disconnect, whatever the speed
        q.call("pubbatch", S("proc/cycle/t"), ["z" * 100] * 1000, 1, False)
        st = stats(q)
        st["acked"] = acked
        q.call("disconnect", 0)
        q.loop(20)
        q.calls.clear()
        used.append(q.used())
        say("round", {"r": r, "inflight": st["inflight"], "queued": st["queued"], "acked": st["acked"],
                      "used": used[-1], "nfds": q.h.qhost_nfds()})
    for x in (topic, msg, qos, ret):
        q.r0(x)
    say("used", used)
    say("k_wrong", q.stat(ST_K_WRONG))


def spool_opts(d):
    return {S("spoolDir"): S(d), S("spoolSync"): S("batch"), S("backoffMin"): 100, S("backoffMax"): 300}


def spool_pub(uri, d, n):
    q = Host()
    q.conn(uri, "proc-spool", spool_opts(d))
    say("connected", True)
    assert sys.stdin.readline().strip() == "go"
    q.loop_until(lambda: q.call("isConnected", NIL) is False, 10)
    say("down", q.call("isConnected", NIL) is False)
    chunk = 250
    for c in range(0, n, chunk):
        for i in range(c, min(n, c + chunk)):
            q.call("pubx", S("proc/spool/t"), f"{i:05d}", 1, 0)
        q.loop(50)
    say("published", n)
    q.loop_until(lambda: q.call("stats", NIL)["spilled"] >= n, 20)
    say("stats", stats(q))
    while True:  # wait for SIGKILL
        q.loop(100)


def spool_drain(uri, d):
    q = Host()
    q.conn(uri, "proc-spool", spool_opts(d))
    say("connected", True)

    def empty():
        st = q.call("stats", NIL)
        return st["spooled"] == 0 and st["queued"] == 0 and st["inflight"] == 0

    ok = q.loop_until(empty, 60)
    say("stats", stats(q))
    say("empty", bool(ok))
    q.call("disconnect", 1000)


def share(uri, filt, version, cid):
    q = Host()
    q.conn(uri, cid, {S("MQTTVersion"): version})
    q.call("subx", S(filt), 1)  # returns once the SUBACK came
    say("subscribed", True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    n = 0
    while not stop.is_set():
        q.loop(50)
        if len(q.calls) != n:
            n = len(q.calls)
            say("count", n)
    say("stats", stats(q))
    say("got", [int(msg) for name, (topic, msg) in q.calls if name == ".mqtt.msgrcvd"])
    say("other", [name for name, _ in q.calls if name != ".mqtt.msgrcvd"])
    q.call("disconnect", 0)


def main():
    mode, uri = sys.argv[1], sys.argv[2]
    if mode == "exit":
        exit_with_in_flight(uri, int(sys.argv[3]), sys.argv[4])
    elif mode == "cycle":
        cycle(uri, int(sys.argv[3]))
    elif mode == "spool-pub":
        spool_pub(uri, sys.argv[3], int(sys.argv[4]))
    elif mode == "spool-drain":
        spool_drain(uri, sys.argv[3])
    elif mode == "share":
        share(uri, sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit(f"child.py: unknown mode {mode}")


if __name__ == "__main__":
    main()
