"""Every exported function with every K type in every position: a q error with a static message, or a
correct result — never a crash, never a leak (libe's used bytes balance)."""
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qhost import NIL, QError, Sym
from zoo import ZOO

INT_TYPES = (-1, -4, -5, -6, -7)
TEXT_TYPES = (-11, 10, -10)
PAYLOAD_TYPES = (10, 4, -10, -4)


def utf8_ok(entry):
    _n, t, v, _m = entry
    if t == -10:
        return True  # any single byte... but must be valid UTF-8 alone
    return v is not None


def text_check(entry, type_err):
    name, t, v, _m = entry
    if t not in TEXT_TYPES:
        return type_err
    if t == -10:
        return None if v is not None and ord(v) < 0x80 else "Invalid UTF8 string"
    if v is None:
        return "Invalid UTF8 string"
    return None


def qos_check(entry):
    _n, t, v, _m = entry
    if t not in INT_TYPES:
        return "qos type"
    return None if v in (0, 1, 2) else "invalid qos"


def retain_check(entry):
    _n, t, v, _m = entry
    if t not in INT_TYPES or v is None:
        return "retained type"
    return None


def handle_check(entry):
    _n, t, v, _m = entry
    if t not in INT_TYPES:
        return "handle type"
    return "invalid handle" if v is None or v < 0 else None


def timeout_check(entry):
    _n, t, v, _m = entry
    return None if t in INT_TYPES or t == 101 else "timeout type"


def first(*checks):
    for c in checks:
        if c is not None:
            return c
    return None


def by_name(name):
    for e in ZOO:
        if e[0] == name:
            return e
    raise KeyError(name)


BASE = {
    "pubx": [by_name("sym 't/1'"), by_name('"m"'), by_name("long 1"), by_name("bool 0")],
    "subx": [by_name("sym 't/1'"), by_name("long 1")],
    "unsub": [by_name("sym 't/1'")],
    "pubxh": [by_name("long 1000"), by_name("sym 't/1'"), by_name('"m"'), by_name("long 1"), by_name("bool 0")],
    "subxh": [by_name("long 1000"), by_name("sym 't/1'"), by_name("long 1")],
    "unsubh": [by_name("long 1000"), by_name("sym 't/1'")],
    "disconnect": [by_name("long 0")],
    "disconnecth": [by_name("long 1000"), by_name("long 0")],
    "isConnected": [by_name("(::)")],
    "isConnectedh": [by_name("long 1000")],
    "init": [by_name("(::)")],
    "connX": [by_name("sym 'foo://127.0.0.1:1'"), by_name("sym 'a'"), by_name("()!()")],
    "connhx": [by_name("sym 'foo://127.0.0.1:1'"), by_name("sym 'a'"), by_name("()!()")],
    "stats": [by_name("(::)")],
    "statsh": [by_name("long 1000")],
    "loglevel": [by_name("(::)")],
    "pubbatch": [by_name("sym 't/1'"), by_name("list of strings"), by_name("long 1"), by_name("bool 0")],
    "pubbatchh": [by_name("long 1000"), by_name("sym 't/1'"), by_name("list of strings"), by_name("long 1"),
                  by_name("bool 0")],
    "pubp": [by_name("sym 't/1'"), by_name('"m"'), by_name("long 1"), by_name("bool 0"), by_name("(`$())!()")],
    "pubph": [by_name("long 1000"), by_name("sym 't/1'"), by_name('"m"'), by_name("long 1"), by_name("bool 0"),
              by_name("(`$())!()")],
    "pubbatchp": [by_name("sym 't/1'"), by_name("list of strings"), by_name("long 1"), by_name("bool 0"),
                  by_name("(`$())!()")],
    "pubbatchph": [by_name("long 1000"), by_name("sym 't/1'"), by_name("list of strings"), by_name("long 1"),
                   by_name("bool 0"), by_name("(`$())!()")],
}

OPTS_ERR = {
    "()!()": None, "(`$())!()": None, "`a`b!1 2": "Unsupported conn opt name in dictionary",
    "`username`password!`u`p": None, "(enlist`)!enlist(::)": None, "1 2!3 4": "options key type incorrect",
    "`keepAliveInterval!enlist`x": "keepAliveInterval type incorrect",
    "`nosuchkey!enlist 1": "Unsupported conn opt name in dictionary",
    "dict of dicts": "Unsupported conn opt name in dictionary",
}


