"""Where a checkpoint keeps its assets (norm_stats.json, tokenizer files, the OpenFAST folder). No JAX, so
simulators and launchers can look without importing it. A checkpoint may be a local folder or a `gs://` URI.
Only the assets' names are known here, not what they hold (data_pipelines/norm_stats.py reads the norm stats)."""
from __future__ import annotations

from molmoact2_jax import storage

NORM_STATS_ASSET = "norm_stats.json"   # the name the trainer gives the run's norm stats in assets/
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
ACTION_TOKENIZER_DIRS = ("action_tokenizer", "openfast", "fast_tokenizer", "MolmoAct2-FAST-Tokenizer")

# How a user supplies an asset a checkpoint lacks, named in every "not found" message: the command-line flags of
# molmoact2-serve / molmoact2-convert export-hf and the keyword of Policy.load.
ASSET_FLAGS = {"norm_stats": ("--norm-stats", "norm_stats"), "tokenizer": ("--tokenizer", "tokenizer"),
               "openfast": ("--openfast", "action_tokenizer")}


def asset_roots(ckpt_dir: str) -> list:
    """The folders searched, in order: DIR/assets/, DIR/ and, for a trainer step directory
    (WORKDIR/checkpoints/<step>/), WORKDIR/assets/."""
    ckpt = storage.as_path(ckpt_dir)
    roots = [ckpt / "assets", ckpt]
    workdir = ckpt.parent.parent
    if not storage.is_remote(workdir) or str(workdir).partition("://")[2].strip("/"):  # not above the bucket
        roots.append(workdir / "assets")
    return roots


def find_asset(ckpt_dir: str, names) -> str | None:
    """The first of `names` found in DIR/assets/, DIR/ or, for a trainer step directory
    (WORKDIR/checkpoints/<step>/), WORKDIR/assets/. Returned as a string: an absolute local path or a URI."""
    for root in asset_roots(ckpt_dir):
        for n in names:
            p = root / n
            if p.exists():
                return str(p)
    return None


def missing_asset_message(ckpt_dir: str, what: str, names, asset: str) -> str:
    """One line: which asset is missing where, and how to supply it (flag, Policy.load keyword, or the folder).
    `asset`: a key of ASSET_FLAGS."""
    flag, keyword = ASSET_FLAGS[asset]
    return (f"{ckpt_dir}: no {' / '.join(names)} in assets/, the folder itself or the run's assets/; give the "
            f"{what} with {flag} PATH (molmoact2-serve, molmoact2-convert export-hf) or {keyword}=PATH "
            f"(Policy.load), or copy it into {ckpt_dir}/assets/")


def find_norm_stats(ckpt_dir: str) -> str:
    """The checkpoint's norm_stats.json (see find_asset); FileNotFoundError in one line when the folder or the file
    is missing."""
    if not storage.as_path(ckpt_dir).is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {ckpt_dir}")
    path = find_asset(ckpt_dir, [NORM_STATS_ASSET])
    if path is None:
        raise FileNotFoundError(missing_asset_message(ckpt_dir, "norm stats", [NORM_STATS_ASSET], "norm_stats"))
    return path
