"""Everything a policy needs from a checkpoint folder, apart from the policy itself.

A folder is one of: a params checkpoint (`params/` + `model_config.json`, checkpoint_io.params), a trainer step
directory (`WORKDIR/checkpoints/<step>/`), a run directory (`WORKDIR`: its newest complete step, announced on
stderr; checkpoint_io.steps), or a Hugging Face MolmoAct2 release folder (config.json + safetensors, converted in
memory: nothing is written; from a bucket through a temporary local copy), each local or a `gs://` URI. Assets are
looked up in DIR/assets/, DIR/ and, for a step directory, WORKDIR/assets/: norm_stats.json, tokenizer.json (or
tokenizer.model), config.json (token-id overrides) and the OpenFAST folder.
"""
from __future__ import annotations

import dataclasses
import json
import os

from data_pipelines.norm_stats import NormStats
from molmoact2_jax import storage
from molmoact2_jax.checkpoint_io.assets import (ACTION_TOKENIZER_DIRS, TOKENIZER_FILES, find_asset, find_norm_stats,
                                                missing_asset_message)
from molmoact2_jax.checkpoint_io.params import check_checkpoint, load_params, training_config
from molmoact2_jax.checkpoint_io.steps import resolve_checkpoint
from molmoact2_jax.convert import molmoact2_hf
from molmoact2_jax.tokenizers.openfast import OpenFAST
from molmoact2_jax.tokenizers.text import TextTokenizer

__all__ = ["ACTION_TOKENIZER_DIRS", "TOKENIZER_FILES", "CheckpointParts", "is_hf_folder", "load_checkpoint",
           "load_tokenizer", "load_action_tokenizer"]


@dataclasses.dataclass
class CheckpointParts:
    model_cfg: object
    params: dict
    norm_stats: NormStats
    tokenizer: TextTokenizer
    action_tokenizer: OpenFAST | None
    max_cameras: int | None = None   # a trainer step's data.max_cameras: training never fed more images
    path: str = ""                   # the folder read (a run directory resolved to its step)


def is_hf_folder(path: str) -> bool:
    p = storage.as_path(path)
    return (p / "config.json").exists() and not (p / "model_config.json").exists() and any(
        f.name.endswith(".safetensors") for f in p.iterdir())


def load_tokenizer(ckpt_dir: str, tokenizer=None) -> TextTokenizer:
    """`tokenizer`: a TextTokenizer (returned as is), a path, or None to use the folder's tokenizer file with its
    config.json's token ids."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    path = tokenizer or find_asset(ckpt_dir, TOKENIZER_FILES)
    if path is None:
        raise FileNotFoundError(missing_asset_message(ckpt_dir, "tokenizer", TOKENIZER_FILES, "tokenizer"))
    hf_cfg_path = find_asset(ckpt_dir, ["config.json"])
    hf_cfg = None
    if hf_cfg_path is not None:
        hf_cfg = json.loads(storage.as_path(hf_cfg_path).read_text())
    return TextTokenizer.from_file(str(path), hf_config=hf_cfg)


def load_action_tokenizer(ckpt_dir: str, action_tokenizer=None) -> OpenFAST | None:
    if isinstance(action_tokenizer, (str, os.PathLike)):
        return OpenFAST.load(action_tokenizer)
    if action_tokenizer is not None:
        return action_tokenizer
    path = find_asset(ckpt_dir, ACTION_TOKENIZER_DIRS)
    return OpenFAST.load(path) if path is not None else None


def load_checkpoint(ckpt_dir: str, norm_stats=None, tokenizer=None, action_tokenizer=None,
                    weights: str = "auto") -> CheckpointParts:
    """Params, model config and assets of a folder; arguments (objects or paths) override the assets. `weights`:
    for a trainer step directory, "auto" (the EMA when the run kept one), "ema" or "raw". A run directory stands
    for its newest complete step (one line on stderr names it)."""
    ckpt_dir = str(storage.as_path(ckpt_dir))
    if not storage.as_path(ckpt_dir).is_dir():
        why = " (no such bucket)" if storage.missing_bucket(ckpt_dir) else ""
        raise FileNotFoundError(f"checkpoint directory not found: {ckpt_dir}{why}")
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    hf = is_hf_folder(ckpt_dir)
    if hf:   # its config.json is checked by the in-memory conversion, which comes first
        params, cfg = molmoact2_hf.load_hf(ckpt_dir)   # a bucket's folder through a temporary local copy
    else:
        check_checkpoint(ckpt_dir)   # its config and the weights' index (manifest) are there: one line otherwise
    # The assets (small files): a params checkpoint without them fails before its weights are read.
    stats = NormStats.load(find_norm_stats(ckpt_dir) if norm_stats is None else norm_stats)
    tok = load_tokenizer(ckpt_dir, tokenizer)
    fast = load_action_tokenizer(ckpt_dir, action_tokenizer)
    if not hf:
        params, cfg = load_params(ckpt_dir, weights=weights)
    run_cfg = training_config(ckpt_dir)   # a trainer step's whole run config (every field saved); else None
    cams = int(run_cfg["data"]["max_cameras"]) if run_cfg is not None else None
    return CheckpointParts(cfg, params, stats, tok, fast, cams, ckpt_dir)
