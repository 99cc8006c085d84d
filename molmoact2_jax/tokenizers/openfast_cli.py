"""`molmoact2-openfast`: fit, encode and decode with the OpenFAST action tokenizer.

`fit --chunks` takes action chunks in the space the model predicts them in. Converted shards hold raw per-frame
states and actions, not chunks: fit on them with `molmoact2-data openfast SHARD_DIR`, which builds the chunks and
normalises them as training does (this package imports no data pipeline, tests/test_package_graph.py).
Errors are one line `molmoact2-openfast: error: ...`, exit 2."""
from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

from molmoact2_jax.progress import progress_bar
from molmoact2_jax.tokenizers.openfast import OpenFAST

PROG = "molmoact2-openfast"
FROM_SHARDS = "molmoact2-data openfast SHARD_DIR (it builds the action chunks and normalises them as training does)"
_SIDECAR = re.compile(r"shard-\d{5}\.npz")


def _refuse_shards(path: Path) -> None:
    """A converted shard folder or one of its .npz sidecars (raw per-frame state/action in robot units) given as
    chunks: fitted as is, each array would count as one chunk and the raw units overflow the vocabulary."""
    if path.is_dir() and (path / "index.json").is_file() and any(path.glob("shard-*.npz")):
        raise ValueError(f"{path}: a converted shard folder, not action chunks; fit on it with: {FROM_SHARDS}")
    if path.is_file() and _SIDECAR.fullmatch(path.name) and (path.parent / "index.json").is_file():
        raise ValueError(f"{path}: a converted shard's sidecar (raw per-frame state and action, not action chunks); "
                         f"fit on the shards with: {FROM_SHARDS}")


def chunk_files(path: Path) -> list[Path]:
    """An .npz/.npy file, or every .npz/.npy under a folder (recursive, sorted so runs are reproducible)."""
    _refuse_shards(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".npz", ".npy") and p.is_file())
        for f in files:
            _refuse_shards(f)
        if not files:
            raise ValueError(f"{path}: no .npz or .npy files inside")
        return files
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder")
    if path.suffix not in (".npz", ".npy"):
        raise ValueError(f"{path}: expected a .npz or .npy file")
    return [path]


def iter_chunk_arrays(files: list[Path]):
    """Yield (label, array (T, D) or (N, T, D)) for every array in the files, one at a time (bounded memory)."""
    for f in files:
        try:
            loaded = np.load(f, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{f}: cannot be read as numpy data ({e})") from None
        if isinstance(loaded, np.ndarray):
            items = [(str(f), lambda a=loaded: a)]
        else:
            items = [(f"{f}:{k}", lambda k=k, z=loaded: z[k]) for k in loaded.files]
            if not items:
                raise ValueError(f"{f}: contains no arrays")
        for label, get in items:
            try:
                arr = get()
            except (OSError, ValueError, zipfile.BadZipFile) as e:
                raise ValueError(f"{label}: cannot be read ({e})") from None
            if arr.ndim not in (2, 3) or 0 in arr.shape or arr.dtype.kind not in "fiu":
                raise ValueError(f"{label}: expected a numeric chunk (T, D) or batch (N, T, D), "
                                 f"got {arr.dtype} {arr.shape}")
            yield label, arr


def cmd_fit(args) -> None:
    files = chunk_files(Path(args.chunks))
    counted = {"n": None}

    def chunks():  # fit calls this twice; the bar shows chunks per pass
        n = 0
        with progress_bar(total=counted["n"], unit="chunk", desc="range" if counted["n"] is None else "bpe",
                          file=sys.stderr) as bar:  # closes (newline) before any error message
            for label, arr in iter_chunk_arrays(files):
                if not np.isfinite(arr).all():
                    raise ValueError(f"{label}: contains NaN or inf")
                yield arr
                k = 1 if arr.ndim == 2 else len(arr)
                n += k
                bar.update(k)
        counted["n"] = n

    tok = OpenFAST.fit(chunks, vocab_size=args.vocab_size, scale=args.scale,
                       time_horizon=args.time_horizon, action_dim=args.action_dim)
    out = tok.save(args.out)
    print(f"wrote {out}: {counted['n']} chunks, min_token {tok.min_token}, BPE vocab {tok.bpe_vocab_size}")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="OpenFAST (MolmoAct2-FAST) action tokenizer tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="train a tokenizer on action chunks and write the released folder layout")
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

    p = sub.add_parser("encode", help="print BPE ids and tokens-per-chunk statistics")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder")
    p.add_argument("--chunks", required=True, help=".npz/.npy file or folder of them")
    p.add_argument("--show", type=int, default=10, help="how many chunks' ids to print")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode comma-separated BPE ids to an action chunk (exit 1 if invalid)")
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
        parser.exit(2, f"{PROG}: error: {e}\n")
    if code:
        raise SystemExit(code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
