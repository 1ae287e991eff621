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


@pytest.fixture
def engine(q):
    """The host, for tests that need the engine connected to a broker."""
    return q
