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
import ml_collections
import numpy as np

from molmoact2_jax.models.layers import REMAT_POLICIES
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


# Cloud TPU sells slices by name. v5p-N counts TensorCores, 2 per chip: v5p-256 is 128 chips (4x4x8). v5e-N (the
# accelerator type v5litepod-N) and v6e-N count chips: v5e-256 is 256 chips (16x16).
LITE_GENS = ("v5e", "v6e")
LITE_SHAPES = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
LITE_SINGLE_HOST_CHIPS = 8  # v5e/v6e slices up to 8 chips are one host; larger ones have 4 chips per host
V5P_SMALL = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}  # below one 4x4x4 cube
V5P_CUBE = 4  # larger v5p slices are boxes of 4x4x4-chip cubes ...
V5P_POD_CUBES = (4, 5, 7)  # ... inside the 16x20x28-chip pod
V5P_MAX_CUBES = 96  # the largest v5p slice: 16x16x24 chips = v5p-12288
VALID_PODS = ("v5p-N with N = 2 x chips (TensorCores): v5p-8, v5p-16, v5p-32, v5p-64, or a multiple of 128 up to "
              "v5p-12288 whose 4x4x4-chip cubes form a box within the 16x20x28 pod (v5p-128 = 4x4x4, "
              "v5p-256 = 4x4x8, v5p-512 = 4x8x8, ...); v5e-N (or v5litepod-N) and v6e-N with N chips in "
              + ", ".join(map(str, LITE_SHAPES)))


