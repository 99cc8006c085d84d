"""Vision-language connector: 2x2 attention pooling with a masked-mean query, then a SwiGLU
projector into the LLM width."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from molmoact2_jax.models import layers as L


class Connector(nn.Module):
    cfg: object

    @nn.compact
    def __call__(self, features, pooled_idx):
        """features: [B, Np, C] ViT features of each example's images, flattened (image j's patches at j*P);
        pooled_idx: [B, Nt, 4] indices into Np, -1 = padding.
        Returns (tokens [B, Nt, d_llm], valid [B, Nt]) where invalid tokens (all four indices -1) are zeroed."""
        c = self.cfg.connector
        dtype = L.compute_dtype(self.cfg.dtype)
        valid = pooled_idx >= 0
        flat_idx = jnp.clip(pooled_idx, 0).reshape(pooled_idx.shape[0], -1)  # [B, Nt*4]
        to_pool = jnp.take_along_axis(features, flat_idx[..., None], axis=1)
        to_pool = to_pool.reshape(*pooled_idx.shape, features.shape[-1]).astype(dtype)  # [B, Nt, 4, C]
        to_pool = to_pool * valid[..., None].astype(dtype)
        count = jnp.maximum(valid.sum(-1, keepdims=True), 1).astype(dtype)
        query = to_pool.sum(-2) / count  # masked mean, [B, Nt, C]

        b, nt, w, ch = to_pool.shape
        dense = lambda name: L.Dense((c.num_heads, c.head_dim), ("vit_embed",), ("heads", "head_dim"),
                                     dtype=dtype, name=name)
        q = dense("wq")(query).reshape(b * nt, 1, c.num_heads, c.head_dim)
        k = dense("wk")(to_pool).reshape(b * nt, w, c.num_heads, c.head_dim)
        v = dense("wv")(to_pool).reshape(b * nt, w, c.num_heads, c.head_dim)
        key_ok = valid.reshape(b * nt, 1, 1, w) if c.pooling_attention_mask else None
        bias = L.mask_to_bias(key_ok) if key_ok is not None else None
        pooled = L.attention(q, k, v, bias, dtype=dtype).reshape(b, nt, c.num_heads, c.head_dim)
        pooled = L.Dense(c.hidden_size, ("heads", "head_dim"), ("vit_embed",), n_in_dims=2, dtype=dtype,
                         name="wo")(pooled)

        d = self.cfg.llm.hidden_size
        gate = L.Dense(c.mlp_dim, ("vit_embed",), ("mlp",), use_bias=False, dtype=dtype, name="w1")(pooled)
        up = L.Dense(c.mlp_dim, ("vit_embed",), ("mlp",), use_bias=False, dtype=dtype, name="w3")(pooled)
        out = L.Dense(d, ("mlp",), ("embed",), use_bias=False, dtype=dtype, name="w2")(jax.nn.silu(gate) * up)
        token_valid = valid.any(-1)
        return out * token_valid[..., None].astype(dtype), token_valid
