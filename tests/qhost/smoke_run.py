#!/usr/bin/env python3
"""Runs the C smoke driver against a fresh local mosquitto: smoke_run.py <command...> — the broker's plain
URI is appended as the last argument (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu smoke qhost.so lib.so`)."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from broker import Broker  # noqa: E402

if __name__ == "__main__":
    b = Broker()
    try:
        sys.exit(subprocess.run(sys.argv[1:] + [b.tcp_uri], timeout=600).returncode)
    finally:
        b.close()
