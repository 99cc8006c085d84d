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
    fresh_groups = set(cfg.init_fresh)
    have = traverse_util.flatten_dict(fresh_params, sep="/")
    ours, theirs = _layout(have, saved)
    target, missing, names = {}, [], {}
    for key, value in have.items():
        if any(g in key.split("/") for g in fresh_groups):
            continue
        name = theirs + key[len(ours):] if key.startswith(ours) else None
        if name not in saved:
            missing.append(key)
            continue
        if saved[name][0] != tuple(value.shape):
            raise ValueError(f"config.init_from={cfg.init_from}: {name} has shape {saved[name][0]} there but "
                             f"{tuple(value.shape)} in this model ({key})")
        target[name] = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=value.sharding)
        names[name] = key
    if not target and len(missing) > 0:
        raise ValueError(f"config.init_from={cfg.init_from}: none of its {len(saved)} tensors is a parameter of this "
                         f"model (it has e.g. {sorted(saved)[:3]}; the model wants e.g. {sorted(missing)[:3]})")
    if target:
        loaded = params_io.restore_params_sharded(cfg.init_from, traverse_util.unflatten_dict(target, sep="/"))
        have.update({names[k]: v for k, v in traverse_util.flatten_dict(loaded, sep="/").items()})
    known = {theirs + k[len(ours):] for k in have if k.startswith(ours)}
    unexpected = sorted(k for k in saved if k not in known)
    log.info("init_from %s: loaded %d tensors; fresh groups %s; missing %d%s; unexpected %d%s", cfg.init_from,
             len(target), sorted(fresh_groups) or "none", len(missing), f" {missing[:5]}" if missing else "",
             len(unexpected), f" {unexpected[:5]}" if unexpected else "")
    return traverse_util.unflatten_dict(have, sep="/")


# (prefix in this model, prefix in the checkpoint): a MolmoAct2 checkpoint names keys as the model does; a
# Molmo2 backbone imported with `molmoact2-convert import-molmo2` (the pre-training start) saves the backbone's
# Flax variables, {"params": {vit, connector, llm}}, which are the model's backbone/... keys.
LAYOUTS = (("", ""), ("backbone/", "params/"), ("backbone/", ""))


def _layout(have: dict, saved: dict) -> tuple[str, str]:
    """The layout under which the most of this model's keys are in the checkpoint."""
    def hits(layout):
        ours, theirs = layout
        return sum(k.startswith(ours) and theirs + k[len(ours):] in saved for k in have)
    return max(LAYOUTS, key=hits)
