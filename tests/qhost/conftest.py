"""pytest fixtures for the q host harness: one Host per process (a shared library cannot be unloaded, and
the extension keeps process-wide state), one broker per module."""
import os
import sys

import pytest
from hypothesis import settings

settings.register_profile("qhost", database=None)
settings.load_profile("qhost")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from broker import Broker  # noqa: E402
from qhost import Host  # noqa: E402

_host = None


def get_host():
    global _host
    if _host is None:
        _host = Host()
    return _host


@pytest.fixture(scope="session")
def host():
    return get_host()


@pytest.fixture
def q(host):
    """The host with a clean slate: no connections, no recorded callbacks, default handlers."""
    host.calls.clear()
    host.handlers.clear()
    yield host
    host.disconnect_all()
    host.loop(0)
    host.handlers.clear()


@pytest.fixture(scope="module")
def broker():
    b = Broker()
    yield b
    b.close()


def engine_ready():
    """False only while src/client is still the lead's stub (its Client::connect is `todo!()`). Once the
    engine is there, live tests always run — a panicking engine fails them instead of skipping them."""
    from qhost import ROOT
    try:
        src = open(os.path.join(ROOT, "src", "client", "mod.rs")).read()
    except OSError:
        return True
    i = src.find("pub fn connect(")
    return i < 0 or "todo!()" not in src[i:i + 400]


_ready = None


@pytest.fixture
def engine(q):
    """Skips the test while the engine is still the lead's stub."""
    global _ready
    if _ready is None:
        _ready = engine_ready()
    if not _ready:
        pytest.skip("engine not implemented yet (src/client is a stub)")
    return q
