"""MolmoAct2 flow-matching action expert (docs/model_notes.md, "Action expert"), pure Flax linen.

A DiT-style transformer over the action chunk: each of the `num_layers` blocks (one per LLM layer) runs
adaptive-norm-modulated bidirectional self-attention over the H action steps (RoPE over positions 0..H-1),
cross-attention into that LLM layer's (projected) keys/values, and a SwiGLU MLP; a final modulated projection
gives the velocity over the 32 padded action dims.

Usage (inference reuses one projected context across all flow steps):

    expert = make_action_expert(model_config)
    variables = expert.init(rng, x_t, t, context_k, context_v, encoder_mask)
    ctx = expert.apply(variables, context_k, context_v, encoder_mask, method=ActionExpert.project_context)
    v = expert.apply(variables, ctx, x_t, t, method=ActionExpert.velocity)   # == expert.apply(variables, x_t, t, ...)

The projected context is a plain dict of arrays (`k`, `v`: [L, B, T, heads, head_dim]; `bias`: additive fp32
[B, 1, 1, T]) so it can be carried through `jax.lax` loops and `jax.vmap`.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
from jax.ad_checkpoint import checkpoint_name
import ml_collections

from molmoact2_jax.models import layers as L
from molmoact2_jax.models.attention import attend

RMS_EPS = 1e-6


def _frozen(config) -> ml_collections.FrozenConfigDict:
    return config if isinstance(config, ml_collections.FrozenConfigDict) else ml_collections.FrozenConfigDict(config)


def make_action_expert(config) -> "ActionExpert":
    """Build the expert from a model config (`get_model_config(...)`, ConfigDict or FrozenConfigDict)."""
    return ActionExpert(config=_frozen(config))


def expert_mlp_dim(ae) -> int:
    """SwiGLU inner width: ceil(int(hidden * mlp_ratio) / ffn_multiple_of) * ffn_multiple_of."""
    raw = int(ae.hidden_size * ae.mlp_ratio)
    return -(-raw // ae.ffn_multiple_of) * ae.ffn_multiple_of


def expert_head_dim(ae) -> int:
    if ae.hidden_size % ae.num_heads:
        raise ValueError(f"action_expert.hidden_size={ae.hidden_size} is not divisible by num_heads={ae.num_heads}")
    return ae.hidden_size // ae.num_heads


def timestep_embedding(t, dim: int):
    """Sinusoidal embedding of the raw flow time t in [0, 1] (NOT scaled by 1000): [B] -> fp32 [B, dim].

    freq_i = exp(-ln(10000) * i / (half - 1)), i = 0..half-1; output = concat(sin(t*freq), cos(t*freq))."""
    half = dim // 2
    i = jnp.arange(half, dtype=jnp.float32)
    freqs = jnp.exp(-math.log(10000.0) * i / (half - 1))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def _rms(x, dtype):
    """Weightless RMSNorm over the last axis, fp32 math (all expert norms are weightless). A plain
    function (same math as `layers.RMSNorm(use_scale=False)`) so it can run in the setup-style methods."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + RMS_EPS)).astype(dtype)


def _modulate(z, shift, scale):
    """z * (1 + scale) + shift, with per-example shift/scale [B, D] broadcast over the action steps."""
    return z * (1.0 + scale[:, None, :]) + shift[:, None, :]


def _xavier():
    return nn.initializers.xavier_uniform()


def _scaled_xavier(factor: float):
    base = nn.initializers.xavier_uniform()

    def init(key, shape, dtype=jnp.float32):
        return base(key, shape, dtype) * jnp.asarray(factor, dtype)
    return init


class SelfAttention(nn.Module):
    cfg: Any

    @nn.compact
    def __call__(self, h, bias, cos, sin):
        ae = self.cfg.action_expert
        dtype = L.compute_dtype(self.cfg.dtype)
        hd = expert_head_dim(ae)
        # fused q|k|v, each head-major: kernel [D, 3, heads, head_dim] (HF rows q[0:D] k[D:2D] v[2D:3D])
        qkv = checkpoint_name(L.Dense((3, ae.num_heads, hd), ("expert_embed",), (None, "heads", "head_dim"),
                                      dtype=dtype, kernel_init=_xavier(), name="qkv")(h), "qkv_proj")
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        q, k = _rms(q, dtype), _rms(k, dtype)
        q, k = L.apply_rope(q, cos, sin), L.apply_rope(k, cos, sin)
        a = checkpoint_name(attend(q, k, v, bias, self.cfg.attention_impl, dtype), "attention_out")
        out_scale = (2 * ae.num_layers) ** -0.5
        return checkpoint_name(L.Dense(ae.hidden_size, ("heads", "head_dim"), ("expert_embed",), n_in_dims=2,
                                       dtype=dtype, kernel_init=_scaled_xavier(out_scale), name="out_proj")(a),
                               "out_proj")


