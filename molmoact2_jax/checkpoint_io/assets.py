"""Where a checkpoint keeps its assets (norm_stats.json, tokenizer files, the OpenFAST folder). Standard library
only, so simulators and launchers can look without importing JAX."""
from __future__ import annotations

import os

from data_pipelines.norm_stats import NORM_STATS_FILE


def find_asset(ckpt_dir: str, names) -> str | None:
    """The first of `names` found in DIR/assets/, DIR/ or, for a trainer step directory
    (WORKDIR/checkpoints/<step>/), WORKDIR/assets/."""
    roots = [os.path.join(ckpt_dir, "assets"), ckpt_dir]
    parent = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_dir)))
    roots += [os.path.join(parent, "assets")]
    for root in roots:
        for n in names:
            p = os.path.join(root, n)
            if os.path.exists(p):
                return p
    return None


def find_norm_stats(ckpt_dir: str) -> str:
    path = find_asset(ckpt_dir, [NORM_STATS_FILE])
    if path is None:
        raise FileNotFoundError(f"{ckpt_dir}: no {NORM_STATS_FILE} in assets/ or the folder itself; pass "
                                f"norm_stats=")
    return path
