"""MolmoThink depth-code input noise (fine-tuning: `depth_code_input_noise_rate` = 0.1): a share of the
teacher-forced depth-code inputs inside `<depth_start> .. <depth_end>` is replaced by uniformly random codes, so
the model learns to predict a cell's code while its context holds wrong ones (at inference, codes fed from the
cache or predicted earlier can be wrong). The labels (`target_ids`) are not touched. Pure jnp, inside the jitted
train step; drawn from the step's rng, so a resumed run draws the same noise."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from molmoact2_jax.models.encoder_mask import action_span_mask


def depth_input_positions(input_ids, tokens_cfg):
    """bool [B, T]: depth-code tokens inside a `<depth_start> .. <depth_end>` span."""
    ids = jnp.asarray(input_ids)
    code0, n = tokens_cfg.depth_token_start, tokens_cfg.num_depth_tokens
    is_code = (ids >= code0) & (ids < code0 + n)
    return is_code & action_span_mask(ids, tokens_cfg.depth_start, tokens_cfg.depth_end)


def add_depth_code_input_noise(batch: dict, rng, rate: float, tokens_cfg) -> dict:
    """The batch with each depth-code input replaced, with probability `rate`, by a uniform random code."""
    if not rate:
        return batch
    ids = batch["input_ids"]
    k1, k2 = jax.random.split(rng)
    where = depth_input_positions(ids, tokens_cfg) & jax.random.bernoulli(k1, rate, ids.shape)
    random_codes = tokens_cfg.depth_token_start + jax.random.randint(k2, ids.shape, 0, tokens_cfg.num_depth_tokens)
    return dict(batch, input_ids=jnp.where(where, random_codes.astype(ids.dtype), ids))
