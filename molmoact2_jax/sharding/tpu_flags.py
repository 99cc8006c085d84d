"""The XLA flags our TPU programs are compiled with: a bundle added to LIBTPU_INIT_ARGS by `molmoact2-train` and
`molmoact2-compile` at start-up, before libtpu reads it, so every launcher (TPU VMs, GKE, xpk, a shell) trains with
the same flags and a compile on this host measures the program the pod runs.

Each flag with why (docs/run_on_tpu_pod.md, "TPU flags"). They make collectives asynchronous and let the scheduler
overlap them with compute: with FSDP every layer's weights are all-gathered before use and its gradients
reduce-scattered after, and a step waits on each unless they overlap the neighbouring layers' matmuls. None changes
a number the step computes. A flag the user already put in LIBTPU_INIT_ARGS wins over ours (same name, their
value); MOLMOACT2_TPU_FLAGS=0 adds none. libtpu refuses an unknown flag at start-up (the test compiles with these).
"""
from __future__ import annotations

import os

from molmoact2_jax.sharding.flag_bundle import enabled, missing

ENV = "LIBTPU_INIT_ARGS"
OPT_OUT = "MOLMOACT2_TPU_FLAGS"   # "0": leave LIBTPU_INIT_ARGS as the user set it

TPU_FLAGS = (
    ("--xla_tpu_enable_async_collective_fusion=true",
     "collectives run asynchronously, fused with the computation around them, instead of stopping the step"),
    ("--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
     "all-gathers (FSDP's per-layer weight gathers) take part in that fusion"),
    ("--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
     "an asynchronous collective may span several ops, so a layer's gather starts while earlier layers compute"),
    ("--xla_tpu_overlap_compute_collective_tc=true",
     "the TensorCore computes while collectives are in flight"),
    ("--xla_enable_async_all_gather=true",
     "all-gathers become start/done pairs the scheduler can move away from their use"),
    ("--xla_tpu_enable_data_parallel_all_reduce_opt=true",
     "the data-parallel gradient all-reduce (data and slice axes) is optimized as one"),
    ("--xla_tpu_data_parallel_opt_different_sized_ops=true",
     "that optimization also covers gradients of different sizes (every parameter of a layer)"),
)


def merged(existing: str = "") -> str:
    """`existing` LIBTPU_INIT_ARGS with the bundle's flags it does not set already (the user's value wins)."""
    return " ".join([*missing(existing, TPU_FLAGS), *existing.split()])


def apply(environ=None) -> str:
    """Puts the bundle into LIBTPU_INIT_ARGS of `environ` (default os.environ) unless MOLMOACT2_TPU_FLAGS=0;
    returns the value libtpu will read. Call before anything initializes the TPU backend."""
    environ = os.environ if environ is None else environ
    if enabled(environ, OPT_OUT):
        environ[ENV] = merged(environ.get(ENV, ""))
    return environ.get(ENV, "")


if __name__ == "__main__":   # for shell launchers: the value to export
    print(merged(os.environ.get(ENV, "")) if enabled(os.environ, OPT_OUT) else os.environ.get(ENV, ""))
