"""`molmoact2-convert`: checkpoint conversion between Orbax params checkpoints and Hugging Face folders (local
folders or `gs://` URIs).

Bad input (a missing folder or asset, an incomplete checkpoint, an output folder that cannot be written) is one line
`molmoact2-convert: error: ...` on stderr and exit code 2, before anything is written."""
from __future__ import annotations

import sys

import numpy as np

from molmoact2_jax.cli.common import CommandParser, fail

PROG = "molmoact2-convert"
EXAMPLES = (
    "molmoact2-convert export-hf /tmp/ft hf_export/              # a run directory: its newest complete step",
    "molmoact2-convert export-hf gs://bucket/run/checkpoints/2000 gs://bucket/hf --dtype bfloat16",
    "molmoact2-convert import-hf hf_export/ ckpt/",
    "molmoact2-convert import-molmo2 Molmo2-4B/ molmo2_ckpt/",
)


def build_parser() -> CommandParser:
    parser = CommandParser(prog=PROG, description=__doc__, examples=EXAMPLES)
    sub = parser.add_subparsers(dest="command", required=True)
    src_hf = "source Hugging Face folder (config.json, *.safetensors, tokenizer files)"
    ckpt_out = "params checkpoint folder to write (params/ + model_config.json)"
    ckpt_in = ("params checkpoint folder (or a trainer checkpoint step folder, or a run directory: its newest "
               "complete step) to read")
    hf_out = "Hugging Face folder to write"
    dtype = "dtype of the written tensors (default: float32)"
    no_progress = "no progress bar on stderr"
    p = sub.add_parser("import-molmo2", help="transformers Molmo2 folder -> Orbax params checkpoint (backbone)",
                       examples=["molmoact2-convert import-molmo2 Molmo2-4B/ molmo2_ckpt/"])
    p.add_argument("src_hf_dir", help=src_hf)
    p.add_argument("ckpt_dir", help=ckpt_out)
    p = sub.add_parser("export-molmo2", help="Orbax params checkpoint -> transformers Molmo2 folder (backbone)",
                       examples=["molmoact2-convert export-molmo2 molmo2_ckpt/ Molmo2-export/ --dtype bfloat16"])
    p.add_argument("ckpt_dir", help=ckpt_in)
    p.add_argument("out_hf_dir", help=hf_out)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help=dtype)
    p = sub.add_parser("import-hf", help="Hugging Face MolmoAct2 folder -> Orbax params checkpoint (+ assets)",
                       examples=["molmoact2-convert import-hf hf_export/ ckpt/"])
    p.add_argument("src_hf_dir", help=src_hf + "; its other files are kept in the checkpoint's assets/")
    p.add_argument("ckpt_dir", help=ckpt_out)
    p.add_argument("--no-progress", action="store_true", help=no_progress)
    p = sub.add_parser("export-hf", help="Orbax params checkpoint -> Hugging Face MolmoAct2 folder",
                       examples=["molmoact2-convert export-hf /tmp/ft hf_export/",
                                 "molmoact2-convert export-hf ckpt/ hf_export/ --norm-stats shards/norm_stats.json "
                                 "--tokenizer shards/tokenizer.json"])
    p.add_argument("ckpt_dir", help=ckpt_in + "; its assets/ are copied into the export")
    p.add_argument("out_hf_dir", help=hf_out + " (must not already hold safetensors files)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help=dtype)
    p.add_argument("--max-shard-bytes", type=int, default=5 * 1024 ** 3,
                   help="largest safetensors shard in bytes (default: 5 GiB = %(default)s)")
    p.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                   help="for a trainer step directory: its EMA weights (auto: when the run kept them) or the raw "
                        "trained params")
    p.add_argument("--norm-stats", default=None,
                   help="norm_stats.json to export (default: the checkpoint's; required when it has none)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json / tokenizer.model to export (default: the checkpoint's; required when it has "
                        "none)")
    p.add_argument("--openfast", default=None,
                   help="OpenFAST action tokenizer folder to export (default: the checkpoint's; required for a "
                        "discrete-only model that has none)")
    p.add_argument("--no-progress", action="store_true", help=no_progress)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    from molmoact2_jax.convert import molmo2  # lazy: imports jax; --help must not
    try:
        if args.command == "import-molmo2":
            _, cfg = molmo2.import_molmo2(args.src_hf_dir, args.ckpt_dir)
            print(f"imported {args.src_hf_dir} -> {args.ckpt_dir} (LLM {cfg.llm.num_layers} layers, "
                  f"width {cfg.llm.hidden_size}, vocab {cfg.llm.vocab_size})")
        elif args.command == "export-molmo2":
            dtype = np.float32 if args.dtype == "float32" else _bf16()
            s = molmo2.export_molmo2(args.ckpt_dir, args.out_hf_dir, dtype=dtype)
            print(f"exported {s['tensors']} tensors, {s['bytes'] / 1e6:.1f} MB in {s['shards']} shard(s) "
                  f"({args.dtype}) -> {args.out_hf_dir}")
        elif args.command == "import-hf":
            from molmoact2_jax.convert import molmoact2_hf  # lazy: imports jax; --help must not
            s = molmoact2_hf.import_hf(args.src_hf_dir, args.ckpt_dir, progress=not args.no_progress)
            print(molmoact2_hf.format_summary("import", s, args.src_hf_dir, args.ckpt_dir))
        elif args.command == "export-hf":
            from molmoact2_jax.convert import molmoact2_hf  # lazy: imports jax; --help must not
            s = molmoact2_hf.export_hf(args.ckpt_dir, args.out_hf_dir, dtype=args.dtype,
                                       max_shard_bytes=args.max_shard_bytes, progress=not args.no_progress,
                                       weights=args.weights, norm_stats=args.norm_stats, tokenizer=args.tokenizer,
                                       openfast=args.openfast)
            print(molmoact2_hf.format_summary("export", s, args.ckpt_dir, args.out_hf_dir))
    except (OSError, KeyError, ValueError) as e:   # OSError: a missing file, bucket or permission
        msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
        return fail(PROG, msg.splitlines()[0] if msg else type(e).__name__)
    return 0


def _bf16():
    import ml_dtypes  # lazy: ~0.5 s (jax's dtype library), which --help must not pay
    return ml_dtypes.bfloat16


if __name__ == "__main__":
    sys.exit(main())
