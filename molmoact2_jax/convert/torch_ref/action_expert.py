"""PyTorch reference of the MolmoAct2 action expert, written from docs/model_notes.md ("Action expert").

Its `state_dict()` keys are the HF checkpoint keys without the `model.action_expert.` prefix, so it
can load an exported expert and check it end to end against the Flax model. All norms are weightless RMSNorms in
fp32 (eps 1e-6); attention uses `scaled_dot_product_attention` with boolean masks.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

EPS = 1e-6


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype)


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class SinusoidalTime(nn.Module):
    """Raw t in [0, 1] -> concat(sin(t f), cos(t f)), f_i = exp(-ln(1e4) i / (half - 1))."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def rope_rotate(x, positions, theta):
    """x: [B, heads, H, d]; rotate-half RoPE over head_dim (first half / second half)."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = positions.float()[:, None] * inv_freq[None]          # [H, d/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return (x * cos + torch.cat([-x2, x1], -1) * sin).to(x.dtype)


class SelfAttn(nn.Module):
    def __init__(self, d, heads, theta):
        super().__init__()
        self.heads, self.hd, self.theta = heads, d // heads, theta
        self.qkv = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, h, key_valid):
        b, n, d = h.shape
        qkv = self.qkv(h).reshape(b, n, 3, self.heads, self.hd)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))   # [B, heads, H, hd]
        q, k = rms_norm(q), rms_norm(k)
        pos = torch.arange(n)
        q, k = rope_rotate(q, pos, self.theta), rope_rotate(k, pos, self.theta)
        mask = None if key_valid is None else key_valid[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(a.transpose(1, 2).reshape(b, n, d))


class CrossAttn(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.q_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, h, kc, vc, enc_mask):
        """kc, vc: [B, heads, T, hd] (already normed); enc_mask: bool [B, T]."""
        b, n, d = h.shape
        q = rms_norm(self.q_proj(h).reshape(b, n, self.heads, self.hd)).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, kc, vc, attn_mask=enc_mask[:, None, None, :])
        return self.out_proj(a.transpose(1, 2).reshape(b, n, d))


class SwiGLU(nn.Module):
    def __init__(self, d, inner):
        super().__init__()
        self.up_proj = nn.Linear(d, inner)
        self.gate_proj = nn.Linear(d, inner)
        self.down_proj = nn.Linear(inner, d)

    def forward(self, h):
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Modulation(nn.Module):
    def __init__(self, d, chunks):
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(d, chunks * d)

    def forward(self, c):
        return self.linear(F.silu(c)).chunk(self.chunks, dim=-1)


class Block(nn.Module):
    def __init__(self, d, heads, inner, theta):
        super().__init__()
        self.self_attn = SelfAttn(d, heads, theta)
        self.cross_attn = CrossAttn(d, heads)
        self.mlp = SwiGLU(d, inner)
        self.modulation = Modulation(d, 9)

    def forward(self, x, c, kc, vc, enc_mask, action_valid):
        s1, sc1, g1, s2, sc2, g2, s3, sc3, g3 = self.modulation(c)
        x = x + g1[:, None] * self.self_attn(modulate(rms_norm(x), s1, sc1), action_valid)
        x = x + g2[:, None] * self.cross_attn(modulate(rms_norm(x), s2, sc2), kc, vc, enc_mask)
        x = x + g3[:, None] * self.mlp(modulate(rms_norm(x), s3, sc3))
        if action_valid is not None:
            x = x * action_valid[..., None].to(x.dtype)
        return x


class FinalLayer(nn.Module):
    def __init__(self, d, out_dim):
        super().__init__()
        self.modulation = Modulation(d, 2)
        self.linear = nn.Linear(d, out_dim)

    def forward(self, x, c):
        shift, scale = self.modulation(c)
        return self.linear(modulate(rms_norm(x), shift, scale))


class ActionExpertRef(nn.Module):
    def __init__(self, hidden_size=768, num_heads=8, num_layers=36, mlp_dim=3072, timestep_embed_dim=256,
                 max_action_dim=32, context_dim=1024, rope_theta=10000.0):
        super().__init__()
        d = hidden_size
        self.num_heads, self.num_layers = num_heads, num_layers
        self.time_embed = nn.Sequential(SinusoidalTime(timestep_embed_dim), nn.Linear(timestep_embed_dim, d),
                                        nn.SiLU(), nn.Linear(d, d))
        self.action_embed = nn.Linear(max_action_dim, d)
        self.context_k_proj = nn.Linear(context_dim, d, bias=False)
        self.context_v_proj = nn.Linear(context_dim, d, bias=False)
        self.blocks = nn.ModuleList([Block(d, num_heads, mlp_dim, rope_theta) for _ in range(num_layers)])
        self.final_layer = FinalLayer(d, max_action_dim)
        self.reset_parameters()

    @classmethod
    def from_config(cls, ae) -> "ActionExpertRef":
        """From our `config.action_expert`."""
        raw = int(ae.hidden_size * ae.mlp_ratio)
        inner = -(-raw // ae.ffn_multiple_of) * ae.ffn_multiple_of
        return cls(ae.hidden_size, ae.num_heads, ae.num_layers, inner, ae.timestep_embed_dim, ae.max_action_dim,
                   ae.context_dim, ae.rope_theta)

    @torch.no_grad()
    def reset_parameters(self):
        """The release init: xavier-uniform weights, zero biases; out/down projections scaled by (2L)^-0.5;
        modulation and final linear zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        s = (2 * self.num_layers) ** -0.5
        for blk in self.blocks:
            for lin in (blk.self_attn.out_proj, blk.cross_attn.out_proj, blk.mlp.down_proj):
                lin.weight.mul_(s)
            nn.init.zeros_(blk.modulation.linear.weight)
            nn.init.zeros_(blk.modulation.linear.bias)
        for lin in (self.final_layer.modulation.linear, self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def project_context(self, context_k, context_v):
        """[L, B, T, C] -> per-layer (K, V) each [B, heads, T, hd]."""
        out = []
        for l in range(self.num_layers):
            kc = rms_norm(self.context_k_proj(context_k[l]))
            vc = rms_norm(self.context_v_proj(context_v[l]))
            b, t, d = kc.shape
            kc = rms_norm(kc.reshape(b, t, self.num_heads, d // self.num_heads)).transpose(1, 2)
            vc = vc.reshape(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)
            out.append((kc, vc))
        return out

    def forward(self, x_t, t, context_k, context_v, encoder_mask, action_valid=None):
        c = self.time_embed(t)
        ctx = self.project_context(context_k, context_v)
        x = self.action_embed(x_t)
        for blk, (kc, vc) in zip(self.blocks, ctx):
            x = blk(x, c, kc, vc, encoder_mask, action_valid)
        return self.final_layer(x, c)
