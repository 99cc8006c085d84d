"""The MolmoER / Molmo2 vision-language backbone: ViT -> connector -> image features ADDED to the `<im_patch>`
embeddings -> decoder. Entry points: `__call__` (full forward: logits + every layer's K/V), `prefill` and `decode`
(generation with a fixed-size KV cache).

Batch inputs (all host-side arrays, see molmoact2_jax.preprocessing):
  input_ids      int32 [B, T]       token ids, -1 or pad where `attention_mask` is False
  images         float [B, N, P, 588] patches of up to N images per example in [-1, 1] (zeros for missing images)
  pooled_idx     int32 [B, Nt, 4]   per-example indices into the N*P flattened patches, -1 = padding
  attention_mask bool  [B, T]       key validity (left or right padding)
  position_ids   int32 [B, T]       default cumsum(attention_mask) - 1
  segment_ids    int32 [B, T]       packed sequences: tokens only see tokens of their own segment
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from molmoact2_jax.models import inputs as I
from molmoact2_jax.models.connector import Connector
from molmoact2_jax.models.llm import LLM, attention_allowed
from molmoact2_jax.models.vit import ViT


def image_token_mask(cfg, ids):
    """token_type_ids == 1: the image-family tokens."""
    t = cfg.tokens
    family = jnp.array([t.image_start, t.image_end, t.image_patch, t.image_col, t.low_res_image_start,
                        t.frame_start, t.frame_end, t.image_low], jnp.int32)
    return (ids[..., None] == family).any(-1)


def default_positions(attention_mask):
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


class Backbone(nn.Module):
    cfg: object

    def setup(self):
        self.vit = ViT(self.cfg)
        self.connector = Connector(self.cfg)
        self.llm = LLM(self.cfg)

    # ---- pieces
    def image_features(self, images, pooled_idx):
        """-> (tokens [B, Nt, D], valid [B, Nt])."""
        b, n, p, c = images.shape
        feats = self.vit(images.reshape(b * n, p, c))
        return self.connector(feats.reshape(b, n * p, feats.shape[-1]), pooled_idx)

    def input_embeddings(self, input_ids, images=None, pooled_idx=None):
        x = self.llm.embed(input_ids)
        if images is None:
            return x
        tokens, valid = self.image_features(images, pooled_idx)
        # k-th valid image token goes to the k-th <im_patch> position (reference: x[is_patch] += feats).
        b, nt, d = tokens.shape
        rank = jnp.cumsum(valid, axis=-1) - 1
        compact = jnp.zeros_like(tokens).at[jnp.arange(b)[:, None], jnp.where(valid, rank, nt)].set(
            tokens, mode="drop")
        is_patch = input_ids == self.cfg.tokens.image_patch
        patch_rank = jnp.clip(jnp.cumsum(is_patch, axis=-1) - 1, 0, nt - 1)
        add = jnp.take_along_axis(compact, patch_rank[..., None], axis=1)
        return x + jnp.where(is_patch[..., None], add, 0).astype(x.dtype)

    # ---- full forward (training, prefill for the action expert)
    def __call__(self, input_ids, images=None, pooled_idx=None, attention_mask=None, position_ids=None,
                 segment_ids=None):
        """Returns dict(logits [B,T,V] fp32, keys/values [L, B, T, Hkv, hd])."""
        I.check_backbone_inputs(self.cfg, input_ids, images, pooled_idx)
        if attention_mask is None:
            attention_mask = input_ids >= 0
        attention_mask = attention_mask.astype(bool)
        if position_ids is None:
            position_ids = default_positions(attention_mask)
        x = self.input_embeddings(input_ids, images, pooled_idx)
        slots = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        img = image_token_mask(self.cfg, input_ids)
        allowed = attention_allowed(slots, slots, img, img, attention_mask, segment_ids, segment_ids,
                                    self.cfg.llm.bidirectional_image_attention)
        logits, (k, v) = self.llm(x, allowed, position_ids)
        return dict(logits=logits, keys=k, values=v)

    # ---- generation
    def prefill(self, input_ids, images=None, pooled_idx=None, attention_mask=None, cache_size=None):
        """Runs the prompt and returns (logits [B, T, V], cache) with room for `cache_size` tokens in total."""
        I.check_backbone_inputs(self.cfg, input_ids, images, pooled_idx)
        b, t = input_ids.shape
        cache_size = cache_size or self.cfg.max_sequence_length
        if attention_mask is None:
            attention_mask = input_ids >= 0
        attention_mask = attention_mask.astype(bool)
        positions = default_positions(attention_mask)
        x = self.input_embeddings(input_ids, images, pooled_idx)
        cache = init_cache(self.cfg, b, cache_size, x.dtype)
        pad = cache_size - t
        valid = jnp.pad(attention_mask, ((0, 0), (0, pad)))
        img = jnp.pad(image_token_mask(self.cfg, input_ids), ((0, 0), (0, pad)))
        q_slots = jnp.broadcast_to(jnp.arange(t), (b, t))
        k_slots = jnp.broadcast_to(jnp.arange(cache_size), (b, cache_size))
        allowed = attention_allowed(q_slots, k_slots, img[:, :t], img, valid,
                                    bidirectional_image=self.cfg.llm.bidirectional_image_attention)
        logits, (k, v) = self.llm(x, allowed, positions, (cache["keys"], cache["values"]), 0)
        cache = dict(keys=k, values=v, valid=valid, index=jnp.asarray(t, jnp.int32),
                     next_position=positions[:, -1] + 1)
        return logits, cache

    def decode(self, input_ids, cache):
        """Feeds `input_ids` [B, t] (t >= 1, causal among themselves) after the cached tokens.
        Returns (logits [B, t, V], new cache)."""
        b, t = input_ids.shape
        size = cache["valid"].shape[1]
        index = cache["index"]
        positions = cache["next_position"][:, None] + jnp.arange(t)[None]
        valid = jax.lax.dynamic_update_slice_in_dim(cache["valid"], jnp.ones((b, t), bool), index, axis=1)
        q_slots = jnp.broadcast_to(index + jnp.arange(t), (b, t))
        k_slots = jnp.broadcast_to(jnp.arange(size), (b, size))
        no_img = jnp.zeros((b, t), bool)  # decode steps are causal only
        allowed = attention_allowed(q_slots, k_slots, no_img, no_img[:, :1], valid, bidirectional_image=False)
        x = self.llm.embed(input_ids)
        logits, (k, v) = self.llm(x, allowed, positions, (cache["keys"], cache["values"]), index)
        new = dict(keys=k, values=v, valid=valid, index=index + t, next_position=cache["next_position"] + t)
        return logits, new


def init_cache(cfg, batch: int, size: int, dtype=jnp.float32):
    m = cfg.llm
    shape = (m.num_layers, batch, size, m.num_kv_heads, m.head_dim)
    return dict(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype), valid=jnp.zeros((batch, size), bool),
                index=jnp.zeros((), jnp.int32), next_position=jnp.zeros((batch,), jnp.int32))
