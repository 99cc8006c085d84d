"""`molmoact2-compile --config=RECIPE[:variant] [--config.<field>=VALUE ...]
((--pod=v5p-256 | --topology=v5p:4x4x8) [--num-slices=N] | --devices=cpu:N) [--out=report.json]`

Answers "does this recipe fit that pod, and how fast could it go" from a CPU host: the trainer's own Setup is built
on the target's devices (a TPU pod described by libtpu, no hardware needed, or N fake CPU devices), and the real
train step is lowered and compiled for a batch of the recipe's shapes. `--pod` takes the Cloud TPU name as sold:
v5p-N counts TensorCores (2 per chip, v5p-256 = v5p:4x4x8 = 128 chips), v5e-N / v6e-N count chips (v5e-256 =
v5e:16x16). The global batch is first checked against the pod's real host count (exit 2). Prints a table; `--out`
writes the same as JSON. Exit code 3 when the step does not fit the chip's memory (the largest buffers are named).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from molmoact2_jax.sharding import tpu_flags
from molmoact2_jax.cli.common import CommandParser, add_config_flag, fail, parse_with_config

PROG = "molmoact2-compile"
DEFAULT_RECIPE = "pretrain:tiny"
EXIT_DOES_NOT_FIT = 3
EXAMPLES = (
    "molmoact2-compile --config=posttrain --pod=v5p-256 --out=report.json     # = --topology=v5p:4x4x8",
    "molmoact2-compile --config=posttrain --pod=v5e-256 --num-slices=2 --config.mesh.slice=2",
    "molmoact2-compile --config=posttrain:tiny --devices=cpu:8 --config.mesh.data=1 --config.mesh.fsdp=8",
    "molmoact2-compile --config=posttrain --pod=v5p-128 --remat-menu    # every remat policy: memory and FLOPs",
)


def _cpu_devices(value: str) -> int:
    kind, _, n = value.partition(":")
    if kind != "cpu" or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"expected cpu:N (N >= 1), got {value!r}")
    return int(n)


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return n


def build_parser() -> CommandParser:
    p = CommandParser(prog=PROG, description=__doc__, examples=EXAMPLES)
    add_config_flag(p, DEFAULT_RECIPE)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--pod", default=None,
                        help="target TPU slice by its Cloud TPU name: v5p-N counts TensorCores (v5p-256 = 128 chips, "
                             "v5p:4x4x8; v5p-128 = 64 chips), v5e-N (v5litepod-N) and v6e-N count chips (v5e-256 = "
                             "v5e:16x16)")
    target.add_argument("--topology", default=None,
                        help="target TPU pod as GEN:SHAPE in chips, e.g. v5p:4x4x8, v5e:16x16, v6e:16x16 (described "
                             "by libtpu; no TPU needed)")
    target.add_argument("--devices", type=_cpu_devices, default=None, metavar="cpu:N",
                        help="compile for N fake CPU devices on this host instead of a TPU pod")
    p.add_argument("--num-slices", type=_positive, default=1,
                   help="with --pod or --topology: number of such slices joined over DCN (multi-slice; set "
                        "config.mesh.slice to match; default: 1)")
    p.add_argument("--remat-menu", nargs="?", const="all", default=None, metavar="POLICY,...",
                   help="compile once per remat policy (config.model.remat_policy: none, full, dots, dots_no_batch, "
                        "minimal, save_qkv_proj, save_out_proj, save_qkv_out_proj, minimal_offloaded; all of them, "
                        "or the comma-separated ones given) and print what each costs: memory per chip, whether it "
                        "fits, hardware FLOPs with the recompute, step-time floor")
    p.add_argument("--out", default=None, help="also write the report as JSON to this file (its folder must exist)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args, cfg = parse_with_config(parser, argv, DEFAULT_RECIPE)
    if args.devices and args.num_slices != 1:
        parser.error("--num-slices applies to --pod or --topology, not --devices")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        return fail(PROG, f"--out={args.out}: no such directory")
    # the flags the trainer runs with (before libtpu starts), so the compiled program is the one the pod runs
    libtpu_args = "" if args.devices else tpu_flags.apply()
    if args.devices:   # before jax is imported: the fake CPU devices are an XLA flag
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}").strip()
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax  # lazy: after XLA_FLAGS / JAX_PLATFORMS are set from --devices
    from molmoact2_jax.training import aot  # lazy: imports jax, after XLA_FLAGS is set
    try:
        if args.devices:
            n = args.devices
            devices, chip, name = jax.devices("cpu")[:n], aot.cpu_chip(n), f"cpu:{n}"
            label = f"{name} ({n} fake CPU devices, 1 host)"
        else:
            topology = aot.pod_topology(args.pod) if args.pod else args.topology
            devices, chip = aot.topology_devices(topology, args.num_slices)
            name = topology + (f" x {args.num_slices} slices" if args.num_slices > 1 else "")
            label = aot.pod_label(topology, args.num_slices, devices)
        if args.remat_menu:
            report = aot.remat_menu(cfg, devices, chip, name, pod=label,
                                    policies=None if args.remat_menu == "all" else args.remat_menu.split(","))
        else:
            report = aot.compile_report(cfg, devices, chip, name, pod=label)
        report["libtpu_init_args"] = libtpu_args
    except ValueError as e:
        return fail(PROG, e)
    print(aot.format_menu(report) if args.remat_menu else aot.format_report(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["fits"] or args.remat_menu else EXIT_DOES_NOT_FIT   # a menu is a table, not a verdict


if __name__ == "__main__":
    sys.exit(main())
