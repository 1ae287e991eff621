"""The q host harness, Python side: loads qhost.so (q's API: KX's libe.so + the host shim) and the extension,
binds the extension's functions the way q does (names and arities from the `2:` lines of q/mqtt.q), builds
arguments with libe's own constructors, calls, decodes results and callbacks.

Everything that touches K objects runs on the thread that created the Host (q's main thread): libe's
memory pools are per thread, and the extension must only call into q from that thread.
"""
import ctypes
import os
import platform
import re
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
ARCH = os.environ.get("QHOST_ARCH", platform.machine())

KP = ctypes.c_void_p
HANDLER = ctypes.CFUNCTYPE(KP, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(KP))

# host counters (qhost.c: enum ST_*)
ST_K, ST_K_WRONG, ST_KRR, ST_SD1, ST_SD0, ST_SD0X, ST_HANDLER, ST_K_HANDLE, ST_DOT = range(9)


class Sym(str):
    """A q symbol (a Python str is a char vector)."""


class QError(Exception):
    """A q error signalled by the extension (krr); `.static` tells whether krr got a pointer into a loaded
    object's static data (q keeps the pointer: it must not be freed or reused)."""

    def __init__(self, msg, obj):
        super().__init__(msg)
        self.msg = msg
        self.obj = obj

    @property
    def static(self):
        return self.obj is not None


class Nil:
    """q's generic null (::)."""

    def __repr__(self):
        return "(::)"

    def __eq__(self, o):
        return isinstance(o, Nil)

    def __hash__(self):
        return 101


NIL = Nil()


def lib_path():
    p = os.environ.get("QMQTT_LIB")
    if p:
        return p
    cands = [os.path.join(ROOT, "target", prof, "libqmqtt.so") for prof in ("release", "debug")]
    cands = [c for c in cands if os.path.exists(c)]
    if cands:
        return max(cands, key=os.path.getmtime)
    raise RuntimeError("libqmqtt.so not built: cargo build --release")


def qhost_path():
    return os.environ.get("QHOST_SO", os.path.join(ROOT, "target", "qhost", ARCH, "qhost.so"))


def bindings(script):
    """The `name:`lib 2:(`cname;arity)` lines of a q script → {q name: (library, C name, arity)}."""
    out = {}
    for m in re.finditer(r"^\s*([\w.]+)\s*:\s*`(\w+)\s+2:\s*\(\s*`(\w+)\s*;\s*(\d+)\s*\)", open(script).read(),
                         re.M):
        out[m.group(1)] = (m.group(2), m.group(3), int(m.group(4)))
    return out


