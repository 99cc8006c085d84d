"""`molmoact2-compile --config=configs/<recipe>.py[:variant] [--config.<field>=...]
((--pod=v5p-256 | --topology=v5p:4x4x8) [--num-slices=N] | --devices=cpu:N) [--out=report.json]`

Answers "does this recipe fit that pod, and how fast could it go" from a CPU host: the trainer's own Setup is
built on the target's devices (a TPU pod described by libtpu, no hardware needed, or N fake CPU devices),
and the real train step is lowered and compiled for a batch of the recipe's shapes. `--pod` takes the Cloud TPU
name as sold: v5p-N counts TensorCores (2 per chip, v5p-256 = v5p:4x4x8 = 128 chips), v5e-N / v6e-N count chips
(v5e-256 = v5e:16x16). The global batch is first checked against the pod's real host count (exit 2). Prints a
table; `--out` writes the same as JSON. Exit code 3 when the step does not fit the chip's memory (the largest
buffers are named).
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from molmoact2_jax.recipes import recipe_path
from molmoact2_jax.train import list_flags_in_help  # imports no jax (XLA_FLAGS is set later, in main)

EXIT_DOES_NOT_FIT = 3


def _early_devices(argv) -> int | None:
    """--devices=cpu:N must set XLA_FLAGS before JAX is imported."""
    for i, a in enumerate(argv):
        val = a.split("=", 1)[1] if a.startswith("--devices=") else (argv[i + 1] if a == "--devices" and
                                                                       i + 1 < len(argv) else None)
        if val is not None:
            kind, _, n = val.partition(":")
            if kind != "cpu" or not n.isdigit() or int(n) < 1:
                raise SystemExit(f"molmoact2-compile: --devices={val!r}: expected cpu:N")
            return int(n)
    return None


def _gib(x) -> str:
    return f"{x / 1024 ** 3:.2f} GiB"


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def format_report(r: dict) -> str:
    lines = [f"pod              {r.get('pod', r['topology'])}, {r['chip']}",
             f"batch            global {r['global_batch_size']}, per host {r['per_host_batch']} "
             f"({r['num_hosts']} host{'s' if r['num_hosts'] > 1 else ''}, grad_accum_steps {r['grad_accum_steps']})",
             "mesh             " + " x ".join(f"{k}={v}" for k, v in r["mesh"].items()),
             f"parameters       {r['num_params'] / 1e9:.3f} B" if r["num_params"] >= 1e8 else
             f"parameters       {r['num_params'] / 1e6:.3f} M",
             f"compile          {r['compile_seconds']:.1f} s"]
    b = r.get("bytes_per_device") or {}
    if b:
        lines.append("memory per device: " + ", ".join(f"{k} {_gib(b[k])}" for k in ("argument", "output", "alias",
                                                                                     "temp", "total")))
    lines.append(f"HBM per device   {_gib(r['hbm_bytes_per_device'])}: {'fits' if r['fits'] else 'DOES NOT FIT'}")
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


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a.replace("--num-slices", "--num_slices") for a in argv]
    n_cpu = _early_devices(argv)
    if n_cpu:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={n_cpu}").strip()
        os.environ["JAX_PLATFORMS"] = "cpu"
    default = recipe_path("pretrain", "tiny")
    cfg_flag = config_flags.DEFINE_config_file(
        "config", default, "Recipe: configs/<recipe>.py with an optional :variant, as for molmoact2-train; "
        "override fields with --config.<field>=<value> (e.g. --config.mesh.fsdp=64).")
    pod = flags.DEFINE_string("pod", None, "Target TPU slice by its Cloud TPU name: v5p-N counts TensorCores "
                              "(v5p-256 = 128 chips, v5p:4x4x8; v5p-128 = 64 chips), v5e-N (v5litepod-N) and v6e-N "
                              "count chips (v5e-256 = v5e:16x16). Give one of --pod, --topology, --devices.")
    topo = flags.DEFINE_string("topology", None, "Target TPU pod as GEN:SHAPE in chips, e.g. v5p:4x4x8, v5e:16x16, "
                               "v6e:16x16 (described by libtpu; no TPU needed). Give one of --pod, --topology, "
                               "--devices.")
    slices = flags.DEFINE_integer("num_slices", 1, "With --pod or --topology: number of such slices joined over DCN "
                                  "(multi-slice; set config.mesh.slice to match). Also spelt --num-slices.")
    devices_flag = flags.DEFINE_string("devices", None, "cpu:N: compile for N fake CPU devices on this host instead "
                                       "of a TPU pod. Give one of --pod, --topology, --devices.")
    out = flags.DEFINE_string("out", None, "Also write the report as JSON to this file (its folder must exist).")
    list_flags_in_help([cfg_flag, pod, topo, slices, devices_flag, out], __doc__)

    def run(_):
        import jax  # lazy: after XLA_FLAGS / JAX_PLATFORMS are set from --devices
        from molmoact2_jax.training import aot  # lazy: imports jax, after XLA_FLAGS is set
        if sum(map(bool, (pod.value, topo.value, n_cpu))) != 1:
            print("molmoact2-compile: give exactly one of --pod (e.g. v5p-256), --topology (e.g. v5p:4x4x8) or "
                  "--devices=cpu:N", file=sys.stderr)
            return 2
        if out.value and not os.path.isdir(os.path.dirname(os.path.abspath(out.value))):
            print(f"molmoact2-compile: error: --out={out.value}: no such directory", file=sys.stderr)
            return 2
        try:
            if pod.value or topo.value:
                topology = aot.pod_topology(pod.value) if pod.value else topo.value
                devices, chip = aot.topology_devices(topology, slices.value)
                name = topology + (f" x {slices.value} slices" if slices.value > 1 else "")
                label = aot.pod_label(topology, slices.value, devices)
            else:
                devices, chip, name = jax.devices("cpu")[:n_cpu], aot.cpu_chip(n_cpu), f"cpu:{n_cpu}"
                label = f"{name} ({n_cpu} fake CPU devices, 1 host)"
            report = aot.compile_report(cfg_flag.value, devices, chip, name, pod=label)
        except ValueError as e:
            print(f"molmoact2-compile: error: {e}", file=sys.stderr)
            return 2
        print(format_report(report))
        if out.value:
            with open(out.value, "w") as f:
                json.dump(report, f, indent=2)
        return 0 if report["fits"] else EXIT_DOES_NOT_FIT

    app.run(lambda a: sys.exit(run(a)), argv=[sys.argv[0]] + argv)


if __name__ == "__main__":
    main()
