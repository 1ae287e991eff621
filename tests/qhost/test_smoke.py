"""The C smoke driver (what runs on aarch64 under qemu) passes here too, with and without a broker."""
import os
import subprocess

from qhost import ARCH, ROOT, qhost_path


def smoke(*extra):
    exe = os.path.join(os.path.dirname(qhost_path()), "smoke")
    from qhost import lib_path
    return subprocess.run([exe, qhost_path(), lib_path(), *extra], capture_output=True, text=True, timeout=300)


def test_smoke_without_broker():
    r = smoke()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout


def test_smoke_with_broker(engine, broker):
    r = smoke(broker.tcp_uri)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout and "smoke: 30 passed" in r.stdout, r.stdout
    assert ARCH and ROOT


def test_smoke_under_valgrind(engine, broker):
    """No invalid read or write in the library, the host or libe while the smoke scenario runs."""
    import shutil
    import pytest
    if not shutil.which("valgrind"):
        pytest.skip("valgrind not installed")
    exe = os.path.join(os.path.dirname(qhost_path()), "smoke")
    from qhost import lib_path
    r = subprocess.run(["valgrind", "-q", "--error-exitcode=9", "--leak-check=no", exe, qhost_path(), lib_path(),
                        broker.tcp_uri], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert "smoke: 30 passed, 0 failed" in r.stdout
