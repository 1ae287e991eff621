"""The extension binds q's API to the host (not libe's fakes), and q/mqtt.q binds to the library."""
import os
import re
import subprocess
import sys

import pytest

from qhost import ROOT, ST_K, ST_K_WRONG, QError, Sym, bindings

KX_EXPORTS = {"connX": 3, "init": 1, "pub": 4, "sub": 2, "unsub": 1, "isConnected": 1, "disconnect": 1}
ADDED_EXPORTS = {"connh": 3, "pubh": 5, "subh": 3, "unsubh": 2, "isConnectedh": 1, "disconnecth": 2,
                 "pubbatch": 4, "pubbatchh": 5, "stats": 1, "statsh": 1, "loglevel": 1,
                 "pubp": 5, "pubph": 6, "pubbatchp": 5, "pubbatchph": 6}


def undefined(path):
    out = subprocess.run(["nm", "-D", "--undefined-only", path], capture_output=True, text=True, check=True)
    return {line.split()[-1].split("@")[0] for line in out.stdout.splitlines() if " U " in line}


def exported(path):
    out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in out.stdout.splitlines() if " T " in line}


def test_krr_is_the_hosts(q):
    # libe's own krr returns null: a null here would read as success. The host's marker proves the binding.
    with pytest.raises(QError) as e:
        q.call("pubx", 42, "payload", 1, 0)
    assert e.value.msg == "topic type"
    # The message q keeps must be static data of our library, not heap.
    assert e.value.static and e.value.obj.endswith(os.path.basename(q.lib_path)), e.value.obj


def test_q_api_binds_to_the_host(host):
    # The dynamic linker's own record: every q function the library imports and the host defines must bind
    # to qhost.so (libe.so has k/krr/orr too, but fake ones; it has no sd1/sd0x at all).
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            "import qhost; qhost.Host()")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LD_DEBUG": "bindings"},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    lib = os.path.basename(host.lib_path)
    bound = {}
    for line in r.stderr.splitlines():
        m = re.search(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]: normal symbol `(\w+)'", line)
        if m and m.group(1).endswith(lib):
            bound[m.group(3)] = os.path.basename(m.group(2))
    imported = undefined(host.lib_path)
    host_defined = {"k", "krr", "orr", "sd1", "sd0", "sd0x", "dot"}
    assert "krr" in imported
    assert {"k", "sd1", "sd0x", "r0"} <= imported, imported
    for name in imported & host_defined:
        assert bound.get(name) == "qhost.so", (name, bound.get(name))
    # The rest binds to the system's libraries — or to the host program itself, which the dynamic linker
    # searches first (Debian's python3 exports malloc, as q may).
    # The linker names the program by the path it was started with (a venv's bin/python3, a symlink) or its
    # target (python3.11): either is the host program.
    host_exe = {os.path.basename(sys.executable), os.path.basename(os.path.realpath(sys.executable))}
    system = {"libe.so", "libc.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}
    for name in imported - host_defined:
        if not name.startswith("_"):
            assert bound.get(name) in system | host_exe, (name, bound.get(name))


def test_callback_reaches_host_registry(q):
    # A callback the library would make: check k(0,…) with the host's registry by calling k directly via the
    # same symbol the library imports.
    import ctypes
    kfn = q.h.k
    kfn.restype = ctypes.c_void_p
    before = q.stat(ST_K)
    r = kfn(0, b".mqtt.msgsent", ctypes.c_void_p(q.h.kj(7)), ctypes.c_void_p(0))
    assert q.stat(ST_K) == before + 1
    assert q.calls[-1] == (".mqtt.msgsent", [7])
    q.r0(r)
    assert q.stat(ST_K_WRONG) == 0


def test_script_bindings_match_exports(host):
    ours = bindings(os.path.join(ROOT, "q", "mqtt.q"))
    exp = exported(host.lib_path)
    cnames = {c: a for (_l, c, a) in ours.values()}
    assert {**KX_EXPORTS, **ADDED_EXPORTS} == cnames
    for lib, c, a in ours.values():
        assert lib == "mqttkdb"
        assert c in exp, f"{c} bound in mqtt.q but not exported"
    # Nothing else exported (q may only reach what mqtt.q binds).
    assert exp == set(cnames), exp ^ set(cnames)


KX_MQTT_Q = "/work/.mirror/KxSystems+mqtt/repo"


def kx_script(tmp_path):
    if not os.path.isdir(KX_MQTT_Q):
        pytest.skip("KX's repository is not mirrored here")
    s = subprocess.run(["git", "-C", KX_MQTT_Q, "show", "HEAD:q/mqtt.q"], capture_output=True, text=True)
    if s.returncode:
        pytest.skip("KX's mqtt.q not readable")
    p = tmp_path / "kx-mqtt.q"
    p.write_text(s.stdout)
    return str(p)


def test_kx_mqtt_q_binds(host, tmp_path):
    kx = bindings(kx_script(tmp_path))
    assert set(kx) == {"connX", "init", "pubx", "subx", "unsub", "isConnected", "disconnect"}
    for qname, (lib, c, a) in kx.items():
        assert lib == "mqttkdb"
        assert KX_EXPORTS[c] == a
        f = host.bind(c, a)  # dlsym succeeds with KX's name and arity
        assert f is not None
    # KX's script ends with .mqtt.init[]: our init takes anything and returns (::).
    assert host.call("init", None) == host.decode(0)


def test_kx_wrappers_in_our_script(tmp_path):
    # Our mqtt.q keeps KX's q-side definitions verbatim (same defaults).
    ours = open(os.path.join(ROOT, "q", "mqtt.q")).read()
    kx = open(kx_script(tmp_path)).read()
    for line in kx.splitlines():
        line = line.strip()
        if re.match(r"^(pub|sub|conn|msgsent|disconn|msgrcvd):", line):
            assert line in ours, line
    assert ours.rstrip().endswith(".mqtt.init[];")
