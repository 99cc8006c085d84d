"""`molmoact2-openfast`: fit, encode and decode with the OpenFAST action tokenizer.

`fit --chunks` takes action chunks in the space the model predicts them in. Converted shards hold raw per-frame
states and actions, not chunks: fit on them with `molmoact2-data openfast SHARD_DIR`, which builds the chunks and
normalises them as training does. Errors are one line `molmoact2-openfast: error: ...`, exit 2."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from molmoact2_jax.cli.common import CommandParser, fail
from molmoact2_jax.tokenizers.openfast import OpenFAST
from molmoact2_jax.tokenizers.openfast_files import chunk_files, fit_on_files, iter_chunk_arrays

PROG = "molmoact2-openfast"
EXAMPLES = (
    "molmoact2-openfast fit --chunks chunks/ --out openfast/ --vocab-size 1024",
    "molmoact2-openfast encode --tokenizer openfast/ --chunks chunks/val.npz --show 3",
    'molmoact2-openfast decode --tokenizer openfast/ --tokens "12,7,300" --horizon 30 --action-dim 7',
)


def cmd_fit(args) -> None:
    tok, n = fit_on_files(chunk_files(Path(args.chunks)), vocab_size=args.vocab_size, scale=args.scale,
                          time_horizon=args.time_horizon, action_dim=args.action_dim)
    out = tok.save(args.out)
    print(f"wrote {out}: {n} chunks, min_token {tok.min_token}, BPE vocab {tok.bpe_vocab_size}")


def cmd_encode(args) -> None:
    tok = OpenFAST.load(args.tokenizer)
    lengths, raw = [], []
    shown = 0
    for label, arr in iter_chunk_arrays(chunk_files(Path(args.chunks))):
        batch = arr[None] if arr.ndim == 2 else arr
        try:
            ids = tok.encode(batch)
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from None
        for j, seq in enumerate(ids):
            if shown < args.show:
                print(f"{label}[{j}] ({len(seq)} tokens): {','.join(map(str, seq))}")
                shown += 1
        lengths += [len(s) for s in ids]
        raw += [batch.shape[1] * batch.shape[2]] * len(ids)
    n = np.asarray(lengths)
    print(f"chunks {len(n)}  tokens/chunk mean {n.mean():.2f} min {n.min()} max {n.max()}  "
          f"naive per-dim tokens/chunk {np.mean(raw):.1f}  compression {np.sum(raw) / max(n.sum(), 1):.2f}x")


def cmd_decode(args) -> int:
    try:
        ids = [int(t) for t in args.tokens.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise ValueError(f"--tokens: expected comma-separated integers, got {args.tokens!r}") from None
    tok = OpenFAST.load(args.tokenizer)
    actions, valid = tok.decode([ids], args.horizon, args.action_dim)
    np.set_printoptions(precision=4, suppress=True, linewidth=160)
    print(actions[0])
    print(f"valid: {bool(valid[0])}")
    return 0 if valid[0] else 1


def build_parser() -> CommandParser:
    parser = CommandParser(prog=PROG, description=__doc__, examples=EXAMPLES)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="train a tokenizer on action chunks and write the released folder layout",
                       examples=[EXAMPLES[0], "molmoact2-data openfast SHARD_DIR     # from converted shards"])
    p.add_argument("--chunks", required=True,
                   help=".npz/.npy file or folder of them; arrays (T, D) or (N, T, D) in model space (for converted "
                        "shards use molmoact2-data openfast SHARD_DIR)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size (default: %(default)s)")
    p.add_argument("--scale", type=float, default=10,
                   help="DCT coefficients are multiplied by this before rounding: larger keeps more detail and "
                        "gives more tokens per chunk (default: %(default)s)")
    p.add_argument("--time-horizon", type=int, default=None, help="default horizon stored for decoding")
    p.add_argument("--action-dim", type=int, default=None, help="default action dim stored for decoding")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("encode", help="print BPE ids and tokens-per-chunk statistics", examples=[EXAMPLES[1]])
    p.add_argument("--tokenizer", required=True, help="tokenizer folder")
    p.add_argument("--chunks", required=True, help=".npz/.npy file or folder of them")
    p.add_argument("--show", type=int, default=10, help="how many chunks' ids to print")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode comma-separated BPE ids to an action chunk (exit 1 if invalid)",
                       examples=[EXAMPLES[2]])
    p.add_argument("--tokenizer", required=True, help="tokenizer folder")
    p.add_argument("--tokens", required=True, help='e.g. "12,7,300"')
    p.add_argument("--horizon", type=int, required=True, help="time steps of the decoded chunk")
    p.add_argument("--action-dim", type=int, required=True, help="action dimensions of the decoded chunk")
    p.set_defaults(func=cmd_decode)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "fit" and float(args.scale).is_integer():
        args.scale = int(args.scale)  # keep processor_config's scale an int like the release (10, not 10.0)
    try:
        code = args.func(args)
    except (ValueError, TypeError, OSError) as e:
        return fail(PROG, e)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
