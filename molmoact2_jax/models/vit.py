"""SigLIP2-style ViT in the Molmo form: linear patch embedding, learned positions, pre-LN blocks,
no CLS and no final LN; returns the concatenation of the configured intermediate layers' outputs."""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn
from jax.ad_checkpoint import checkpoint_name
import numpy as np

from molmoact2_jax.models import layers as L
from molmoact2_jax.models.attention import attend


class ViTBlock(nn.Module):
    cfg: object  # FrozenConfigDict of the whole model

    @nn.compact
    def __call__(self, x, _):
        v = self.cfg.vit
        dtype = L.compute_dtype(self.cfg.dtype)
        h = L.LayerNorm(v.layer_norm_eps, name="attention_norm", dtype=dtype)(x)
        qkv_dense = lambda name: L.Dense((v.num_heads, v.head_dim), ("vit_embed",), ("heads", "head_dim"),
                                         dtype=dtype, name=name)
        q, k, w = (checkpoint_name(qkv_dense(n)(h), "qkv_proj") for n in ("wq", "wk", "wv"))
        a = checkpoint_name(attend(q, k, w, None, self.cfg.attention_impl, dtype), "attention_out")  # bidirectional, fp32 softmax
        x = x + checkpoint_name(L.Dense(v.hidden_size, ("heads", "head_dim"), ("vit_embed",), n_in_dims=2,
                                        dtype=dtype, name="wo")(a), "out_proj")
        h = L.LayerNorm(v.layer_norm_eps, name="ffn_norm", dtype=dtype)(x)
        h = checkpoint_name(L.Dense(v.mlp_dim, ("vit_embed",), ("vit_mlp",), dtype=dtype, name="w1")(h), "mlp_in")
        h = nn.gelu(h, approximate=True)  # gelu_pytorch_tanh
        x = x + checkpoint_name(L.Dense(v.hidden_size, ("vit_mlp",), ("vit_embed",), dtype=dtype, name="w2")(h),
                                "mlp_out")
        return x, x  # carry, and the per-layer output collected by scan


def sincos2d_init(side: int):
    """Initializer of a [side*side, D] position table with 2-D sin/cos features (as MAE / big_vision's "sincos2d",
    with frequencies fitted to the grid: from half a period across it to one every two patches): neighbouring
    patches get similar codes, so what a from-scratch ViT learns about one place carries over to places it has
    not seen the object at. D must be a multiple of 4 (sin, cos of y and of x)."""
    def init(_key, shape, dtype=jnp.float32):
        n, d = shape
        if n != side * side or d % 4:
            raise ValueError(f"config.model.vit: a sincos2d position table needs {side}x{side} patches and a width "
                             f"divisible by 4, got shape {shape}")
        freq = np.pi * np.geomspace(1.0, side, d // 4) / side
        y, x = (np.mgrid[:side, :side].reshape(2, -1, 1) + 0.5) * freq
        return jnp.asarray(np.concatenate([np.sin(y), np.cos(y), np.sin(x), np.cos(x)], axis=1), dtype)
    return init


def num_built_layers(vit_cfg) -> int:
    """Blocks actually built: max(feature_layers)+1 (all a checkpoint holds), negative indices counting from
    num_layers."""
    idx = [l % vit_cfg.num_layers for l in vit_cfg.feature_layers]
    return max(idx) + 1


class ViT(nn.Module):
    cfg: object

    @nn.compact
    def __call__(self, patches):
        """patches: [N, P, 588] float in [-1, 1] -> features [N, P, hidden * len(feature_layers)]."""
        v = self.cfg.vit
        dtype = L.compute_dtype(self.cfg.dtype)
        side = v.image_size // v.patch_size
        x = L.Dense(v.hidden_size, ("patch",), ("vit_embed",), dtype=dtype, name="patch_embedding")(patches)
        kind = v.position_init
        if kind not in ("normal", "sincos2d"):
            raise ValueError(f"config.model.vit.position_init={kind!r}: expected 'normal' or 'sincos2d'")
        init = sincos2d_init(side) if kind == "sincos2d" else nn.initializers.normal(v.position_init_std)
        pos = L.param_with_axes(self, "positional_embedding", init, (side * side, v.hidden_size),
                                ("vit_pos", "vit_embed"))
        x = x + pos.astype(dtype)[None]
        depth = num_built_layers(v)
        block = L.maybe_remat(ViTBlock, self.cfg.remat_policy)
        stack = L.scan_layers(block, depth, self.cfg.scan_unroll, in_axes=(nn.broadcast,))
        _, hidden = stack(self.cfg, name="resblocks")(x, None)  # hidden: [depth, N, P, D]
        feats = [hidden[l % v.num_layers] for l in v.feature_layers]
        return jnp.concatenate(feats, axis=-1)
