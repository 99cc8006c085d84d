"""OpenFAST on action chunks stored as numpy files: find the .npz/.npy files, read their chunks one at a time
(bounded memory), and fit a tokenizer on them.

The chunks must already be in the space the model predicts them in. Converted shards hold raw per-frame states and
actions, not chunks: they are refused here, with the command that fits on them (`molmoact2-data openfast`, which
builds the chunks and normalises them as training does; this package imports no data pipeline).
"""
from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

import numpy as np

from molmoact2_jax.progress import progress_bar
from molmoact2_jax.tokenizers.openfast import OpenFAST

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


def fit_on_files(files: list[Path], vocab_size: int, scale, time_horizon: int | None = None,
                 action_dim: int | None = None, progress: bool = True) -> tuple[OpenFAST, int]:
    """(tokenizer, number of chunks): OpenFAST.fit on every chunk of `files`, with a progress bar per pass on
    stderr. A chunk holding NaN or inf is refused (ValueError naming it)."""
    counted = {"n": None}

    def chunks():  # fit calls this twice; the bar shows chunks per pass
        n = 0
        with progress_bar(total=counted["n"], unit="chunk", desc="range" if counted["n"] is None else "bpe",
                          file=sys.stderr, disable=not progress) as bar:  # closes (newline) before any error
            for label, arr in iter_chunk_arrays(files):
                if not np.isfinite(arr).all():
                    raise ValueError(f"{label}: contains NaN or inf")
                yield arr
                k = 1 if arr.ndim == 2 else len(arr)
                n += k
                bar.update(k)
        counted["n"] = n

    tok = OpenFAST.fit(chunks, vocab_size=vocab_size, scale=scale, time_horizon=time_horizon, action_dim=action_dim)
    return tok, counted["n"]