class CrossAttention(nn.Module):
    cfg: Any

    @nn.compact
    def __call__(self, h, kc, vc, bias):
        ae = self.cfg.action_expert
        dtype = L.compute_dtype(self.cfg.dtype)
        hd = expert_head_dim(ae)
        q = checkpoint_name(L.Dense((ae.num_heads, hd), ("expert_embed",), ("heads", "head_dim"), dtype=dtype,
                                    kernel_init=_xavier(), name="q_proj")(h), "qkv_proj")
        q = _rms(q, dtype)  # no RoPE in cross-attention
        a = checkpoint_name(attend(q, kc, vc, bias, self.cfg.attention_impl, dtype), "attention_out")
        out_scale = (2 * ae.num_layers) ** -0.5
        return checkpoint_name(L.Dense(ae.hidden_size, ("heads", "head_dim"), ("expert_embed",), n_in_dims=2,
                                       dtype=dtype, kernel_init=_scaled_xavier(out_scale), name="out_proj")(a),
                               "out_proj")


class Mlp(nn.Module):
    cfg: Any

    @nn.compact
    def __call__(self, h):
        ae = self.cfg.action_expert
        dtype = L.compute_dtype(self.cfg.dtype)
        inner = expert_mlp_dim(ae)
        up = L.Dense(inner, ("expert_embed",), ("expert_mlp",), dtype=dtype, kernel_init=_xavier(), name="up_proj")
        gate = L.Dense(inner, ("expert_embed",), ("expert_mlp",), dtype=dtype, kernel_init=_xavier(),
                       name="gate_proj")
        down = L.Dense(ae.hidden_size, ("expert_mlp",), ("expert_embed",), dtype=dtype,
                       kernel_init=_scaled_xavier((2 * ae.num_layers) ** -0.5), name="down_proj")
        return checkpoint_name(down(jax.nn.silu(checkpoint_name(gate(h), "mlp_in")) * checkpoint_name(up(h), "mlp_in")),
                               "mlp_out")


class ExpertBlock(nn.Module):
    """One expert block; scanned over layers with the layer's projected context (kc, vc) as the scanned input."""
    cfg: Any

    @nn.compact
    def __call__(self, x, kc, vc, mod, c_act, cross_bias, self_bias, cos, sin, valid):
        """x: fp32 [B, H, D] residual stream; kc/vc: [B, T, heads, hd]; mod: this block's precomputed modulation
        [B, 9D] or None (then computed here from c_act, SiLU(time conditioning) [B, D]); cross_bias [B, 1, 1, T];
        self_bias [B, 1, 1, H]; cos/sin [H, hd]; valid: fp32 [B, H, 1] (ones at inference).
        """
        ae = self.cfg.action_expert
        dtype = L.compute_dtype(self.cfg.dtype)
        d = ae.hidden_size
        if mod is None:
            mod = L.Dense(9 * d, ("expert_embed",), ("expert_mlp",), dtype=dtype,
                          kernel_init=nn.initializers.zeros_init(), name="modulation")(c_act)
        mod = mod.astype(jnp.float32)
        (shift_msa, scale_msa, gate_msa, shift_mca, scale_mca, gate_mca,
         shift_mlp, scale_mlp, gate_mlp) = jnp.split(mod, 9, axis=-1)

        h = _modulate(_rms(x, jnp.float32), shift_msa, scale_msa).astype(dtype)
        y = SelfAttention(self.cfg, name="self_attn")(h, self_bias, cos, sin)
        x = x + gate_msa[:, None, :] * y.astype(jnp.float32)

        h = _modulate(_rms(x, jnp.float32), shift_mca, scale_mca).astype(dtype)
        y = CrossAttention(self.cfg, name="cross_attn")(h, kc, vc, cross_bias)
        x = x + gate_mca[:, None, :] * y.astype(jnp.float32)

        h = _modulate(_rms(x, jnp.float32), shift_mlp, scale_mlp).astype(dtype)
        y = Mlp(self.cfg, name="mlp")(h)
        x = x + gate_mlp[:, None, :] * y.astype(jnp.float32)
        x = x * valid
        return x, None


class FinalLayer(nn.Module):
    cfg: Any

    @nn.compact
    def __call__(self, x, c_act, mod=None):
        ae = self.cfg.action_expert
        dtype = L.compute_dtype(self.cfg.dtype)
        if mod is None:
            mod = L.Dense(2 * ae.hidden_size, ("expert_embed",), ("expert_mlp",), dtype=dtype,
                          kernel_init=nn.initializers.zeros_init(), name="modulation")(c_act)
        mod = mod.astype(jnp.float32)
        shift, scale = jnp.split(mod, 2, axis=-1)
        h = _modulate(_rms(x, jnp.float32), shift, scale).astype(dtype)
        return L.Dense(ae.max_action_dim, ("expert_embed",), ("action_dim",), dtype=dtype,
                       kernel_init=nn.initializers.zeros_init(), name="linear")(h)


