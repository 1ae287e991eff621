"""A zoo of K objects of every type and shape, made with libe's constructors: atoms of all types (with
nulls and infinities), vectors (empty, short, very long), mixed and nested lists, dictionaries, tables.
Each entry is (name, type byte, value for expectations or None, maker(host) → new K owned by the caller)."""
import ctypes

from qhost import NIL, Sym

NH, NI, NJ = -(2**15), -(2**31), -(2**63)


def _atom(t, setter):
    def make(h):
        x = h.h.ka(t)
        setter(x + 8)
        return x
    return make


def _set(ctype, v):
    return lambda a: setattr(ctype.from_address(a), "value", v)


def _vec(t, values):
    return lambda h: h.vec(t, values)


def _guid(h):
    x = h.h.ka(-2)
    ctypes.memmove(x + 8, b"\x01" * 16, 16)
    return x


def _guids(h):
    x = h.h.ktn(2, 2)
    ctypes.memmove(x + 16, b"\x02" * 32, 32)
    return x


def _table(h):
    cols = h.syms(["a", "b"])
    vals = h.h.ktn(0, 2)
    ctypes.c_void_p.from_address(vals + 16).value = h.vec(7, [1, 2])
    ctypes.c_void_p.from_address(vals + 24).value = h.syms(["x", "y"])
    return h.h.xT(h.h.xD(cols, vals))


def _keyed_dict_int(h):
    return h.h.xD(h.vec(7, [1, 2]), h.vec(7, [3, 4]))


def entries():
    z = []
    add = lambda name, t, v, make: z.append((name, t, v, make))  # noqa: E731
    for v in (0, 1):
        add(f"bool {v}", -1, v, _atom(-1, _set(ctypes.c_uint8, v)))
    add("guid", -2, None, _guid)
    for v in (0, 1, 2, 3, 255):
        add(f"byte {v}", -4, v, _atom(-4, _set(ctypes.c_uint8, v)))
    for v in (0, 1, 2, 3, -1, NH, 32767):
        add(f"short {v}", -5, None if v == NH else v, _atom(-5, _set(ctypes.c_int16, v)))
    for v in (0, 1, 2, 3, -1, NI, 2**31 - 1, 1000):
        add(f"int {v}", -6, None if v == NI else v, _atom(-6, _set(ctypes.c_int32, v)))
    for v in (0, 1, 2, 3, -1, NJ, 2**63 - 1, 1000, 2**40):
        add(f"long {v}", -7, None if v == NJ else v, _atom(-7, _set(ctypes.c_int64, v)))
    add("real", -8, None, _atom(-8, _set(ctypes.c_float, 1.5)))
    add("float 1.0", -9, None, _atom(-9, _set(ctypes.c_double, 1.0)))
    add("float nan", -9, None, _atom(-9, _set(ctypes.c_double, float("nan"))))
    add("char a", -10, "a", lambda h: h.h.kc(ord("a")))
    add("char \\xff", -10, "\xff", lambda h: h.h.kc(0xFF))
    for s in ("a", "", "t/1", "tcp://127.0.0.1:1", "foo://127.0.0.1:1", "sensors/#", "a+b", "\u00e9t\u00e9",
              "x" * 300):
        add(f"sym {s[:20]!r}", -11, s, lambda h, s=s: h.k(Sym(s)))
    add("sym invalid utf8", -11, None, lambda h: h.h.ks(b"\xff\xfe"))
    for t in (-12, -13, -14, -15, -16, -17, -18, -19):
        size = ctypes.c_double if t == -15 else (ctypes.c_int64 if t in (-12, -16) else ctypes.c_int32)
        add(f"temporal {t}", t, None, _atom(t, _set(size, 1)))
    add("(::)", 101, NIL, lambda h: h.h.ka(101))
    # vectors
    for t in (1, 4, 5, 6, 7, 8, 9, 12, 13, 14, 16, 17, 18, 19):
        add(f"empty vector {t}", t, [], _vec(t, []))
        add(f"vector {t}", t, [1, 0, 2], _vec(t, [1, 0, 2]))
    add("empty guid vector", 2, None, lambda h: h.h.ktn(2, 0))
    add("guid vector", 2, None, _guids)
    add("float vector 15", 15, None, _vec(15, [1.0]))
    add('""', 10, "", lambda h: h.k(""))
    add('"m"', 10, "m", lambda h: h.k("m"))
    add('"hello"', 10, "hello", lambda h: h.k("hello"))
    add("string invalid utf8", 10, None, lambda h: _bytes_as_chars(h, b"\xff\xfe"))
    add("string 1e6", 10, "x" * 10**6, lambda h: h.k("x" * 10**6))
    add("string with NUL", 10, "a\0b", lambda h: h.k("a\0b"))
    add("bytes", 4, b"\x00\x01", lambda h: h.k(b"\x00\x01"))
    add("bytes 1e6", 4, b"\x00" * 10**6, lambda h: h.k(b"\x00" * 10**6))
    add("empty syms", 11, [], lambda h: h.syms([]))
    add("syms", 11, ["a", "b"], lambda h: h.syms(["a", "b"]))
    add("syms long", 11, None, lambda h: h.syms(["t"] * 10000))
    add("empty list ()", 0, [], lambda h: h.h.ktn(0, 0))
    add("list of strings", 0, ["a", "b"], lambda h: h.k(["a", "b"]))
    add("list of bytes", 0, [b"a"], lambda h: h.k([b"a"]))
    add("mixed list", 0, None, lambda h: h.k([1, Sym("a"), "s", [2.0, NIL]]))
    add("nested list", 0, None, lambda h: h.k([[[["deep"]]]]))
    add("list of (::)", 0, None, lambda h: h.k([NIL, NIL]))
    add("list of 10000 strings", 0, None, lambda h: h.k(["m"] * 10000))
    # dictionaries
    add("()!()", 99, {}, lambda h: h.h.xD(h.h.ktn(0, 0), h.h.ktn(0, 0)))
    add("(`$())!()", 99, {}, lambda h: h.h.xD(h.syms([]), h.h.ktn(0, 0)))
    add("`a`b!1 2", 99, None, lambda h: h.h.xD(h.syms(["a", "b"]), h.vec(7, [1, 2])))
    add("`username`password!`u`p", 99, None, lambda h: h.h.xD(h.syms(["username", "password"]), h.syms(["u", "p"])))
    add("(enlist`)!enlist(::)", 99, None, lambda h: h.k({Sym(""): NIL}))
    add("1 2!3 4", 99, None, _keyed_dict_int)
    add("`keepAliveInterval!enlist`x", 99, None, lambda h: h.k({Sym("keepAliveInterval"): Sym("x")}))
    add("`nosuchkey!enlist 1", 99, None, lambda h: h.k({Sym("nosuchkey"): 1}))
    add("dict of dicts", 99, None, lambda h: h.k({Sym("a"): {Sym("b"): 1}}))
    add("table", 98, None, _table)
    return z


def _bytes_as_chars(h, b):
    x = h.h.ktn(10, len(b))
    ctypes.memmove(x + 16, b, len(b))
    return x


ZOO = entries()
