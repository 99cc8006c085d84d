"""Multi-process start-up: `jax.distributed.initialize` from the environment, before any device is touched.

Where the run's processes come from, in order:
  - an explicit coordinator (`--coordinator-address` / MOLMOACT2_COORDINATOR with the process count and index):
    the local multi-process launcher and any cluster JAX does not know;
  - JAX's own cluster detection (`jax._src.clusters`), asked which environment this is: a GCE TPU VM pod (the TPU
    metadata server), GKE TPU (TPU_WORKER_HOSTNAMES), multi-slice (MEGASCALE_*), SLURM (SLURM_*), Open MPI. The
    coordinator, process count and index are JAX's answers; nothing here re-derives them.
A single process with none of these skips initialisation, except on a TPU VM, where JAX initialises even one host
(as MaxText does), so a pod and a single host run the same code. Our additions to JAX's call: the coordination
heartbeat timeout (MOLMOACT2_HEARTBEAT_TIMEOUT_S, for several processes sharing a few CPU cores), gloo collectives
on CPU, and a coordinator on a loopback address binds only that address.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from jax._src import clusters as _clusters
from jax._src import distributed as _dist
from jax.experimental import multihost_utils

# JAX's TPU cluster types; a TPU VM initialises even as a single host.
_TPU_CLUSTERS = ("gcetpu", "gketpu", "tpu")
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    """What run_info.json records about how the run found its processes."""
    source: str                 # "explicit", a JAX cluster name ("slurm", "gcetpu", "gketpu", "ompi", ...) or "single"
    coordinator: str | None
    num_processes: int
    process_id: int

    def record(self) -> dict:
        return {"source": self.source, "coordinator": self.coordinator, "processes": jax.process_count(),
                "devices": jax.device_count(), "local_devices_per_process": jax.local_device_count(),
                "platform": jax.devices()[0].platform}


_info = ClusterInfo("single", None, 1, 0)


def info() -> ClusterInfo:
    return _info


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


def detect_cluster():
    """The JAX cluster environment this process runs in (a `jax._src.clusters.ClusterEnv` subclass), or None. The
    same first-present rule `jax.distributed.initialize()` applies, opt-in-only methods (mpi4py) left out."""
    for env in _clusters.ClusterEnv._cluster_types:
        if env.opt_in_only_method:
            continue
        try:
            present = env.is_env_present()
        except Exception:  # noqa: BLE001 - e.g. a Kubernetes pod without the kubernetes package: not that cluster
            present = False
        if present:
            return env
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids=None) -> ClusterInfo:
    """Initialises jax.distributed where the environment asks for it; returns how (also kept for `info()`)."""
    global _info
    coordinator = coordinator or os.environ.get("MOLMOACT2_COORDINATOR")
    if num_processes is None and os.environ.get("MOLMOACT2_NUM_PROCESSES"):
        num_processes = int(os.environ["MOLMOACT2_NUM_PROCESSES"])
    if process_id is None and os.environ.get("MOLMOACT2_PROCESS_ID"):
        process_id = int(os.environ["MOLMOACT2_PROCESS_ID"])
    if coordinator:
        if num_processes is None or process_id is None:
            raise ValueError("a coordinator address needs --num-processes and --process-id "
                             "(or MOLMOACT2_NUM_PROCESSES / MOLMOACT2_PROCESS_ID)")
        source = "explicit"
    else:
        env = detect_cluster()
        if env is None:
            return _info
        timeout = 300
        coordinator, num_processes, process_id, local_device_ids = \
            _clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, local_device_ids, None,
                                                                      timeout)
        source = env.name
        if num_processes == 1 and env.name not in _TPU_CLUSTERS:
            return _info
    _cpu_collectives()
    kwargs = dict(_timeouts())
    host = coordinator.rsplit(":", 1)[0]
    if host in _LOOPBACK:
        # A coordinator on this machine (local emulation, tests) listens on loopback only, not on every interface.
        kwargs["coordinator_bind_address"] = coordinator
    jax.distributed.initialize(coordinator, num_processes, process_id, local_device_ids=local_device_ids, **kwargs)
    _info = ClusterInfo(source, coordinator, int(num_processes), int(process_id))
    return _info


def _cpu_collectives():
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms in ("", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def is_initialized() -> bool:
    return _dist.global_state.client is not None


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Waits for every process on the coordination service (not a device collective). Used after compiling, so
    a process that compiles slower does not make the others' first collective time out (gloo waits ~30 s). Without
    a coordination service (several processes that JAX's runtime joined by itself) a device sync stands in."""
    if jax.process_count() <= 1:
        return
    if not is_initialized():
        multihost_utils.sync_global_devices(f"molmoact2_{name}")
        return
    _dist.global_state.client.wait_at_barrier(f"molmoact2_{name}", int(timeout_s * 1000))


def all_agree(flag: bool) -> list[bool]:
    """Every process's `flag`, in process order, on every process (a host-level allgather)."""
    if jax.process_count() <= 1:
        return [bool(flag)]
    return [bool(x) for x in np.asarray(multihost_utils.process_allgather(np.array(bool(flag)))).reshape(-1)]


def preemption_sync_available() -> bool:
    """Whether JAX's preemption sync manager runs (jax.distributed initialised). It installs its own SIGTERM notifier
    and tells every process, at the same step, that one of them was asked to stop."""
    return is_initialized() and getattr(_dist.global_state, "preemption_sync_manager", None) is not None
