"""Backbone import/export between an Orbax params checkpoint and the transformers Molmo2 folder layout."""
from __future__ import annotations

import json
import os

import numpy as np

from molmoact2_jax import storage
from molmoact2_jax.convert import molmo2_config, molmo2_keys
from molmoact2_jax.convert.safetensors_io import SafetensorsReader, write_safetensors
from molmoact2_jax.checkpoint_io import params as params_io


def read_hf_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    with open(path) as f:
        return json.load(f)


def import_molmo2(src_dir: str, ckpt_dir: str | None = None):
    """HF Molmo2 folder -> (params, model config); also saved as a params checkpoint when `ckpt_dir` is given.
    Either may be a `gs://` URI (a remote folder is read from a temporary local copy)."""
    if storage.is_remote(src_dir) and not storage.as_path(src_dir).is_dir():
        why = "no such bucket" if storage.missing_bucket(src_dir) else "no such folder"
        raise FileNotFoundError(f"{src_dir}: {why}")
    with storage.LocalCopy(src_dir) as local:
        cfg = molmo2_config.model_config_from_hf(read_hf_config(local), os.path.join(local, "config.json"),
                                                 os.path.join(local, "tokenizer.json"))
        params = {"params": molmo2_keys.backbone_from_hf(SafetensorsReader(local), cfg)}
    if ckpt_dir:
        params_io.save_params(ckpt_dir, params, cfg)
    return params, cfg


def export_molmo2(ckpt_dir_or_params, out_dir: str, cfg=None, dtype=np.float32, max_shard_bytes=5 * 1024 ** 3):
    """Params checkpoint (or an in-memory params tree + cfg) -> transformers Molmo2 folder. Returns a summary.
    A `gs://` out_dir gets the files from a local staging folder once all are written."""
    if isinstance(ckpt_dir_or_params, str):
        params, cfg = params_io.load_params(ckpt_dir_or_params)
    else:
        params = ckpt_dir_or_params
    params = params.get("params", params)
    with storage.LocalStaging(out_dir) as stage:
        summary = write_safetensors(stage, molmo2_keys.backbone_to_hf(params, cfg), max_shard_bytes, dtype=dtype)
        hf = molmo2_config.hf_config_from_model(cfg)
        hf["dtype"] = np.dtype(dtype).name
        with open(os.path.join(stage, "config.json"), "w") as f:
            json.dump(hf, f, indent=2)
    return summary
