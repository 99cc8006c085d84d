"""The XLA:CPU flags `molmoact2-train` runs with: added to XLA_FLAGS at start-up, before the CPU backend reads it,
so several fake CPU devices in one process (launch/local_multiprocess.sh, `--xla_force_host_platform_device_count`)
train without deadlocking. Flags for the CPU backend only; TPU and GPU programs do not read them.

Why: XLA:CPU's concurrency-optimized scheduler puts collectives with no data dependence between them (an FSDP
all-gather of the layer scan and a tensor-parallel collective-permute, say) side by side, and its thunk executor then
runs whichever is ready first, which differs from device to device. Each collective waits for all 8 devices, so
with 7 devices in the collective-permute and 1 in the all-gather the step never finishes (seen with jax 0.10.2 on
a data=2 x fsdp=2 x tensor=2 mesh: every fresh run stuck at its first step). The default scheduler keeps one order.
A flag the user already put in XLA_FLAGS wins (same name, their value); MOLMOACT2_CPU_FLAGS=0 adds none.
"""
from __future__ import annotations

import os

from molmoact2_jax.sharding.flag_bundle import enabled, missing

ENV = "XLA_FLAGS"
OPT_OUT = "MOLMOACT2_CPU_FLAGS"   # "0": leave XLA_FLAGS as the user set it

CPU_FLAGS = (
    ("--xla_cpu_enable_concurrency_optimized_scheduler=false",
     "one order of collectives on every device of the process (the concurrency-optimized order can deadlock)"),
)


def merged(existing: str = "") -> str:
    """`existing` XLA_FLAGS with the bundle's flags it does not set already (the user's value wins)."""
    return " ".join([*existing.split(), *missing(existing, CPU_FLAGS)])


def apply(environ=None) -> str:
    """Puts the bundle into XLA_FLAGS of `environ` (default os.environ) unless MOLMOACT2_CPU_FLAGS=0; returns the
    value XLA will read. Call before anything initializes a JAX backend."""
    environ = os.environ if environ is None else environ
    if enabled(environ, OPT_OUT):
        environ[ENV] = merged(environ.get(ENV, ""))
    return environ.get(ENV, "")
