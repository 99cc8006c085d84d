"""Where a checkpoint keeps its assets (norm_stats.json, tokenizer files, the OpenFAST folder). No JAX, so
simulators and launchers can look without importing it. A checkpoint may be a local folder or a `gs://` URI."""
from __future__ import annotations

from data_pipelines.norm_stats import NORM_STATS_FILE
from molmoact2_jax import storage


def find_asset(ckpt_dir: str, names) -> str | None:
    """The first of `names` found in DIR/assets/, DIR/ or, for a trainer step directory
    (WORKDIR/checkpoints/<step>/), WORKDIR/assets/. Returned as a string: an absolute local path or a URI."""
    ckpt = storage.as_path(ckpt_dir)
    roots = [ckpt / "assets", ckpt]
    workdir = ckpt.parent.parent
    if not storage.is_remote(workdir) or str(workdir).partition("://")[2].strip("/"):  # not above the bucket
        roots.append(workdir / "assets")
    for root in roots:
        for n in names:
            p = root / n
            if p.exists():
                return str(p)
    return None


def find_norm_stats(ckpt_dir: str) -> str:
    path = find_asset(ckpt_dir, [NORM_STATS_FILE])
    if path is None:
        raise FileNotFoundError(f"{ckpt_dir}: no {NORM_STATS_FILE} in assets/ or the folder itself; pass "
                                f"norm_stats=")
    return path
