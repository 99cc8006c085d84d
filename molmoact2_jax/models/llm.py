"""Qwen3-style decoder in the Molmo2 form (docs/model_notes.md, "LLM attention").

Embedding = base table (`vocab_size` rows) + extra table (128 rows) looked up as one; per-head q/k RMSNorm before
RoPE; GQA; SwiGLU; final RMSNorm; untied LM head over `vocab_size` rows. Every layer hands back its (post-k-norm,
post-RoPE) keys and raw values: the action expert reads them, and generation keeps them as the KV cache.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
from jax.ad_checkpoint import checkpoint_name

from molmoact2_jax.models import layers as L
from molmoact2_jax.models.attention import attend, prepare_mask

ACT_AXES = ("activation_batch", "activation_length", "activation_embed")


class DecoderBlock(nn.Module):
    cfg: object

    @nn.compact
    def __call__(self, x, cache_kv, bias, cos, sin, write_index):
        """x: [B, T, D]. cache_kv: None (keys = this sequence) or (k, v) [B, S, Hkv, hd] written at write_index.
        Returns (x, (k, v)) where (k, v) is this layer's K/V over the key axis (sequence or updated cache)."""
        m = self.cfg.llm
        dtype = L.compute_dtype(self.cfg.dtype)
        x = nn.with_logical_constraint(x, ACT_AXES)
        h = L.RMSNorm(m.rms_norm_eps, name="attn_norm", axis_name="embed", dtype=dtype)(x)
        dense = lambda heads, name: L.Dense((heads, m.head_dim), ("embed",), (
            "heads" if heads == m.num_heads else "kv_heads", "head_dim"), use_bias=False, dtype=dtype, name=name)
        q = checkpoint_name(dense(m.num_heads, "q_proj")(h), "qkv_proj")
        k = checkpoint_name(dense(m.num_kv_heads, "k_proj")(h), "qkv_proj")
        v = checkpoint_name(dense(m.num_kv_heads, "v_proj")(h), "qkv_proj")
        if m.qk_norm:
            q = L.RMSNorm(m.rms_norm_eps, name="q_norm", axis_name="head_dim", dtype=dtype)(q)
            k = L.RMSNorm(m.rms_norm_eps, name="k_norm", axis_name="head_dim", dtype=dtype)(k)
        q, k = L.apply_rope(q, cos, sin), L.apply_rope(k, cos, sin)
        if cache_kv is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache_kv[0], k.astype(cache_kv[0].dtype), write_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache_kv[1], v.astype(cache_kv[1].dtype), write_index, axis=1)
        a = checkpoint_name(attend(q, k, v, bias, self.cfg.attention_impl, dtype), "attention_out")
        x = x + checkpoint_name(L.Dense(m.hidden_size, ("heads", "head_dim"), ("embed",), n_in_dims=2, use_bias=False,
                                        dtype=dtype, name="o_proj")(a), "out_proj")
        h = L.RMSNorm(m.rms_norm_eps, name="ff_norm", axis_name="embed", dtype=dtype)(x)
        mlp = lambda name: L.Dense(m.mlp_dim, ("embed",), ("mlp",), use_bias=False, dtype=dtype, name=name)
        h = jax.nn.silu(checkpoint_name(mlp("gate_proj")(h), "mlp_in")) * checkpoint_name(mlp("up_proj")(h), "mlp_in")
        x = x + checkpoint_name(L.Dense(m.hidden_size, ("mlp",), ("embed",), use_bias=False, dtype=dtype,
                                        name="down_proj")(h), "mlp_out")
        return nn.with_logical_constraint(x, ACT_AXES), (k, v)


class Embedding(nn.Module):
    cfg: object

    @nn.compact
    def __call__(self, ids):
        m = self.cfg.llm
        init = nn.initializers.normal(0.02)
        base = L.param_with_axes(self, "embedding", init, (m.vocab_size, m.hidden_size), ("vocab", "embed"))
        extra = L.param_with_axes(self, "new_embedding", init, (m.additional_vocab_size, m.hidden_size),
                                  ("vocab", "embed"))
        table = jnp.concatenate([base, extra], axis=0)
        # -1 (padding) looks up row 0, as the reference does.
        return jnp.take(table, jnp.where(ids < 0, 0, ids), axis=0).astype(L.compute_dtype(self.cfg.dtype))


class LLM(nn.Module):
    cfg: object

    def setup(self):
        m = self.cfg.llm
        dtype = L.compute_dtype(self.cfg.dtype)
        self.wte = Embedding(self.cfg)
        block = L.maybe_remat(DecoderBlock, self.cfg.remat_policy)
        self.blocks = L.scan_layers(block, m.num_layers, self.cfg.scan_unroll,
                                    in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast))(self.cfg)
        self.ln_f = L.RMSNorm(m.rms_norm_eps, axis_name="embed", dtype=dtype)
        self.lm_head = L.Dense(m.vocab_size, ("embed",), ("vocab",), use_bias=False, dtype=dtype)

    def embed(self, ids):
        return self.wte(ids)

    def __call__(self, x, bias, positions, cache_kv=None, write_index=0):
        """x: [B, T, D] input embeddings; bias: [B, 1, T, S] mask (boolean, or additive fp32); positions: [B, T].
        Returns (logits fp32 [B, T, vocab], (K, V) each [L, B, S, Hkv, hd])."""
        m = self.cfg.llm
        cos, sin = L.rope_tables(positions, m.head_dim, m.rope_theta)
        # the mask is the same in every layer: under splash its tile tables are built here, once
        mask = prepare_mask(bias, self.cfg.attention_impl, x.shape[1], bias.shape[-1])
        x, kv = self.blocks(x, cache_kv, mask, cos, sin, write_index)
        logits = self.lm_head(self.ln_f(x)).astype(jnp.float32)
        return logits, kv


def flatten_heads(kv):
    """[L, B, T, Hkv, hd] -> [L, B, T, Hkv*hd], head-major (kv[..., h*hd:(h+1)*hd] is head h)."""
    return kv.reshape(*kv.shape[:3], -1)


def attention_allowed(q_slot, k_slot, q_image, k_image, k_valid, q_seg=None, k_seg=None, bidirectional_image=True):
    """The LLM mask: (k <= q) OR (both image-typed), AND key valid, AND same segment (packed sequences).

    Shapes: q_* [B, Tq], k_* [B, S]. Returns bool [B, 1, Tq, S]."""
    allowed = k_slot[:, None, :] <= q_slot[:, :, None]
    if bidirectional_image:
        allowed = allowed | (q_image[:, :, None] & k_image[:, None, :])
    allowed = allowed & k_valid[:, None, :]
    if q_seg is not None:
        allowed = allowed & (q_seg[:, :, None] == k_seg[:, None, :])
    return allowed[:, None]
