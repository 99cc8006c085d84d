"""Multi-process start-up: `jax.distributed.initialize` from the environment, before any device is touched.

Sources, in order: explicit flags / MOLMOACT2_{COORDINATOR,NUM_PROCESSES,PROCESS_ID} variables (the local
multi-process launcher); SLURM (jax detects SLURM_* itself); Cloud TPU pods (jax detects the TPU metadata).
A single process with none of these skips initialisation. On CPU the gloo collectives are selected so several
processes can all-reduce over 127.0.0.1.
"""
from __future__ import annotations

import os

import jax
from jax._src import distributed as _dist


def _timeouts() -> dict:
    """Coordination-service timeouts from MOLMOACT2_HEARTBEAT_TIMEOUT_S (default jax's 100 s). A process that misses
    heartbeats for that long is declared dead and every process aborts; several trainer processes compiling on a
    few shared CPU cores can starve the heartbeat thread for that long, so the local launcher raises it."""
    value = os.environ.get("MOLMOACT2_HEARTBEAT_TIMEOUT_S")
    if not value:
        return {}
    try:
        seconds = int(value)
    except ValueError:
        raise ValueError(f"MOLMOACT2_HEARTBEAT_TIMEOUT_S={value!r}: expected whole seconds") from None
    return {"heartbeat_timeout_seconds": seconds}


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids=None) -> str:
    """Returns which source initialised the run ('explicit', 'slurm', 'tpu' or 'single')."""
    coordinator = coordinator or os.environ.get("MOLMOACT2_COORDINATOR")
    if num_processes is None and os.environ.get("MOLMOACT2_NUM_PROCESSES"):
        num_processes = int(os.environ["MOLMOACT2_NUM_PROCESSES"])
    if process_id is None and os.environ.get("MOLMOACT2_PROCESS_ID"):
        process_id = int(os.environ["MOLMOACT2_PROCESS_ID"])
    if coordinator:
        if num_processes is None or process_id is None:
            raise ValueError("a coordinator address needs --num_processes and --process_id "
                             "(or MOLMOACT2_NUM_PROCESSES / MOLMOACT2_PROCESS_ID)")
        _cpu_collectives()
        jax.distributed.initialize(coordinator, num_processes, process_id, local_device_ids=local_device_ids,
                                   **_timeouts())
        return "explicit"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize(**_timeouts())
        return "slurm"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h]) > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(**_timeouts())
        return "tpu"
    return "single"


def _cpu_collectives():
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms in ("", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Waits for every process on the coordination service (not a device collective). Used after compiling, so
    a process that compiles slower does not make the others' first collective time out (gloo waits ~30 s)."""
    if jax.process_count() <= 1:
        return
    _dist.global_state.client.wait_at_barrier(f"molmoact2_{name}", int(timeout_s * 1000))
