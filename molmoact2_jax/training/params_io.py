"""A self-describing params checkpoint: `CKPT_DIR/params/` (Orbax) + `CKPT_DIR/model_config.json` beside it.

Used by the converters and by params-only restores; the training CheckpointManager writes the same two entries
inside each step directory, so any step directory is also a valid CKPT_DIR here.
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

PARAMS = "params"
MODEL_CONFIG = "model_config.json"


def save_params(ckpt_dir: str, params, model_cfg) -> None:
    """Writes params and the model config. Orbax commits the params atomically (temp dir + rename); the config is
    written to a temp file and renamed, so neither entry is ever half-written."""
    ckpt_dir = os.path.abspath(ckpt_dir)
    os.makedirs(ckpt_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(ckpt_dir, PARAMS), params, force=True)
        ckptr.wait_until_finished()
    tmp = os.path.join(ckpt_dir, MODEL_CONFIG + ".tmp")
    with open(tmp, "w") as f:
        f.write(ml_collections.ConfigDict(model_cfg).to_json(indent=2))
    os.replace(tmp, os.path.join(ckpt_dir, MODEL_CONFIG))


def load_model_config(ckpt_dir: str) -> ml_collections.ConfigDict:
    path = os.path.join(ckpt_dir, MODEL_CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{ckpt_dir}: no {MODEL_CONFIG} (not a molmoact2-jax params checkpoint)")
    with open(path) as f:
        d = json.load(f)
    d["vit"]["feature_layers"] = tuple(d["vit"]["feature_layers"])
    return ml_collections.ConfigDict(d)


def load_params(ckpt_dir: str, target=None):
    """Returns (params as numpy/jax arrays, model config). `target` (e.g. from jax.eval_shape with shardings)
    restores directly onto devices in that layout."""
    cfg = load_model_config(ckpt_dir)
    path = os.path.join(os.path.abspath(ckpt_dir), PARAMS)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{ckpt_dir}: no {PARAMS}/ directory")
    with ocp.StandardCheckpointer() as ckptr:
        if target is None:
            meta = ckptr.metadata(path)
            tree = getattr(meta, "item_metadata", meta)
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
        params = ckptr.restore(path, target)
    return params, cfg


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)
