"""Params-only starts (`config.init_from`): fine-tuning and the next stage begin from another run's params."""
from __future__ import annotations

import logging

import jax
from flax import traverse_util

from molmoact2_jax.checkpoint_io import params as params_io

log = logging.getLogger("molmoact2_jax.trainer")


def load_init_params(cfg, fresh_params) -> dict:
    """Params-only start (fine-tuning, next stage): loads `config.init_from` (a params checkpoint, a trainer step
    directory, or an imported HF checkpoint) over `fresh_params` (the sharded params of a new state).

    Every loaded tensor is restored straight into the sharding of the fresh one it replaces, so this works on any
    mesh and any number of processes and never holds a full copy on a host. Groups in `config.init_fresh` stay
    fresh; missing and unexpected keys are reported; a shape mismatch is an error naming the key."""
    saved = params_io.saved_param_metadata(cfg.init_from)
    fresh_groups = set(cfg.get("init_fresh", ()) or ())
    have = traverse_util.flatten_dict(fresh_params, sep="/")
    target, missing = {}, []
    for key, value in have.items():
        if any(g in key.split("/") for g in fresh_groups):
            continue
        if key not in saved:
            missing.append(key)
            continue
        if saved[key][0] != tuple(value.shape):
            raise ValueError(f"config.init_from={cfg.init_from}: {key} has shape {saved[key][0]} there but "
                             f"{tuple(value.shape)} in this model")
        target[key] = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=value.sharding)
    if target:
        loaded = params_io.restore_params_sharded(cfg.init_from, traverse_util.unflatten_dict(target, sep="/"))
        have.update(traverse_util.flatten_dict(loaded, sep="/"))
    unexpected = sorted(k for k in saved if k not in have)
    log.info("init_from %s: loaded %d tensors; fresh groups %s; missing %d%s; unexpected %d%s", cfg.init_from,
             len(target), sorted(fresh_groups) or "none", len(missing), f" {missing[:5]}" if missing else "",
             len(unexpected), f" {unexpected[:5]}" if unexpected else "")
    return traverse_util.unflatten_dict(have, sep="/")