def _cube_box(cubes: int):
    """The most cube-like box (a <= b <= c) of `cubes` v5p cubes that fits the pod, or None."""
    if cubes > V5P_MAX_CUBES:
        return None
    boxes = [(a, b, cubes // (a * b)) for a in range(1, cubes + 1) for b in range(a, cubes + 1)
             if cubes % (a * b) == 0 and cubes // (a * b) >= b]
    boxes = [x for x in boxes if all(d <= m for d, m in zip(x, V5P_POD_CUBES))]
    return min(boxes, key=lambda x: (x[2], -x[0])) if boxes else None


def pod_topology(pod: str) -> str:
    """A Cloud TPU slice name as sold ("v5p-256", "v5e-256", "v5litepod-16", "v6e-64") -> its topology
    ("v5p:4x4x8", "v5e:16x16", ...). ValueError, in one line listing the valid names, for anything else."""
    gen, _, n = pod.strip().lower().partition("-")
    gen = {"v5litepod": "v5e"}.get(gen, gen)
    shape = None
    if n.isdigit() and gen in LITE_GENS:
        shape = LITE_SHAPES.get(int(n))
    elif n.isdigit() and gen == "v5p" and int(n) % 2 == 0:
        chips = int(n) // 2
        shape = V5P_SMALL.get(chips)
        if shape is None and chips % V5P_CUBE ** 3 == 0:
            box = _cube_box(chips // V5P_CUBE ** 3)
            shape = tuple(V5P_CUBE * d for d in box) if box else None
    if shape is None:
        raise ValueError(f"--pod={pod!r} is not a Cloud TPU slice; valid: {VALID_PODS}")
    return f"{gen}:" + "x".join(map(str, shape))


def _parse_topology(topology: str):
    gen, _, shape = topology.partition(":")
    dims = shape.lower().split("x")
    if not all(d.isdigit() and int(d) > 0 for d in dims):
        return gen.lower(), None
    return gen.lower(), tuple(int(d) for d in dims)


def sold_name(topology: str) -> str | None:
    """The Cloud TPU name of a topology ("v5p:4x4x8" -> "v5p-256", "v5e:16x16" -> "v5e-256"), or None when it is
    not a slice Cloud TPU sells under a name."""
    gen, dims = _parse_topology(topology)
    if dims is None:
        return None
    chips = int(np.prod(dims))
    if gen in LITE_GENS and len(dims) == 2 and tuple(sorted(dims)) == LITE_SHAPES.get(chips):
        return f"{gen}-{chips}"
    if gen == "v5p" and len(dims) == 3:
        if tuple(sorted(dims)) == tuple(sorted(V5P_SMALL.get(chips, ()))):
            return f"v5p-{2 * chips}"
        cubes = sorted(d // V5P_CUBE for d in dims)
        if all(d % V5P_CUBE == 0 for d in dims) and int(np.prod(cubes)) <= V5P_MAX_CUBES and \
                all(c <= m for c, m in zip(cubes, V5P_POD_CUBES)):
            return f"v5p-{2 * chips}"
    return None


def topology_devices(topology: str, num_slices: int = 1):
    """(devices, Chip) of a TPU topology such as "v5p:4x4x8" or "v5e:16x16", described by libtpu (no hardware).
    Each device's `process_index` is its host: 4 chips per host, but one host for v5e/v6e slices of up to 8 chips
    (v5e-8, v6e-8), as Cloud TPU builds them."""
    gen = topology.split(":", 1)[0].lower()
    if gen not in TPU_CHIPS or ":" not in topology:
        raise ValueError(f"--topology={topology!r}: expected GEN:SHAPE with GEN one of {sorted(TPU_CHIPS)} "
                         f"(e.g. v5p:4x4x8, v5e:16x16), or give --pod=<Cloud TPU name> (e.g. v5p-256)")
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
    kwargs = {}
    _, dims = _parse_topology(topology)
    if gen in LITE_GENS and dims and len(dims) == 2 and int(np.prod(dims)) <= LITE_SINGLE_HOST_CHIPS:
        kwargs["chips_per_host_bounds"] = (*dims, 1)  # libtpu's default is 2x2 chips per host
    try:
        desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", num_slices=int(num_slices),
                                            **kwargs)
    except Exception as e:  # noqa: BLE001 - libtpu raises runtime errors for shapes it does not know
        raise ValueError(f"--topology={topology!r}: libtpu cannot describe it ({str(e).splitlines()[0][:200]})") \
            from None
    return list(desc.devices), TPU_CHIPS[gen]


def num_hosts(devices) -> int:
    """Hosts (processes) that drive `devices`: each TPU device's process_index names its host."""
    return len({d.process_index for d in devices})


def pod_label(topology: str, num_slices: int, devices) -> str:
    """The pod as sold, e.g. "v5p-256 (v5p:4x4x8, 128 chips, 32 hosts)" or "2 x v5e-256 (v5e:16x16 x 2 slices,
    512 chips, 128 hosts)"; a topology Cloud TPU does not sell by name is shown as itself."""
    name, slices = sold_name(topology), int(num_slices)
    topo = topology + (f" x {slices} slices" if slices > 1 else "")
    hosts = num_hosts(devices)
    facts = f"{len(devices)} chips, {hosts} host{'s' if hosts > 1 else ''}"
    if name is None:
        return f"{topo} ({facts})"
    return f"{f'{slices} x ' if slices > 1 else ''}{name} ({topo}, {facts})"


def check_host_batch(cfg, devices, pod: str) -> int:
    """The trainer's per-process batch checks (trainer.validate_config) against the pod's real host count, which a
    single compiling process (jax.process_count() == 1) cannot see. Returns the per-host batch."""
    gb, hosts = int(cfg.data.global_batch_size), num_hosts(devices)
    if gb % hosts:
        raise ValueError(f"config.data.global_batch_size={gb} is not divisible by the {hosts} hosts of {pod}: "
                         f"each host feeds global_batch_size / hosts rows")
    accum = int(cfg.trainer.grad_accum_steps)
    if (gb // hosts) % accum:
        raise ValueError(f"config.trainer.grad_accum_steps={accum} does not divide the per-host batch {gb // hosts} "
                         f"(config.data.global_batch_size={gb} over the {hosts} hosts of {pod})")
    return gb // hosts


def cpu_chip(num_devices: int) -> Chip:
    """Fake CPU devices share the host's memory; their peak is unknown (no step-time floor)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Chip("CPU (fake devices)", int(total // max(num_devices, 1)), 0.0)


def example_batch(cfg) -> dict:
    """A global batch with the recipe's shapes (data.global_batch_size, data.seq_len, data.max_cameras cameras at
    model.vit.image_size): the model's fake batch with pixels and actions abstract and token ids / masks concrete,
    laid out like a full robot row (every token valid, each camera's image tokens in one block)."""
    d = cfg.data
    for field, value in (("data.seq_len", d.seq_len),
                         ("model.action_expert.max_action_horizon", cfg.model.action_expert.max_action_horizon)):
        if not int(value):   # 0: the trainer sizes it from the data (configs/common.py); there is none here
            raise ValueError(f"config.{field}=0 means sized from the data when training, and a compile reads no "
                             f"data: set --config.{field}=N (a training run logs the value it chose)")
    b, t, n_cam = int(d.global_batch_size), int(d.seq_len), int(d.max_cameras)
    try:
        return MolmoAct2(cfg.model).fake_batch(b, t, n_cam, training=True, abstract_arrays=True)
    except ValueError as e:
        raise ValueError(f"config.data.seq_len: {e}") from None


def compile_report(cfg, devices, chip: Chip, topology: str, pod: str | None = None) -> dict:
    """Lowers and compiles the train step of `cfg` on `devices`; the report of molmoact2-compile. `pod` names the
    target as sold (pod_label; default `topology`). The batch is first checked against the pod's hosts
    (check_host_batch: ValueError). A compile the chip's memory cannot hold comes back with fits=False and the
    compiler's message."""
    pod = pod or topology
    per_host = check_host_batch(cfg, devices, pod)
    batch = example_batch(cfg)
    setup = trainer.Setup(cfg, batch, devices=devices)
    flops = setup.step_flops(batch)
    report = dict(topology=topology, pod=pod, num_devices=len(devices), num_hosts=num_hosts(devices), chip=chip.name,
                  global_batch_size=int(cfg.data.global_batch_size), per_host_batch=per_host,
                  grad_accum_steps=int(cfg.trainer.grad_accum_steps),
                  mesh={k: int(v) for k, v in setup.mesh.shape.items()},
                  attention=setup.attention_impl(), attention_impl=str(cfg.model.attention_impl),
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
    mem = memory_report(compiled, peak_is_live=devices[0].platform != "cpu")
    report["bytes_per_device"] = mem
    report["fits"] = bool(mem) and mem["needed"] <= chip.hbm_bytes
    if not report["fits"]:
        report["largest_buffers"] = largest_buffers(compiled.as_text())
    return report


def remat_menu(cfg, devices, chip: Chip, topology: str, pod: str | None = None, policies=None) -> dict:
    """compile_report of `cfg` under each remat policy of `policies` (default: all of layers.REMAT_POLICIES), one
    compile each. A policy the backend cannot compile (host offloading on XLA:CPU) gets its error's first line
    instead of a report. {"pod", "policies": {name: report or {"error": line}}, "fits": the recipe's policy fits}."""
    policies = list(REMAT_POLICIES) if policies is None else list(policies)
    unknown = [p for p in policies if p not in REMAT_POLICIES]
    if unknown:
        raise ValueError(f"--remat-menu: unknown policies {unknown}; expected some of {list(REMAT_POLICIES)}")
    rows = {}
    for policy in policies:
        c = ml_collections.ConfigDict(cfg.to_dict())
        c.model.remat_policy = policy
        try:
            rows[policy] = compile_report(c, devices, chip, topology, pod)
        except Exception as e:  # noqa: BLE001 - e.g. "pinned_host" memory is not on this backend
            if isinstance(e, ValueError) and "config." in str(e):
                raise
            rows[policy] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"}
    own = rows.get(cfg.model.remat_policy, {})
    return {"pod": pod or topology, "recipe_policy": cfg.model.remat_policy, "policies": rows,
            "fits": bool(own.get("fits"))}


def format_menu(menu: dict) -> str:
    """remat_menu's dict as a table: one row per policy."""
    lines = [f"remat policies on {menu['pod']} (the recipe's: {menu['recipe_policy']})",
             f"{'policy':<18} {'fits':<5} {'memory per chip':>16} {'by':<6} {'hardware FLOPs':>16} {'floor':>11} "
             f"{'compile':>8}"]
    for name, r in menu["policies"].items():
        if "error" in r:
            lines.append(f"{name:<18} {'-':<5} not compiled here: {r['error']}")
            continue
        b = r.get("bytes_per_device") or {}
        mem = (f"{b['needed'] / GIB:.2f} GiB" if b['needed'] >= GIB else f"{b['needed'] / 2 ** 20:.1f} MiB") if b \
            else "> HBM"
        floor = f"{r['step_time_floor_seconds'] * 1e3:.3f} ms" if r.get("step_time_floor_seconds") else ""
        lines.append(f"{name:<18} {'yes' if r['fits'] else 'NO':<5} {mem:>16} {b.get('needed_by', ''):<6} "
                     f"{_si(r['hardware_flops_per_step'], 'FLOP'):>16} {floor:>11} {r['compile_seconds']:>7.1f}s")
    return "\n".join(lines)


def _gib(x) -> str:
    return f"{x / GIB:.2f} GiB"


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def format_report(r: dict) -> str:
    """compile_report's dict as the table `molmoact2-compile` prints (the largest buffers when it does not fit)."""
    lines = [f"pod              {r.get('pod', r['topology'])}, {r['chip']}",
             f"batch            global {r['global_batch_size']}, per host {r['per_host_batch']} "
             f"({r['num_hosts']} host{'s' if r['num_hosts'] > 1 else ''}, grad_accum_steps {r['grad_accum_steps']})",
             "mesh             " + " x ".join(f"{k}={v}" for k, v in r["mesh"].items()),
             f"attention        {r['attention']} (config model.attention_impl={r['attention_impl']})",
             f"parameters       {r['num_params'] / 1e9:.3f} B" if r["num_params"] >= 1e8 else
             f"parameters       {r['num_params'] / 1e6:.3f} M",
             f"compile          {r['compile_seconds']:.1f} s"]
    b = r.get("bytes_per_device") or {}
    if b:
        lines.append("memory per device: " + ", ".join(f"{k} {_gib(b[k])}" for k in ("argument", "output", "alias",
                                                                                     "temp", "total"))
                     + (f"; peak {_gib(b['peak'])} (the compiler's)" if b.get("needed_by") == "peak" else
                        "; no live peak from this backend"))
    decided = ""
    if b:
        decided = (f" (by the peak, {_gib(b['needed'])})" if b.get("needed_by") == "peak" else
                   f" (by the total, {_gib(b['needed'])}: an upper bound; this backend gives no live peak)")
    lines.append(f"HBM per device   {_gib(r['hbm_bytes_per_device'])}: {'fits' if r['fits'] else 'DOES NOT FIT'}"
                 + decided)
    lines.append(f"FLOPs per step   model {_si(r['model_flops_per_step'], 'FLOP')}, "
                 f"hardware {_si(r['hardware_flops_per_step'], 'FLOP')} (incl. remat recompute)")
    if r.get("step_time_floor_seconds"):
        lines.append(f"step-time floor  {r['step_time_floor_seconds'] * 1e3:.2f} ms at the chip's bf16 peak "
                     f"(hardware FLOPs / devices / peak)")
    if not r["fits"]:
        if r.get("compiler_message"):
            lines.append("compiler: " + r["compiler_message"][:3000])
        for buf in r.get("largest_buffers", []):
            lines.append(f"  {_gib(buf['bytes']):>12}  {buf['shape']:<32} {buf['op']:<14} {buf['source'][:90]}")
        lines.append("change config.mesh.*, config.model.remat_policy or config.data.global_batch_size "
                     "(with config.trainer.grad_accum_steps)")
    return "\n".join(lines)
