"""Coordinator ports (molmoact2_jax/ports.py): below the ephemeral range, bindable, disjoint per xdist worker."""
import socket

from molmoact2_jax import ports


def test_coordinator_ports_are_below_the_ephemeral_range_and_disjoint_per_worker(monkeypatch):
    low = ports.ephemeral_low()
    drawn = {}
    for worker in ("gw0", "gw1", "gw7"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        drawn[worker] = {ports.coordinator_port() for _ in range(20)}
        for p in drawn[worker]:
            assert 10000 <= p < low
            with socket.socket() as s:   # free: bindable right now
                s.bind(("127.0.0.1", p))
    assert all(len(v) == 20 for v in drawn.values())   # successive calls give new ports
    # worker k draws only from [10000 + k * BLOCK, 10000 + (k + 1) * BLOCK)
    assert {w: {(p - 10000) // ports.BLOCK for p in v} for w, v in drawn.items()} == \
        {"gw0": {0}, "gw1": {1}, "gw7": {7}}


def test_a_taken_port_is_skipped(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    first = ports.coordinator_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", first + 1))
        s.listen()
        nxt = ports.coordinator_port()
    assert nxt != first + 1 and (nxt - 10000) // ports.BLOCK == 3