def expected(fn, args, connected=False):
    """The q error the library must signal for these arguments (None: success), or ... when only 'some
    static error or a result' can be said."""
    nc = "not connected"
    if fn == "pubx":
        t, m, qo, r = args
        return first(text_check(t, "topic type"), None if m[1] in PAYLOAD_TYPES else "payload type",
                     qos_check(qo), retain_check(r), None if connected else nc)
    if fn == "subx":
        t, qo = args
        e = qos_check(qo)  # KX's sub leaves the value to paho: 'Invalid QoS value
        return first(text_check(t, "topic type"), None if connected else nc,
                     "Invalid QoS value" if e == "invalid qos" else e)
    if fn == "unsub":
        return first(text_check(args[0], "topic type"), None if connected else nc)
    if fn in ("pubxh", "subxh", "unsubh"):
        h = handle_check(args[0])
        if h:
            return h
        return expected(fn[:-1], args[1:], connected=False)
    if fn == "disconnect":
        return first(timeout_check(args[0]), "No client is currently connected")
    if fn == "disconnecth":
        return first(handle_check(args[0]), timeout_check(args[1]), "No client is currently connected")
    if fn in ("isConnected", "init", "stats"):
        return None
    if fn == "isConnectedh":
        return handle_check(args[0])
    if fn == "statsh":
        return first(handle_check(args[0]), None if args[0][2] == 0 else "invalid handle")
    if fn == "pubbatchh":
        return handle_check(args[0]) or expected("pubbatch", args[1:], connected=False)
    if fn == "pubbatch":
        return batch_expected(args, connected)
    if fn in ("connX", "connhx"):
        a, c, o = args
        if a[1] == 11:
            # A list of symbols is a list of brokers (joined with commas); an empty one is no address.
            items = ["t"] * 10000 if a[2] is None else a[2]
            a = (a[0], -11 if items else 0, ",".join(items), None)
        e = first(text_check(a, "addr type"), text_check(c, "client type"))
        if e:
            return "addr type" if e == "Invalid UTF8 string" and text_check(a, "addr type") else (
                "client type" if e == "Invalid UTF8 string" else e)
        if o[1] not in (99, 127):
            return "options"
        if o[0] in OPTS_ERR and OPTS_ERR[o[0]]:
            return OPTS_ERR[o[0]]
        if o[0] not in OPTS_ERR:
            return ...
        addr = a[2] if a[1] != -10 else a[2]
        if not all(any(u.strip().lower().startswith(s) and len(u.strip()) > len(s)
                       for s in ("tcp://", "ssl://", "mqtt://", "mqtts://", "ws://", "wss://"))
                   for u in addr.split(",")):
            return "Invalid protocol scheme"
        return ...
    return ...


LIST_LEN = {"empty list ()": 0, "list of strings": 2, "list of bytes": 1, "mixed list": 4, "nested list": 1,
            "list of (::)": 2, "list of 10000 strings": 10000, "syms": 2, "empty syms": 0, "syms long": 10000}
# The first item's error as a payload list / as a topic list.
PAYLOAD_ITEM_ERR = {"empty list ()": None, "list of strings": None, "list of bytes": None,
                    "mixed list": "payload type", "nested list": "payload type", "list of (::)": "payload type",
                    "list of 10000 strings": None}
TOPIC_ITEM_ERR = {"list of (::)": "topic type", "list of bytes": "topic type", "mixed list": "topic type",
                  "nested list": "topic type"}


def batch_expected(args, connected):
    t, m, qo, r = args
    if m[1] != 0:
        return "payload type"
    if m[0] not in LIST_LEN:
        return ...
    n = LIST_LEN[m[0]]
    topic_err = None
    if t[1] in TEXT_TYPES:
        e = text_check(t, "topic type")
        if e:
            return e
    elif t[1] in (11, 0):
        if t[0] not in LIST_LEN:
            return ...
        if LIST_LEN[t[0]] != n:
            return "length"
        topic_err = TOPIC_ITEM_ERR.get(t[0])
    else:
        return "topic type"
    e = first(qos_check(qo), retain_check(r))
    if e:
        return e
    if n > 0 and (topic_err or PAYLOAD_ITEM_ERR[m[0]]):
        return topic_err or PAYLOAD_ITEM_ERR[m[0]]
    return None if connected else "not connected"


def run_case(q, fn, entries):
    ks = [e[3](q) for e in entries]
    try:
        r = q.call_k(fn, *ks)
        out = q.decode(r)
        q.r0(r)
        return out
    except QError as e:
        assert e.static, f"{fn}: krr given a non-static string {e.msg!r}"
        return e
    finally:
        for x in ks:
            q.r0(x)


