"""Which prompt positions the action expert's cross-attention may read and the Think depth positions
(docs/model_notes.md, "Encoder mask" and "Depth gate"). Pure jnp, jit-friendly: no Python loops over tokens."""
from __future__ import annotations

import jax
import jax.numpy as jnp

ACTION_MODES = ("continuous", "discrete", "both")


def _last_index_upto(flags):
    """For each position p: the largest index i <= p with flags[i] (else -1). flags: bool [B, T]."""
    # The running max in float32 (exact for indices below 2**24): ONNX has no cumulative max, and the lowering
    # exporters use for it (MaxPool) takes floating point only. Same numbers as an int32 cummax.
    idx = jnp.arange(flags.shape[-1], dtype=jnp.float32)
    return jax.lax.cummax(jnp.where(flags, idx, -1.0), axis=flags.ndim - 1).astype(jnp.int32)


def action_span_mask(input_ids, action_start: int, action_end: int):
    """True inside every `<action_start> ... <action_end>` span, both ends included. A start opens a span that
    the next end closes (further starts inside an open span change nothing); an end with no open span is not
    masked; an unmatched start runs to the end of the row. input_ids: int [B, T] -> bool [B, T]."""
    last_start = _last_index_upto(input_ids == action_start)
    last_end = _last_index_upto(input_ids == action_end)
    # the last end strictly before p (so the closing end itself still counts as inside the span)
    last_end_before = jnp.concatenate(
        [jnp.full(last_end.shape[:-1] + (1,), -1, last_end.dtype), last_end[..., :-1]], axis=-1)
    return (last_start >= 0) & (last_start > last_end_before)


def encoder_attention_mask(input_ids, attention_mask, tokens_cfg, action_mode: str, segment_ids=None,
                           example_segment=None):
    """Cross-attention key mask of the action expert. Returns bool [B, T] (True = may attend).

    input_ids: int [B, T]; attention_mask: bool [B, T] or None (then `input_ids != -1`); tokens_cfg: the model
    config's `tokens` (eos_token_id, action_start, action_end); action_mode: "continuous" | "discrete" | "both".
    In "both" mode every `eos_token_id` position (BOS and each `<|im_end|>`) and every action span (see
    `action_span_mask`) is hidden. Packing: with `segment_ids` [B, T] (per-position example ids, i.e. the
    reference's `subsegment_ids // EXAMPLE_SUBSEGMENT_INCREMENT`) and `example_segment` (int, or [B]: the example
    the action chunk belongs to) only that example's positions stay visible.
    """
    if action_mode not in ACTION_MODES:
        raise ValueError(f"action_mode={action_mode!r}: expected one of {ACTION_MODES}")
    input_ids = jnp.asarray(input_ids)
    mask = (input_ids != -1) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    if action_mode == "both":
        mask = mask & (input_ids != tokens_cfg.eos_token_id)
        mask = mask & ~action_span_mask(input_ids, tokens_cfg.action_start, tokens_cfg.action_end)
    if (segment_ids is None) != (example_segment is None):
        raise ValueError("encoder_attention_mask: pass both segment_ids and example_segment, or neither")
    if segment_ids is not None:
        example = jnp.asarray(example_segment)
        example = example[..., None] if example.ndim else example
        mask = mask & (jnp.asarray(segment_ids) == example)
    return mask


def depth_token_mask(input_ids, tokens_cfg):
    """True at Think depth tokens: `<depth_output>`, `<depth_start>`, `<depth_end>` and the depth codes
    `depth_token_start .. depth_token_start + num_depth_tokens - 1`."""
    ids = jnp.asarray(input_ids)
    code = (ids >= tokens_cfg.depth_token_start) & (ids < tokens_cfg.depth_token_start + tokens_cfg.num_depth_tokens)
    return code | (ids == tokens_cfg.depth_output) | (ids == tokens_cfg.depth_start) | (ids == tokens_cfg.depth_end)


def depth_positions(input_ids, encoder_mask, tokens_cfg):
    """Depth positions: depth tokens that are also encoder-valid. bool [B, T]."""
    return depth_token_mask(input_ids, tokens_cfg) & jnp.asarray(encoder_mask).astype(bool)
