"""Small building blocks shared by every model file: dense layers with logical axes, norms, RoPE, attention.

Logical axis names used by the models (mapped to mesh axes by the sharding rules):
  layers      stacked (scanned) layer axis               vocab      vocabulary rows
  embed       model width of the LLM / expert            mlp        MLP inner width
  heads       query heads                                kv_heads   key/value heads
  head_dim    per-head width                             norm       1-D norm scales over a width
  vit_embed   ViT width (also connector input)           vit_mlp    ViT MLP inner width
  vit_pos     ViT position-table rows                    patch      flattened 14x14x3 patch values
  expert_embed / expert_mlp / expert_ctx   action-expert widths / context (KV) input width
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

Dtype = Any
NEG_INF = -1e30  # finite, so fully masked rows (padding queries) give uniform weights instead of NaN


def param_with_axes(module: nn.Module, name: str, init, shape, axes: Sequence[str | None], dtype=jnp.float32):
    """Declare a parameter whose sharding is described by logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


class Dense(nn.Module):
    """y = x @ kernel (+ bias). `in_axes`/`out_axes` are logical names of the kernel's input/output dims.

    `features` may be a tuple (e.g. (heads, head_dim)); the kernel is then [in, *features] so per-head weights keep
    their own logical axes. Parameters are stored in `param_dtype` and cast to `dtype` for the matmul.
    """
    features: int | tuple[int, ...]
    in_axes: tuple[str | None, ...]
    out_axes: tuple[str | None, ...]
    use_bias: bool = True
    n_in_dims: int = 1  # how many trailing dims of x are contracted (2 for an output projection over heads)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        in_shape = x.shape[-self.n_in_dims:]
        kernel_init = self.kernel_init
        if self.n_in_dims > 1 or len(features) > 1:
            # Initialise as the equivalent 2-D matrix so fan-in/fan-out match the unfused layer.
            kernel_init = _reshaped_init(self.kernel_init, math.prod(in_shape), math.prod(features))
        kernel = param_with_axes(self, "kernel", kernel_init, (*in_shape, *features),
                                 (*self.in_axes, *self.out_axes), self.param_dtype)
        contract = tuple(range(x.ndim - self.n_in_dims, x.ndim))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                                ((contract, tuple(range(self.n_in_dims))), ((), ())))
        if self.use_bias:
            bias = param_with_axes(self, "bias", self.bias_init, features, self.out_axes, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def _reshaped_init(init, fan_in: int, fan_out: int):
    def wrapped(key, shape, dtype=jnp.float32):
        return init(key, (fan_in, fan_out), dtype).reshape(shape)
    return wrapped


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32; `use_scale=False` gives the weightless norms of the action expert."""
    eps: float = 1e-6
    use_scale: bool = True
    axis_name: str = "norm"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.use_scale:
            scale = param_with_axes(self, "scale", nn.initializers.ones_init(), (x.shape[-1],), (self.axis_name,))
            y = y * scale
        return y.astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with weight and bias, computed in fp32 (SigLIP ViT)."""
    eps: float = 1e-6
    axis_name: str = "vit_embed"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        scale = param_with_axes(self, "scale", nn.initializers.ones_init(), (x.shape[-1],), (self.axis_name,))
        bias = param_with_axes(self, "bias", nn.initializers.zeros_init(), (x.shape[-1],), (self.axis_name,))
        return (y * scale + bias).astype(self.dtype)


def rope_tables(positions, head_dim: int, theta: float):
    """cos/sin of shape [..., head_dim] for rotate-half RoPE (the two halves share frequencies)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """x: [B, T, H, D]; cos/sin: [B, T, D] (or broadcastable). Non-interleaved: rotate_half = cat(-x2, x1)."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[..., None, :] + rotated * sin[..., None, :]
    return out.astype(x.dtype)


def attention(q, k, v, bias, dtype=jnp.float32):
    """Multi-head attention with grouped K/V heads and fp32 softmax.

    q: [B, Tq, Hq, D]; k, v: [B, Tk, Hkv, D] with Hq % Hkv == 0; bias: broadcastable to [B, Hq, Tq, Tk], either
    additive fp32 (NEG_INF for masked entries) or boolean (True = may attend: a quarter of the memory, the same
    numbers). Returns [B, Tq, Hq, D]. models/attention.py dispatches between this and the fused kernels.
    """
    b, tq, hq, d = q.shape
    hkv = k.shape[2]
    group = hq // hkv
    qg = q.reshape(b, tq, hkv, group, d)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", qg.astype(jnp.float32), k.astype(jnp.float32)) / jnp.sqrt(d).astype(
        jnp.float32)
    if bias is not None:
        bias = jnp.broadcast_to(bias, (b, hq, tq, k.shape[1])).reshape(b, hkv, group, tq, k.shape[1])
        # where(allowed, logits, NEG_INF) == logits + NEG_INF to fp32: |logits| is far below NEG_INF's ulp
        logits = jnp.where(bias, logits, NEG_INF) if bias.dtype == jnp.bool_ else logits + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", weights, v.astype(dtype))
    return out.reshape(b, tq, hq, d)


