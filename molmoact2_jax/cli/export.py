"""`molmoact2-export`: a checkpoint -> a folder that runs without our model code (ONNX through onnxruntime with no
JAX, or StableHLO through jax.export), and the parity gate that checks one against its checkpoint.

    molmoact2-export --checkpoint CKPT --format onnx --out DIR [--batch 1] [--norm-tag TAG ...]
    molmoact2-export --checkpoint CKPT --format stablehlo --out DIR --symbolic-batch
    molmoact2-export check DIR --checkpoint CKPT [--observations 4]

The continuous (flow) policy exports; discrete decoding and MolmoThink do not (their token loops stay in JAX).
Bad input (a missing checkpoint or asset, an unknown tag, an output folder that is not empty, an export folder with
a file missing) is one line and exit 2; `check` exits 1 when the export differs from the checkpoint by more than
the threshold. docs/export.md, "Deploy without JAX".
"""
from __future__ import annotations

import sys

from molmoact2_jax.cli.common import CommandParser, fail

PROG = "molmoact2-export"
EXAMPLES = (
    "molmoact2-export --checkpoint /tmp/ft --format onnx --out /tmp/ft_onnx",
    "molmoact2-export --checkpoint hf_export/ --format stablehlo --symbolic-batch --out /tmp/ft_shlo",
    "molmoact2-export check /tmp/ft_onnx --checkpoint /tmp/ft",
)
CHECK_EXAMPLES = ("molmoact2-export check /tmp/ft_onnx --checkpoint /tmp/ft --observations 8",)


def build_parser() -> CommandParser:
    p = CommandParser(prog=PROG, description=__doc__, examples=EXAMPLES)
    p.add_argument("--checkpoint", required=True,
                   help="params checkpoint / trainer step / HF folder, or a run directory (its newest complete step)")
    p.add_argument("--format", choices=("onnx", "stablehlo"), required=True, help="graph format of the export")
    p.add_argument("--out", required=True, help="export folder to write (must not exist, or be empty)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="compute dtype and weights of the graphs (default: fp32); bf16 for --format stablehlo (its "
                        "parity gate allows 2e-2 of the action range; ONNX exports are fp32)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="batch size the graphs take (default: %(default)s)")
    batch.add_argument("--symbolic-batch", action="store_true",
                       help="any batch size (StableHLO only): one export serves batch 1 and batch N")
    p.add_argument("--norm-tag", action="append", default=None,
                   help="a norm tag to serve (repeat for several; default: every tag of the checkpoint, which must "
                        "share camera count and horizon)")
    p.add_argument("--prompt-tokens", type=int, default=None,
                   help="prompt length the graphs take (prompts are left-padded to it; default: the longest "
                        "prompt without a task plus 64 tokens, rounded up to 16)")
    p.add_argument("--flow", choices=("step", "loop"), default="step",
                   help="flow graph: one Euler step the runtime calls num_steps times (step, the default: measured "
                        "faster with onnxruntime) or every step inside the graph (loop)")
    p.add_argument("--num-steps", type=int, default=None, help="Euler steps (default: config flow.num_steps)")
    p.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                   help="for a trainer step directory: its EMA weights (auto: when the run kept them) or the raw "
                        "trained params")
    return p


def build_check_parser() -> CommandParser:
    p = CommandParser(prog=f"{PROG} check", description="The parity gate: an export folder against its checkpoint "
                      "on random observations with fixed noise (exit 1 above the threshold).",
                      examples=CHECK_EXAMPLES)
    p.add_argument("export_dir", help="export folder (molmoact2-export --out)")
    p.add_argument("--checkpoint", required=True, help="the checkpoint the folder was exported from")
    p.add_argument("--observations", type=int, default=4, help="random observations per tag (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the observations and noise (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=None,
                   help="largest max |diff| per action dim, as a fraction of the dim's range (default by the "
                        "export's precision: 1e-4 for fp32, 2e-2 for bf16)")
    p.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                   help="for a trainer step directory: which weights the folder was exported from")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check"]:
        return _check(build_check_parser().parse_args(argv[1:]))
    args = build_parser().parse_args(argv)
    if args.batch < 1:
        return fail(PROG, f"--batch {args.batch}: expected >= 1")
    if args.symbolic_batch and args.format != "stablehlo":
        return fail(PROG, "--symbolic-batch is for --format stablehlo; ONNX exports take --batch N")
    from molmoact2_jax.export.writer import ExportError, export_policy   # lazy: imports jax; --help must not
    from molmoact2_jax.inference.policy import Policy   # lazy: imports jax; --help must not
    try:
        policy = Policy.load(args.checkpoint, weights=args.weights)
        info = export_policy(policy, args.out, args.format, norm_tags=args.norm_tag,
                             batch=None if args.symbolic_batch else args.batch, prompt_tokens=args.prompt_tokens,
                             flow_kind=args.flow, num_steps=args.num_steps, source=args.checkpoint,
                             precision=args.precision)
    except (OSError, ValueError, ExportError) as e:
        return fail(PROG, str(e).strip() or type(e).__name__)
    print(f"exported {args.checkpoint} -> {args.out} ({info['graph_format']}, tags {info['tags']}, "
          f"{info['num_cameras']} camera(s), horizon {info['horizon']}, prompt {info['prompt_tokens']} tokens, "
          f"batch {info['batch'] or 'symbolic'}, {info['num_steps']} flow steps); check it with: "
          f"{PROG} check {args.out} --checkpoint {args.checkpoint}")
    return 0


def _check(args) -> int:
    from molmoact2_jax.export.check import THRESHOLDS, compare   # lazy: imports jax
    from molmoact2_jax.inference.policy import Policy   # lazy: imports jax
    from molmoact2_jax.runtime import load_exported   # lazy: loads onnxruntime / jax by format
    try:
        exported = load_exported(args.export_dir)
        policy = Policy.load(args.checkpoint, weights=args.weights)
        threshold = THRESHOLDS[exported.export.precision] if args.threshold is None else args.threshold
        report = compare(exported, policy, args.observations, args.seed, threshold)
    except (OSError, ValueError) as e:
        return fail(f"{PROG} check", str(e).strip() or type(e).__name__)
    print(report.table())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
