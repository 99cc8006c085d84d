"""Action-expert parameters: our Flax tree (blocks stacked on a leading `layers` axis) <-> the HF flat state dict.
Both directions are exact (pure transposes/reshapes, dtype kept), so a round trip is bit-for-bit.

HF layout: PyTorch `Linear.weight` is [out, in]; `blocks.{e}.self_attn.qkv` rows are q | k | v, each head-major
([heads x head_dim]); per-head Flax kernels ([D, heads, hd] / [heads, hd, D]) flatten head-major too.
Think checkpoints keep the depth gate outside the expert prefix: `model.action_expert_depth_gate.{e}.{weight,bias}`
(per layer) or `model.action_expert_depth_gate.{weight,bias}`.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from flax.core import meta

from molmoact2_jax.convert.molmo2_keys import get_path, set_path
from molmoact2_jax.models.action_expert import expert_head_dim, expert_mlp_dim

DEFAULT_PREFIX = "model.action_expert."
# native training-only modules the HF export drops; ignored when importing
TRAINING_ONLY_MARKERS = (".cross_attn.kv_proj.", "state_encoder.", "state_norm.")


def _ae(config):
    return config.action_expert if hasattr(config, "action_expert") else config


def _linear_specs(ae):
    """(flax path, HF name, per-layer, flax kernel shape without the layers axis, n_in dims, has_bias)."""
    d, h = ae.hidden_size, ae.num_heads
    hd = expert_head_dim(ae)
    inner = expert_mlp_dim(ae)
    specs = [
        (("time_embed_1",), "time_embed.1", False, (ae.timestep_embed_dim, d), 1, True),
        (("time_embed_3",), "time_embed.3", False, (d, d), 1, True),
        (("action_embed",), "action_embed", False, (ae.max_action_dim, d), 1, True),
        (("context_k_proj",), "context_k_proj", False, (ae.context_dim, d), 1, False),
        (("context_v_proj",), "context_v_proj", False, (ae.context_dim, d), 1, False),
        (("blocks", "self_attn", "qkv"), "self_attn.qkv", True, (d, 3, h, hd), 1, True),
        (("blocks", "self_attn", "out_proj"), "self_attn.out_proj", True, (h, hd, d), 2, True),
        (("blocks", "cross_attn", "q_proj"), "cross_attn.q_proj", True, (d, h, hd), 1, True),
        (("blocks", "cross_attn", "out_proj"), "cross_attn.out_proj", True, (h, hd, d), 2, True),
        (("blocks", "mlp", "up_proj"), "mlp.up_proj", True, (d, inner), 1, True),
        (("blocks", "mlp", "gate_proj"), "mlp.gate_proj", True, (d, inner), 1, True),
        (("blocks", "mlp", "down_proj"), "mlp.down_proj", True, (inner, d), 1, True),
        (("blocks", "modulation"), "modulation.linear", True, (d, 9 * d), 1, True),
        (("final_layer", "modulation"), "final_layer.modulation.linear", False, (d, 2 * d), 1, True),
        (("final_layer", "linear"), "final_layer.linear", False, (d, ae.max_action_dim), 1, True),
    ]
    return specs


def _depth_prefix(prefix: str, depth_gate_prefix: str | None) -> str:
    if depth_gate_prefix is not None:
        return depth_gate_prefix
    return prefix.rstrip(".") + "_depth_gate." if prefix else "depth_gate."


def _plain(params) -> dict:
    params = meta.unbox(params)
    if isinstance(params, Mapping) and set(params.keys()) == {"params"}:
        params = params["params"]
    return params


def _kernel_to_torch(k, n_in):
    k = np.asarray(k)
    n_in_size = math.prod(k.shape[:n_in])
    return np.ascontiguousarray(k.reshape(n_in_size, -1).T)


def expert_params_to_hf(params, config, prefix: str = DEFAULT_PREFIX, depth_gate_prefix: str | None = None):
    """Flax expert params (bare tree, `{"params": tree}`, boxed or not) -> {HF key: numpy array [out, in]}.

    `config`: the model config (or its `.action_expert`). Keys are `prefix + name`."""
    ae = _ae(config)
    p = _plain(params)
    out = {}
    for path, name, per_layer, shape, n_in, has_bias in _linear_specs(ae):
        mod = get_path(p, path)
        kernel = np.asarray(mod["kernel"])
        bias = np.asarray(mod["bias"]) if has_bias else None
        if per_layer:
            if kernel.shape != (ae.num_layers, *shape):
                raise ValueError(f"{'/'.join(path)}/kernel shape {kernel.shape}, expected {(ae.num_layers, *shape)}")
            for e in range(ae.num_layers):
                out[f"{prefix}blocks.{e}.{name}.weight"] = _kernel_to_torch(kernel[e], n_in)
                if has_bias:
                    out[f"{prefix}blocks.{e}.{name}.bias"] = np.ascontiguousarray(bias[e].reshape(-1))
        else:
            if kernel.shape != shape:
                raise ValueError(f"{'/'.join(path)}/kernel shape {kernel.shape}, expected {shape}")
            out[f"{prefix}{name}.weight"] = _kernel_to_torch(kernel, n_in)
            if has_bias:
                out[f"{prefix}{name}.bias"] = np.ascontiguousarray(bias.reshape(-1))
    if ae.depth_gate:
        dp = _depth_prefix(prefix, depth_gate_prefix)
        kernel, bias = np.asarray(p["depth_gate_kernel"]), np.asarray(p["depth_gate_bias"])
        if ae.depth_gate_per_layer:
            for e in range(ae.num_layers):
                out[f"{dp}{e}.weight"] = np.ascontiguousarray(kernel[e].T)
                out[f"{dp}{e}.bias"] = np.ascontiguousarray(bias[e])
        else:
            out[f"{dp}weight"] = np.ascontiguousarray(kernel.T)
            out[f"{dp}bias"] = np.ascontiguousarray(bias)
    return out


def hf_to_expert_params(state_dict: Mapping, config, prefix: str = DEFAULT_PREFIX,
                        depth_gate_prefix: str | None = None, strict: bool = True) -> dict:
    """HF flat state dict (numpy or torch tensors; other components' keys are ignored) -> bare Flax expert
    params tree of numpy arrays (use as `{"params": tree}`). Missing keys raise; with `strict`, unknown keys under
    the expert prefix raise too (the native training-only `cross_attn.kv_proj` / `state_encoder` are skipped)."""
    ae = _ae(config)

    def arr(key):
        if key not in state_dict:
            raise KeyError(f"action expert checkpoint is missing {key!r}")
        v = state_dict[key]
        if hasattr(v, "detach"):  # torch tensor
            v = v.detach().cpu().numpy()
        return np.asarray(v)

    def check(key, a, shape):
        if a.shape != tuple(shape):
            raise ValueError(f"{key}: shape {a.shape}, expected {tuple(shape)}")
        return a

    used = set()
    tree: dict = {}
    for path, name, per_layer, shape, n_in, has_bias in _linear_specs(ae):
        out_size, in_size = math.prod(shape[n_in:]), math.prod(shape[:n_in])
        names = [f"{prefix}blocks.{e}.{name}" for e in range(ae.num_layers)] if per_layer else [f"{prefix}{name}"]
        kernels, biases = [], []
        for n in names:
            w = check(n + ".weight", arr(n + ".weight"), (out_size, in_size))
            kernels.append(np.ascontiguousarray(w.T).reshape(shape))
            used.add(n + ".weight")
            if has_bias:
                biases.append(check(n + ".bias", arr(n + ".bias"), (out_size,)).reshape(shape[n_in:]))
                used.add(n + ".bias")
        entry = {"kernel": np.stack(kernels) if per_layer else kernels[0]}
        if has_bias:
            entry["bias"] = np.stack(biases) if per_layer else biases[0]
        set_path(tree, path, entry)
    dp = _depth_prefix(prefix, depth_gate_prefix)
    if ae.depth_gate:
        if ae.depth_gate_per_layer:
            ws = [check(f"{dp}{e}.weight", arr(f"{dp}{e}.weight"), (1, ae.context_dim)) for e in range(ae.num_layers)]
            bs = [check(f"{dp}{e}.bias", arr(f"{dp}{e}.bias"), (1,)) for e in range(ae.num_layers)]
            used.update(f"{dp}{e}.{s}" for e in range(ae.num_layers) for s in ("weight", "bias"))
            tree["depth_gate_kernel"] = np.stack([np.ascontiguousarray(w.T) for w in ws])
            tree["depth_gate_bias"] = np.stack(bs)
        else:
            tree["depth_gate_kernel"] = np.ascontiguousarray(
                check(f"{dp}weight", arr(f"{dp}weight"), (1, ae.context_dim)).T)
            tree["depth_gate_bias"] = check(f"{dp}bias", arr(f"{dp}bias"), (1,))
            used.update({f"{dp}weight", f"{dp}bias"})
    if strict:
        extra = [k for k in state_dict if (k.startswith(prefix) or k.startswith(dp)) and k not in used
                 and not any(m in k[len(prefix):] if k.startswith(prefix) else False for m in TRAINING_ONLY_MARKERS)]
        if extra:
            raise ValueError(f"unexpected action-expert keys: {sorted(extra)[:8]}{' ...' if len(extra) > 8 else ''}")
    return tree