def check(q, fn, entries, connected=False):
    res = run_case(q, fn, entries)
    exp = expected(fn, entries, connected)
    names = [e[0] for e in entries]
    if isinstance(res, QError):
        assert res.msg != "internal error", (fn, names)
        if exp is not ...:
            assert res.msg == exp, (fn, names, res.msg, exp)
    else:
        if exp is not ...:
            assert exp is None, (fn, names, res, exp)
        if fn in ("isConnected", "isConnectedh"):
            assert res is False
        if fn == "init":
            assert res == NIL
        if fn in ("stats", "statsh"):
            assert isinstance(res, dict) and res["connected"] is False
    return res


FUNCS = sorted(BASE)


@pytest.mark.parametrize("fn", FUNCS)
def test_every_type_in_every_position(q, fn):
    """Systematic: each position over the whole zoo, the others valid. Memory balanced."""
    base = BASE[fn]
    cases = 0
    for pos in range(len(base)):
        for e in ZOO:
            args = list(base)
            args[pos] = e
            check(q, fn, args)  # warm-up: interned symbols, thread pools
            before = q.used()
            check(q, fn, args)
            after = q.used()
            assert after == before, (fn, pos, e[0], after - before)
            cases += 1
    assert cases == len(base) * len(ZOO) or fn in ("connX", "connhx")


ZOO_IDX = st.integers(min_value=0, max_value=len(ZOO) - 1)
OPT_KEYS = ["username", "password", "keepAliveInterval", "cleansession", "reliable", "connectTimeout",
            "retryInterval", "MQTTVersion", "maxInflightMessages", "cleanstart", "lastWillTopic", "lastWillQos",
            "lastWillMessage", "lastWillRetain", "trustStore", "keyStore", "privateKey", "privateKeyPassword",
            "enabledCipherSuites", "CApath", "enableServerCertAuth", "sslVersion", "verify", "httpProxy",
            "httpsProxy", "queueBytes", "queueMessages", "fullPolicy", "autoReconnect", "backoffMin",
            "backoffMax", "alpn", "sni", "rcvPayload", "logLevel", "linger", "batchScheduling",
            "sessionExpiryInterval", "receiveMaximum", "maximumPacketSize", "topicAliases", "topicAliasMaximum",
            "userProperties", "rcvProperties", "", "bogus"]


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(fn=st.sampled_from([f for f in FUNCS if f not in ("connX", "connhx")]), idx=st.lists(ZOO_IDX, min_size=6,
                                                                                          max_size=6))
def test_random_argument_combinations(host, fn, idx):
    entries = [ZOO[i] for i in idx[: len(BASE[fn])]]
    check(host, fn, entries)  # warm-up: symbols are interned on first use
    before = host.used()
    check(host, fn, entries)
    assert host.used() == before, (fn, [e[0] for e in entries])


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(keys=st.lists(st.sampled_from(OPT_KEYS), max_size=6), vals=st.lists(ZOO_IDX, min_size=6, max_size=6),
       typed=st.booleans())
def test_random_connect_options(host, keys, vals, typed):
    """Option dictionaries: random known/unknown keys with values of any type (mixed or typed vectors).
    The address has an unknown scheme, so nothing touches the network: the result is always an error."""
    h = host
    vs = [ZOO[i] for i in vals[: len(keys)]]

    def make():
        if typed and keys:
            # all values long (a typed vector), as `a`b!1 2 gives
            return h.h.xD(h.syms(keys), h.vec(7, list(range(len(keys)))))
        mixed = h.h.ktn(0, len(keys))
        import ctypes
        for i, e in enumerate(vs):
            ctypes.c_void_p.from_address(mixed + 16 + 8 * i).value = e[3](h)
        return h.h.xD(h.syms(keys), mixed)

    for rep in range(2):
        before = h.used()
        a, c, o = h.k(Sym("foo://127.0.0.1:1")), h.k(Sym("cid")), make()
        try:
            h.call_k("connX", a, c, o)
            raise AssertionError("connX to foo:// succeeded")
        except QError as e:
            assert e.static
            assert e.msg != "internal error"
            if "bogus" in keys and all(k in ("", "bogus") for k in keys[: keys.index("bogus")]):
                assert e.msg == "Unsupported conn opt name in dictionary"
            if not keys or all(k == "" for k in keys):
                assert e.msg == "Invalid protocol scheme"
        finally:
            for x in (a, c, o):
                h.r0(x)
        if rep == 1:
            assert h.used() == before


