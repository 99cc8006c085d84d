"""A TCP port for `jax.distributed`'s coordinator on one machine (tests, `launch/local_multiprocess.sh`).

The coordinator's port must be known to every process before process 0 binds it, so it cannot be 0. Asking the OS
for an ephemeral port and closing it (bind-close-reuse) races: the OS hands the same range out to outgoing
connections (gloo opens many) and to other callers doing the same. So: a port *below* the ephemeral range, from a
block of its own per pytest-xdist worker (or per process otherwise), checked bindable; only explicit binds use
that range, and no two workers draw from the same block.
"""
from __future__ import annotations

import itertools
import os
import socket

BLOCK = 500
_counter = itertools.count()


def ephemeral_low(default: int = 32768) -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _block_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return int(worker[2:])
    return os.getpid()


def coordinator_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that is free now and that no other worker of this machine's test run will pick."""
    top = ephemeral_low() - 1
    blocks = max((top - 10000) // BLOCK, 1)
    base = 10000 + (_block_index() % blocks) * BLOCK
    offset = (os.getpid() * 7) % BLOCK   # two runs in the same block start at different ports
    for _ in range(BLOCK):
        port = base + (offset + next(_counter)) % BLOCK
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free coordinator port in {base}-{base + BLOCK - 1} on {host}")
