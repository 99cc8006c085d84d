"""Ahead-of-time compilation of the train step for devices this host does not have (MaxText's train_compile).

`molmoact2-compile` builds the trainer's own `Setup` on the devices of a TPU topology (libtpu describes them without
hardware) or on fake CPU devices, lowers and compiles the real train step for a batch of the recipe's shapes, and
reports per-device memory, whether it fits the chip, and the analytic FLOPs of a step.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np

from molmoact2_jax.models.molmoact2 import MolmoAct2
from molmoact2_jax.training import trainer
from molmoact2_jax.training.memory import largest_buffers, memory_report


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int
    peak_bf16_flops: float  # per chip, dense


GIB = 1024 ** 3
# Public per-chip figures (Cloud TPU system architecture pages).
TPU_CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12),
}


def topology_devices(topology: str, num_slices: int = 1):
    """(devices, Chip) of a TPU topology such as "v5p:4x4x8" or "v5e:16x16", described by libtpu (no hardware)."""
    gen = topology.split(":", 1)[0].lower()
    if gen not in TPU_CHIPS or ":" not in topology:
        raise ValueError(f"--topology={topology!r}: expected GEN:SHAPE with GEN one of {sorted(TPU_CHIPS)} "
                         f"(e.g. v5p:4x4x8, v5e:16x16)")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise SystemExit("molmoact2-compile --topology needs libtpu: pip install 'molmoact2-jax[tpu-aot]'") from None
    # Only a description of the chips is needed: let several such processes (parallel tests, a table of pods)
    # load libtpu at once instead of failing on its single-process lock file.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies  # lazy: after ALLOW_MULTIPLE_LIBTPU_LOAD is set
    if int(num_slices) < 1:
        raise ValueError(f"--num-slices={num_slices}: must be >= 1")
    try:
        desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", num_slices=int(num_slices))
    except Exception as e:  # noqa: BLE001 - libtpu raises runtime errors for shapes it does not know
        raise ValueError(f"--topology={topology!r}: libtpu cannot describe it ({str(e).splitlines()[0][:200]})") \
            from None
    return list(desc.devices), TPU_CHIPS[gen]


def cpu_chip(num_devices: int) -> Chip:
    """Fake CPU devices share the host's memory; their peak is unknown (no step-time floor)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Chip("CPU (fake devices)", int(total // max(num_devices, 1)), 0.0)


def example_batch(cfg) -> dict:
    """A global batch with the recipe's shapes (data.global_batch_size, data.seq_len, data.max_cameras cameras at
    model.vit.image_size): the model's fake batch with pixels and actions abstract and token ids / masks concrete,
    laid out like a full robot row (every token valid, each camera's image tokens in one block)."""
    d = cfg.data
    b, t, n_cam = int(d.global_batch_size), int(d.seq_len), int(d.get("max_cameras", 1))
    try:
        return MolmoAct2(cfg.model).fake_batch(b, t, n_cam, training=True, abstract_arrays=True)
    except ValueError as e:
        raise ValueError(f"config.data.seq_len: {e}") from None


def compile_report(cfg, devices, chip: Chip, topology: str) -> dict:
    """Lowers and compiles the train step of `cfg` on `devices`; the report of molmoact2-compile. A compile the
    chip's memory cannot hold comes back with fits=False and the compiler's message."""
    batch = example_batch(cfg)
    setup = trainer.Setup(cfg, batch, devices=devices)
    flops = setup.step_flops(batch)
    report = dict(topology=topology, num_devices=len(devices), chip=chip.name,
                  mesh={k: int(v) for k, v in setup.mesh.shape.items()},
                  hbm_bytes_per_device=int(chip.hbm_bytes), model_flops_per_step=float(flops["model"]),
                  hardware_flops_per_step=float(flops["hardware"]),
                  step_time_floor_seconds=(flops["hardware"] / len(devices) / chip.peak_bf16_flops
                                           if chip.peak_bf16_flops else None),
                  num_params=int(sum(np.prod(x.shape) for x in jax.tree.leaves(setup.abstract_state.params))))
    t0 = time.perf_counter()
    try:
        with setup.context():
            compiled = setup.train_step.lower(setup.abstract_sharded_state(), setup.abstract_sharded_batch()).compile()
    except Exception as e:  # noqa: BLE001 - the TPU compiler refuses programs that exceed HBM
        if "RESOURCE_EXHAUSTED" not in str(e) and "Ran out of memory" not in str(e):
            raise
        report.update(compile_seconds=time.perf_counter() - t0, fits=False, bytes_per_device={},
                      compiler_message=str(e)[:6000], largest_buffers=[])
        return report
    report["compile_seconds"] = time.perf_counter() - t0
    mem = memory_report(compiled)
    report["bytes_per_device"] = mem
    report["fits"] = bool(mem) and mem["total"] <= chip.hbm_bytes
    if not report["fits"]:
        report["largest_buffers"] = largest_buffers(compiled.as_text())
    return report