def test_options_exact(q):
    """KX's option types and error strings, and ours."""
    def err(opts):
        try:
            q.call("connX", Sym("foo://127.0.0.1:1"), Sym("c"), opts)
        except QError as e:
            return e.msg
        return None

    S = Sym
    assert err({}) == "Invalid protocol scheme"
    assert err({S(""): NIL}) == "Invalid protocol scheme"  # KX's conn wrapper
    assert err({S("username"): S("u"), S("password"): S("p")}) == "Invalid protocol scheme"
    assert err({S("username"): 1}) == "username type incorrect"
    assert err({S("keepAliveInterval"): S("x")}) == "keepAliveInterval type incorrect"
    assert err({S("keepAliveInterval"): 70000}) == "keepAliveInterval invalid"
    assert err({S("MQTTVersion"): 5}) == "Invalid protocol scheme"
    assert err({S("MQTTVersion"): 3}) == "Invalid protocol scheme"
    assert err({S("cleanstart"): 1}) == "cleanstart: MQTT 5 only"
    assert err({S("cleanstart"): 0}) == "Invalid protocol scheme"
    assert err({S("cleanstart"): 1, S("MQTTVersion"): 5}) == "Invalid protocol scheme"
    assert err({S("receiveMaximum"): 5}) == "receiveMaximum: MQTT 5 only"
    assert err({S("httpProxy"): S("http://p:1")}) == "Invalid protocol scheme"
    assert err({S("httpsProxy"): S("http://p:1")}) == "Invalid protocol scheme"
    assert err({S("sslVersion"): 1}) == "sslVersion: TLS 1.0/1.1 unsupported"
    assert err({S("sslVersion"): 3}) == "Invalid protocol scheme"
    assert err({S("privateKeyPassword"): S("pw")}) == "Invalid protocol scheme"
    assert err({S("lastWillQos"): 1}) == "lastWillTopic missing"
    assert err({S("lastWillTopic"): S("w"), S("lastWillQos"): 3}) == "lastWillQos invalid"
    assert err({S("lastWillTopic"): S("w"), S("lastWillMessage"): "bye"}) == "Invalid protocol scheme"
    assert err({S("lastWillMessage"): S("x"), S("lastWillTopic"): S("w")}) == "Invalid protocol scheme"
    assert err({S("fullPolicy"): S("dropOldest")}) == "Invalid protocol scheme"
    assert err({S("fullPolicy"): S("nope")}) == "fullPolicy invalid"
    assert err({S("fullPolicy"): 1}) == "fullPolicy type incorrect"
    assert err({S("rcvPayload"): S("byte")}) == "Invalid protocol scheme"
    assert err({S("rcvPayload"): S("x")}) == "rcvPayload invalid"
    assert err({S("backoffMin"): 5000, S("backoffMax"): 1000}) == "backoffMin greater than backoffMax"
    assert err({S("logLevel"): S("loud")}) == "logLevel invalid"
    assert err({S("alpn"): [S("x")]}) == "alpn type incorrect"
    assert err({S("maxInflightMessages"): 0}) == "maxInflightMessages invalid"
    assert err({S("maxInflightMessages"): -1}) == "Invalid protocol scheme"
    assert err({S("reliable"): True}) == "Invalid protocol scheme"
    assert err({S("nosuch"): 1}) == "Unsupported conn opt name in dictionary"
    assert err({S("linger"): 5, S("batchScheduling"): False}) == "Invalid protocol scheme"
    assert err({S("linger"): 20000}) == "linger invalid"
    # typed value vectors: `username`password!`u`p (symbols), `keepAliveInterval`connectTimeout!10 5 (longs)
    for d in (q.h.xD(q.syms(["username", "password"]), q.syms(["u", "p"])),
              q.h.xD(q.syms(["keepAliveInterval", "connectTimeout"]), q.vec(7, [10, 5])),
              q.h.xD(q.syms(["cleansession", "verify"]), q.vec(1, [1, 0]))):
        a, c = q.k(Sym("foo://x")), q.k(Sym("c"))
        try:
            with pytest.raises(QError, match="^Invalid protocol scheme$"):
                q.call_k("connX", a, c, d)
        finally:
            for x in (a, c, d):
                q.r0(x)
    d = q.h.xD(q.syms(["username"]), q.vec(7, [1]))
    a, c = q.k(Sym("foo://x")), q.k(Sym("c"))
    try:
        with pytest.raises(QError, match="^username type incorrect$"):
            q.call_k("connX", a, c, d)
    finally:
        for x in (a, c, d):
            q.r0(x)
    # not a dictionary
    for bad in ([], 1, Sym("x"), "s"):
        assert err(bad) == "options"