class Host:
    def __init__(self, lib=None, script=None):
        self.thread = threading.get_ident()
        self.h = ctypes.CDLL(qhost_path(), mode=ctypes.RTLD_GLOBAL | os.RTLD_NOW)
        h = self.h
        for name, res, args in [
            ("ka", KP, [ctypes.c_int]), ("kb", KP, [ctypes.c_int]), ("kg", KP, [ctypes.c_int]),
            ("kh", KP, [ctypes.c_int]), ("ki", KP, [ctypes.c_int]), ("kj", KP, [ctypes.c_longlong]),
            ("ke", KP, [ctypes.c_double]), ("kf", KP, [ctypes.c_double]), ("kc", KP, [ctypes.c_int]),
            ("ks", KP, [ctypes.c_char_p]), ("kp", KP, [ctypes.c_char_p]),
            ("kpn", KP, [ctypes.c_char_p, ctypes.c_longlong]), ("ktn", KP, [ctypes.c_int, ctypes.c_longlong]),
            ("kd", KP, [ctypes.c_int]), ("kz", KP, [ctypes.c_double]), ("kt", KP, [ctypes.c_int]),
            ("ktj", KP, [ctypes.c_int, ctypes.c_longlong]), ("xD", KP, [KP, KP]), ("xT", KP, [KP]),
            ("r0", None, [KP]), ("r1", KP, [KP]), ("sn", ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]),
            ("qhost_init", None, []), ("qhost_set_handler", None, [HANDLER]),
            ("qhost_stat", ctypes.c_long, [ctypes.c_int]), ("qhost_reset_stats", None, []),
            ("qhost_err_marker", KP, []), ("qhost_last_err", ctypes.c_void_p, []),
            ("qhost_object_of", ctypes.c_char_p, [ctypes.c_void_p]), ("qhost_nfds", ctypes.c_int, []),
            ("qhost_fd", ctypes.c_int, [ctypes.c_int]), ("qhost_error", KP, [ctypes.c_char_p]),
            ("qhost_used", ctypes.c_longlong, []), ("qhost_loop", ctypes.c_long, [ctypes.c_int]),
            ("qhost_bench_pub", ctypes.c_long,
             [KP, KP, KP, KP, KP, ctypes.c_long, ctypes.c_int, ctypes.POINTER(ctypes.c_double)]),
            ("qhost_bench_batch", ctypes.c_long,
             [KP, KP, KP, KP, KP, ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.POINTER(ctypes.c_double)]),
        ]:
            f = getattr(h, name)
            f.restype = res
            f.argtypes = args
        h.qhost_init()
        self.marker = h.qhost_err_marker()
        self.calls = []          # (name, decoded args) of every k(0,…) callback
        self.handlers = {}       # callback name → python function(*decoded args) → value or QError text
        self._handler = HANDLER(self._on_k)
        h.qhost_set_handler(self._handler)
        self.lib_path = lib or lib_path()
        # Load the extension as q's `2:` does (dlopen, local symbols), then bind the script's functions.
        self.lib = ctypes.CDLL(self.lib_path, mode=os.RTLD_NOW)
        self.script = script or os.path.join(ROOT, "q", "mqtt.q")
        self.fns = {}
        for qname, (_lib, cname, arity) in bindings(self.script).items():
            self.fns[qname.split(".")[-1]] = self.bind(cname, arity)

    def bind(self, cname, arity):
        f = getattr(self.lib, cname)
        f.restype = KP
        f.argtypes = [KP] * arity
        f.arity = arity
        return f

    # ---- callbacks from the extension (k(0, name, args…)) ----
    def _on_k(self, name, n, args):
        name = name.decode()
        assert threading.get_ident() == self.thread
        vals = [self.decode(args[i]) for i in range(n)]
        self.calls.append((name, vals))
        f = self.handlers.get(name)
        if f is None:
            return None
        try:
            r = f(*vals)
        except Exception as e:  # a q function that signals
            return self.h.qhost_error(str(e).encode())
        if isinstance(r, QError):
            return self.h.qhost_error(r.msg.encode())
        return None if r is None else self.k(r)

    def loop(self, ms=0):
        return self.h.qhost_loop(ms)

    def loop_until(self, pred, timeout=10.0, step_ms=20):
        """Run q's event loop until pred() is true; returns pred()'s last value."""
        deadline = time.time() + timeout
        while True:
            v = pred()
            if v or time.time() > deadline:
                return v
            self.loop(step_ms)

    def stat(self, which):
        return self.h.qhost_stat(which)

    def used(self):
        return self.h.qhost_used()

    def callbacks(self, name):
        return [a for (n, a) in self.calls if n == name]

    # ---- K construction with libe ----
    def k(self, v):
        """A Python value as a new K object (owned by the caller)."""
        h = self.h
        if isinstance(v, int) and not isinstance(v, bool) and hasattr(v, "ktype"):
            return v.make(self)
        if isinstance(v, KRaw):
            return v.make(self)
        if v is None or isinstance(v, Nil):
            return h.ka(101)
        if isinstance(v, bool):
            return h.kb(int(v))
        if isinstance(v, Sym):
            return h.ks(v.encode())
        if isinstance(v, int):
            return h.kj(v)
        if isinstance(v, float):
            return h.kf(v)
        if isinstance(v, str):
            b = v.encode()
            return h.kpn(b, len(b))
        if isinstance(v, (bytes, bytearray)):
            x = h.ktn(4, len(v))
            ctypes.memmove(x + 16, bytes(v), len(v))
            return x
        if isinstance(v, dict):
            keys = list(v.keys())
            if all(isinstance(k, Sym) for k in keys):
                kk = self.syms(keys)
            else:
                kk = self.mixed(keys)
            return h.xD(kk, self.mixed(list(v.values())))
        if isinstance(v, (list, tuple)):
            return self.mixed(v)
        raise TypeError(f"no K for {v!r}")

    def mixed(self, items):
        x = self.h.ktn(0, len(items))
        for i, it in enumerate(items):
            ctypes.c_void_p.from_address(x + 16 + 8 * i).value = self.k(it)
        return x

    def syms(self, items):
        x = self.h.ktn(11, len(items))
        for i, s in enumerate(items):
            b = s.encode() if isinstance(s, str) else s
            ctypes.c_void_p.from_address(x + 16 + 8 * i).value = self.h.sn(b, len(b))
        return x

    def vec(self, t, values):
        """A typed vector of q type t (1..19) from Python numbers."""
        fmt = {1: ctypes.c_uint8, 4: ctypes.c_uint8, 5: ctypes.c_int16, 6: ctypes.c_int32, 7: ctypes.c_int64,
               8: ctypes.c_float, 9: ctypes.c_double, 10: ctypes.c_uint8, 12: ctypes.c_int64,
               13: ctypes.c_int32, 14: ctypes.c_int32, 15: ctypes.c_double, 16: ctypes.c_int64,
               17: ctypes.c_int32, 18: ctypes.c_int32, 19: ctypes.c_int32}[t]
        x = self.h.ktn(t, len(values))
        size = ctypes.sizeof(fmt)
        for i, v in enumerate(values):
            fmt.from_address(x + 16 + size * i).value = v
        return x

    def r0(self, x):
        if x and x != self.marker:
            self.h.r0(x)

    # ---- decoding ----
    def decode(self, x):
        if not x:
            return NIL
        t = ctypes.c_int8.from_address(x + 2).value
        a = x + 8
        if t == -128:
            return QError(ctypes.string_at(ctypes.c_void_p.from_address(a).value).decode(), None)
        if t == 101:
            return NIL
        if t == -1:
            return bool(ctypes.c_uint8.from_address(a).value)
        if t == -4:
            return ctypes.c_uint8.from_address(a).value
        if t == -5:
            return ctypes.c_int16.from_address(a).value
        if t == -6:
            return ctypes.c_int32.from_address(a).value
        if t in (-7, -12, -16):
            return ctypes.c_int64.from_address(a).value
        if t == -9:
            return ctypes.c_double.from_address(a).value
        if t == -10:
            return chr(ctypes.c_uint8.from_address(a).value)
        if t == -11:
            return Sym(ctypes.string_at(ctypes.c_void_p.from_address(a).value).decode())
        if t in (99, 127):
            keys = self.decode(ctypes.c_void_p.from_address(x + 16).value)
            vals = self.decode(ctypes.c_void_p.from_address(x + 24).value)
            return dict(zip(keys, vals))
        if 0 <= t <= 19:
            n = ctypes.c_int64.from_address(a).value
            d = x + 16
            if t == 0:
                return [self.decode(ctypes.c_void_p.from_address(d + 8 * i).value) for i in range(n)]
            if t == 10:
                return ctypes.string_at(d, n).decode("utf-8", "replace")
            if t == 4:
                return ctypes.string_at(d, n)
            if t == 1:
                return [bool(b) for b in ctypes.string_at(d, n)]
            if t == 7:
                return list((ctypes.c_int64 * n).from_address(d))
            if t == 6:
                return list((ctypes.c_int32 * n).from_address(d))
            if t == 11:
                return [Sym(ctypes.string_at(ctypes.c_void_p.from_address(d + 8 * i).value).decode())
                        for i in range(n)]
        return ("K", t)

    # ---- calls ----
    def call_k(self, name, *kargs):
        """Call a bound function with K arguments (borrowed: still owned by the caller). Returns the raw
        result, or raises QError."""
        f = self.fns[name]
        assert len(kargs) == f.arity, f"{name} takes {f.arity} arguments"
        r = f(*kargs)
        if r == self.marker:
            p = self.h.qhost_last_err()
            msg = ctypes.string_at(p).decode("utf-8", "replace")
            obj = self.h.qhost_object_of(p)
            raise QError(msg, obj.decode() if obj else None)
        return r

    def call(self, name, *args):
        """Call `.mqtt.<name>` with Python arguments; returns the decoded result or raises QError."""
        ks = [a if isinstance(a, KRaw) and a.raw else self.k(a) for a in args]
        ks = [a.ptr if isinstance(a, KRaw) and a.raw else a for a in ks]
        try:
            r = self.call_k(name, *ks)
            v = self.decode(r)
            self.r0(r)
            return v
        finally:
            for a, x in zip(args, ks):
                if not (isinstance(a, KRaw) and a.raw):
                    self.r0(x)

    def __getattr__(self, name):
        if name.startswith("_") or name not in self.__dict__.get("fns", {}):
            raise AttributeError(name)
        return lambda *a: self.call(name, *a)

    # ---- KX's q-side wrappers (q/mqtt.q) in Python ----
    def conn(self, uri, client, opts=None):
        """KX's `.mqtt.conn`: connX[uri;client](enlist[`]!enlist(::)),opts."""
        d = {Sym(""): NIL}
        d.update(opts or {})
        return self.call("connX", Sym(uri), Sym(client), d)

    def disconnect_all(self):
        for h in range(0, 64):
            try:
                if h == 0:
                    self.call("disconnect", 0)
                else:
                    self.call("disconnecth", h, 0)
            except QError:
                pass


class KRaw:
    """A K argument built by hand (e.g. an unusual type); `raw=True` means the test owns and frees it."""

    def __init__(self, ptr, raw=True):
        self.ptr = ptr
        self.raw = raw