def mask_to_bias(allowed):
    """Boolean mask (True = may attend) -> additive fp32 bias."""
    return jnp.where(allowed, 0.0, NEG_INF).astype(jnp.float32)


# The names every transformer block (ViT, LLM, action expert) gives its intermediate values with `checkpoint_name`:
# the named remat policies below save some of them and recompute the rest in the backward pass.
REMAT_NAMES = ("qkv_proj", "attention_out", "out_proj", "mlp_in", "mlp_out")
PROJECTIONS = ("qkv_proj", "out_proj", "mlp_in", "mlp_out")


def _saving(*names):
    return jax.checkpoint_policies.save_only_these_names(*names)


def _offloading(*names):
    """Saves `names` in host memory (pinned_host) instead of HBM: a backend without host memory spaces refuses it
    at compile time."""
    return jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=list(names), offload_src="device",
        offload_dst="pinned_host")


# What a block keeps from its forward pass for the backward pass (the rest is recomputed). `molmoact2-compile
# --remat-menu` compiles a recipe under each and prints what each costs (peak memory, hardware FLOPs).
REMAT_POLICIES = {
    "none": None,                                                  # keep everything: no recompute, most memory
    "full": jax.checkpoint_policies.nothing_saveable,              # keep only the block input: recompute it all
    "dots": jax.checkpoint_policies.checkpoint_dots,               # keep every matmul output
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,   # ... but attention's
    "minimal": _saving(*PROJECTIONS),                              # keep the projections, recompute attention
    "save_qkv_proj": _saving("qkv_proj"),                          # keep q/k/v, recompute attention, out, MLP
    "save_out_proj": _saving("out_proj"),                          # keep the attention block's output projection
    "save_qkv_out_proj": _saving("qkv_proj", "out_proj"),          # both; recompute attention and MLP
    "minimal_offloaded": _offloading(*PROJECTIONS),                # minimal, the projections in host memory
}
# The names each named policy keeps (for the analytic FLOP count: models/flops.py)
SAVED_NAMES = {"minimal": set(PROJECTIONS), "save_qkv_proj": {"qkv_proj"}, "save_out_proj": {"out_proj"},
               "save_qkv_out_proj": {"qkv_proj", "out_proj"}, "minimal_offloaded": set(PROJECTIONS)}


def maybe_remat(block_cls, policy_name: str, static_argnums=()):
    """Wrap a block class with nn.remat under the named policy ('none' returns it unchanged)."""
    if policy_name not in REMAT_POLICIES:
        raise ValueError(f"config remat_policy={policy_name!r}: expected one of {sorted(REMAT_POLICIES)}")
    if policy_name == "none":
        return block_cls
    return nn.remat(block_cls, policy=REMAT_POLICIES[policy_name], prevent_cse=False, static_argnums=static_argnums)


def scan_layers(block_cls, num_layers: int, unroll: bool, in_axes, length_name: str = "layers"):
    """nn.scan over stacked layers: params get a leading `layers` axis; `unroll=True` unrolls the loop in XLA
    while keeping the same parameter layout (so checkpoints are interchangeable)."""
    return nn.scan(
        block_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=in_axes,
        length=num_layers,
        unroll=num_layers if unroll else 1,
        metadata_params={nn.PARTITION_NAME: length_name},
    )


@functools.lru_cache(maxsize=None)
def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def compute_dtype(name: str):
    """Config string -> jnp dtype, with an error naming the field."""
    try:
        return _dtype(name)
    except KeyError:
        raise ValueError(f"config dtype={name!r}: expected float32, bfloat16 or float16") from None