def test_addr_and_client_checks(q):
    with pytest.raises(QError, match="^addr type$"):
        q.call("connX", 1, Sym("c"), {})
    with pytest.raises(QError, match="^client type$"):
        q.call("connX", Sym("tcp://127.0.0.1:1"), 1, {})
    with pytest.raises(QError, match="^Invalid protocol scheme$"):
        q.call("connX", Sym("https://localhost:1883"), Sym("c"), {})
    with pytest.raises(QError, match="^Invalid protocol scheme$"):
        q.call("connX", "tcp:/", Sym("c"), {})


def test_tls_files_checked_first(q, tmp_path):
    S = Sym
    missing = str(tmp_path / "nope.pem")
    for key, msg in (("trustStore", "trustStore: cannot read file"), ("keyStore", "keyStore: cannot read file"),
                     ("privateKey", "privateKey: cannot read file"), ("CApath", "CApath: cannot read directory")):
        with pytest.raises(QError) as e:
            q.call("connX", S("ssl://127.0.0.1:1"), S("c"), {S(key): S(missing)})
        assert e.value.msg == msg


def test_loglevel(q):
    assert q.call("loglevel", NIL) in (Sym("warn"), Sym("off"), Sym("error"), Sym("info"), Sym("debug"),
                                      Sym("trace"))
    assert q.call("loglevel", Sym("debug")) == Sym("debug")
    assert q.call("loglevel", 1) == Sym("error")
    with pytest.raises(QError, match="invalid level"):
        q.call("loglevel", Sym("loud"))
    with pytest.raises(QError, match="level type"):
        q.call("loglevel", 1.5)
    assert q.call("loglevel", Sym("warn")) == Sym("warn")


def test_stats_without_connection(q):
    s = q.call("stats", NIL)
    assert s["connected"] is False
    for k in ("queued", "queuedBytes", "inflight", "sent", "acked", "dropped", "received", "reconnects",
              "bytesIn", "bytesOut", "callbackErrors", "wakeups", "socketWrites"):
        assert s[k] == 0, k
    assert isinstance(s["lastError"], str)


# `.mqtt.stats[]`'s keys in their order and the type of each value: the dictionary is built from one table in
# src/client/stats.rs plus the q layer's own entries; users index it by name and print it in this order.
STATS_KEYS = ["queued", "queuedBytes", "inflight", "sent", "acked", "dropped", "droppedOldest", "droppedNewest",
              "refusedFull", "droppedIncoming", "droppedTooLarge", "rxPaused", "received", "reconnects",
              "bytesIn", "bytesOut", "callbackErrors", "wakeups", "socketWrites", "spooled", "spooledBytes",
              "spoolOldestAgeMs", "spilled", "spoolDropped", "spoolBytesWritten", "subRefused", "failed",
              "topicAliased", "topicAliasBytesSaved", "serverReceiveMaximum", "serverMaximumPacketSize",
              "serverTopicAliasMaximum", "serverMaximumQos", "serverKeepAlive", "assignedClientId",
              "connected", "broker", "lastError"]
STATS_TEXT = ("assignedClientId", "broker", "lastError")


def test_stats_keys_order_and_types(q):
    for s in (q.call("stats", NIL), q.call("statsh", 0)):
        assert list(s) == STATS_KEYS
        assert all(isinstance(k, Sym) for k in s)
        for k, v in s.items():
            want = bool if k == "connected" else str if k in STATS_TEXT else int
            assert type(v) is want, (k, v)
        for k in ("serverReceiveMaximum", "serverMaximumPacketSize", "serverTopicAliasMaximum",
                  "serverMaximumQos", "serverKeepAlive"):
            assert s[k] == -2**63, k  # 0N: no connection yet


def test_product_small(q):
    """A full product over a representative subset for the 4-argument pub: every combination."""
    reps = [by_name(n) for n in ("sym 't/1'", '"m"', "bytes", "long 1", "int 3", "bool 1", "(::)", "()!()",
                                 "empty list ()", "short -32768", "float 1.0", "syms")]
    n = 0
    for args in itertools.product(reps, repeat=4):
        check(q, "pubx", list(args))
        n += 1
    assert n == len(reps) ** 4