class ActionExpert(nn.Module):
    """The flow-matching action expert. `config` is the (frozen) model config (uses .action_expert, .dtype,
    .remat_policy, .scan_unroll).

    Methods (all usable with `apply(..., method=...)`):
      __call__(x_t, t, context_k, context_v, encoder_mask, action_valid=None, depth_positions=None) -> v fp32
      project_context(context_k, context_v, encoder_mask, depth_positions=None) -> ctx dict
      velocity(ctx, x_t, t, action_valid=None) -> v fp32 [B, H, max_action_dim]
    """
    config: Any

    def setup(self):
        cfg = self.config
        ae = cfg.action_expert
        dtype = L.compute_dtype(cfg.dtype)
        d = ae.hidden_size
        self.time_embed_1 = L.Dense(d, ("time_embed",), ("expert_mlp",), dtype=dtype, kernel_init=_xavier())
        self.time_embed_3 = L.Dense(d, ("expert_mlp",), ("expert_embed",), dtype=dtype, kernel_init=_xavier())
        self.action_embed = L.Dense(d, ("action_dim",), ("expert_embed",), dtype=dtype, kernel_init=_xavier())
        self.context_k_proj = L.Dense(d, ("expert_ctx",), ("expert_embed",), use_bias=False, dtype=dtype,
                                      kernel_init=_xavier())
        self.context_v_proj = L.Dense(d, ("expert_ctx",), ("expert_embed",), use_bias=False, dtype=dtype,
                                      kernel_init=_xavier())
        block = L.maybe_remat(ExpertBlock, cfg.remat_policy)
        self.blocks = L.scan_layers(
            block, ae.num_layers, cfg.scan_unroll,
            in_axes=(0, 0, 0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        )(cfg)
        self.final_layer = FinalLayer(cfg)
        if ae.depth_gate:
            # depth gate: Linear(context_dim -> 1), weight 0, bias -4; one per layer or a single gate.
            lead = (ae.num_layers,) if ae.depth_gate_per_layer else ()
            lead_axes = ("layers",) if ae.depth_gate_per_layer else ()
            self.depth_gate_kernel = L.param_with_axes(
                self, "depth_gate_kernel", nn.initializers.zeros_init(), (*lead, ae.context_dim, 1),
                (*lead_axes, "expert_ctx", None))
            self.depth_gate_bias = L.param_with_axes(
                self, "depth_gate_bias", nn.initializers.constant(-4.0), (*lead, 1), (*lead_axes, None))

    # ------------------------------------------------------------------ context
    def _depth_gate(self, context_k, context_v, encoder_mask, depth_positions):
        """Scale K/V at depth positions by sigmoid(Linear(mean of raw V over valid non-depth positions))."""
        ae = self.config.action_expert
        valid = encoder_mask.astype(bool)
        depth = depth_positions.astype(bool) & valid
        nondepth = valid & ~depth
        sel = jnp.where(jnp.any(nondepth, axis=-1, keepdims=True), nondepth, valid).astype(jnp.float32)  # [B, T]
        denom = jnp.maximum(jnp.sum(sel, axis=-1), 1.0)                                                # [B]
        if ae.depth_gate_per_layer:
            pooled = jnp.einsum("lbtc,bt->lbc", context_v.astype(jnp.float32), sel) / denom[None, :, None]
            logit = jnp.einsum("lbc,lco->lbo", pooled, self.depth_gate_kernel) + self.depth_gate_bias[:, None, :]
        else:
            pooled = jnp.einsum("btc,bt->bc", context_v[-1].astype(jnp.float32), sel) / denom[:, None]
            logit = (pooled @ self.depth_gate_kernel + self.depth_gate_bias)[None]                   # [1, B, 1]
        gate = jax.nn.sigmoid(logit)                                                                # [L|1, B, 1]
        scale = jnp.where(depth[None, :, :, None], gate[:, :, None, :], 1.0)                          # [L|1, B, T, 1]
        return ((context_k.astype(jnp.float32) * scale).astype(context_k.dtype),
                (context_v.astype(jnp.float32) * scale).astype(context_v.dtype))

    def project_context(self, context_k, context_v, encoder_mask, depth_positions=None):
        """Project the backbone's per-layer K/V once (reused by every flow step).

        context_k/context_v: [L, B, T, context_dim] (keys after k-norm + RoPE, raw values, heads flattened
        head-major); encoder_mask: bool [B, T]; depth_positions: bool [B, T] (Think gate).
        Returns {"k", "v": [L, B, T, heads, head_dim] in the compute dtype, "bias": fp32 [B, 1, 1, T]}.
        """
        ae = self.config.action_expert
        dtype = L.compute_dtype(self.config.dtype)
        if context_k.shape[0] != ae.num_layers:
            raise ValueError(f"context has {context_k.shape[0]} layers; action_expert.num_layers={ae.num_layers}")
        if ae.depth_gate:
            if depth_positions is not None:
                context_k, context_v = self._depth_gate(context_k, context_v, encoder_mask, depth_positions)
            elif self.is_initializing():
                # make sure the gate parameters exist even when init is called without depth positions
                self._depth_gate(context_k, context_v, encoder_mask, jnp.zeros(encoder_mask.shape, bool))
        hd = expert_head_dim(ae)
        kc = _rms(self.context_k_proj(context_k), dtype)   # shared projection + weightless RMS over hidden
        vc = _rms(self.context_v_proj(context_v), dtype)
        kc = kc.reshape(*kc.shape[:-1], ae.num_heads, hd)
        vc = vc.reshape(*vc.shape[:-1], ae.num_heads, hd)
        kc = _rms(kc, dtype)                                # per-layer cross_attn.k_norm (weightless: same op)
        bias = L.mask_to_bias(encoder_mask.astype(bool))[:, None, None, :]
        return {"k": kc, "v": vc, "bias": bias}

    # ------------------------------------------------------------------ trajectory
    def _time_activation(self, t):
        """SiLU of the time conditioning MLP on the sinusoidal embedding of t (any leading shape)."""
        ae = self.config.action_expert
        temb = timestep_embedding(t.reshape(-1), ae.timestep_embed_dim).reshape(*t.shape, -1)
        temb = temb.astype(L.compute_dtype(self.config.dtype))
        return jax.nn.silu(self.time_embed_3(jax.nn.silu(self.time_embed_1(temb))))

    def conditioning(self, t):
        """What a flow step computes from the flow time alone, for t of any leading shape ([B], or [S, B] for S
        Euler steps at once): {"c_act": SiLU(time conditioning) [..., B, D], "block_mod": [..., L, B, 9D],
        "final_mod": [..., B, 2D]}. The sampler takes them for all its steps in one pass: one step's share is a
        matrix-vector product per layer, which runs far below matmul speed (on 2 CPU cores 40 of 140 ms of a
        10-step loop, 5 ms batched). Needs bound params (not for init)."""
        dtype = L.compute_dtype(self.config.dtype)
        c_act = self._time_activation(jnp.asarray(t, jnp.float32))
        blk = nn.unbox(self.blocks.variables["params"]["modulation"])
        block_mod = jnp.einsum("...bd,lde->...lbe", c_act, blk["kernel"].astype(dtype)) + \
            blk["bias"].astype(dtype)[:, None, :]
        fin = nn.unbox(self.final_layer.variables["params"]["modulation"])
        final_mod = jnp.einsum("...bd,de->...be", c_act, fin["kernel"].astype(dtype)) + fin["bias"].astype(dtype)
        return {"c_act": c_act, "block_mod": block_mod, "final_mod": final_mod}

    def velocity(self, ctx, x_t, t, action_valid=None, cond=None):
        """x_t: [B, H, max_action_dim]; t: [B] (flow time, 0 = noise, 1 = data); action_valid: bool [B, H] or None
        (training-time horizon padding: key-padding mask in self-attention and zeroing after each block);
        cond: `conditioning(t)` computed beforehand, or None to compute it here.
        Returns the velocity, fp32 [B, H, max_action_dim]."""
        ae = self.config.action_expert
        dtype = L.compute_dtype(self.config.dtype)
        b, h, _ = x_t.shape
        if cond is None:
            c_act = self._time_activation(jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,)))
            block_mod = final_mod = None
        else:
            c_act, block_mod, final_mod = cond["c_act"], cond["block_mod"], cond["final_mod"]
        x = self.action_embed(x_t.astype(dtype)).astype(jnp.float32)
        cos, sin = L.rope_tables(jnp.arange(h), expert_head_dim(ae), ae.rope_theta)
        if action_valid is None:
            self_bias = jnp.zeros((b, 1, 1, h), jnp.float32)
            valid = jnp.ones((b, h, 1), jnp.float32)
        else:
            action_valid = action_valid.astype(bool)
            self_bias = L.mask_to_bias(action_valid)[:, None, None, :]
            valid = action_valid.astype(jnp.float32)[..., None]
        x, _ = self.blocks(x, ctx["k"], ctx["v"], block_mod, c_act, ctx["bias"], self_bias, cos, sin, valid)
        return self.final_layer(x, c_act, final_mod).astype(jnp.float32)

    def __call__(self, x_t, t, context_k, context_v, encoder_mask, action_valid=None, depth_positions=None):
        ctx = self.project_context(context_k, context_v, encoder_mask, depth_positions)
        return self.velocity(ctx, x_t, t, action_valid)
