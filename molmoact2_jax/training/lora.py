"""LoRA adapters on the LLM's projection kernels (rank 64, alpha 16 in the reference fine-tuning).

Adapters live beside the model params under `params["lora"]`, mirroring the targeted kernels' paths:
`lora_a` [layers, *kernel_in_dims, rank] and `lora_b` [layers, rank, *kernel_out_dims], carrying the kernel's logical
axes so they shard like it. `merge` adds `alpha / rank * A @ B` to each targeted kernel before the forward pass;
`lora_b` starts at zero, so the merged model equals the base model at initialisation. The base LLM is frozen by the
optimizer (its gradients are never computed), so only the adapters (and any unfrozen group) train.
The reference's LoRA dropout (0.05) is not applied: merging the adapters into the kernel needs a deterministic
delta.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# Kernel name -> number of leading input dims after the layer axis (o_proj contracts heads x head_dim).
_IN_DIMS = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2, "gate_proj": 1, "up_proj": 1, "down_proj": 1}


def _targets(blocks, lora_cfg):
    names = tuple(lora_cfg.targets)
    unknown = [n for n in names if n not in _IN_DIMS or n not in blocks]
    if unknown:
        raise ValueError(f"config.lora.targets: unknown LLM projection(s) {unknown}; choose from {sorted(_IN_DIMS)}")
    return names


def init_lora(rng, boxed_params, lora_cfg):
    """Boxed adapter tree for the LLM kernels named in `lora_cfg.targets`."""
    blocks = boxed_params["backbone"]["llm"]["blocks"]
    rank = int(lora_cfg.rank)
    out = {}
    for i, name in enumerate(_targets(blocks, lora_cfg)):
        kernel = blocks[name]["kernel"]
        shape, names = kernel.value.shape, tuple(kernel.names)
        n_in = _IN_DIMS[name]
        in_shape, out_shape = shape[1:1 + n_in], shape[1 + n_in:]
        fan_in = math.prod(in_shape)
        a = jax.random.uniform(jax.random.fold_in(rng, i), (shape[0], *in_shape, rank), jnp.float32,
                               -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
        b = jnp.zeros((shape[0], rank, *out_shape), jnp.float32)
        out[name] = {
            "lora_a": nn.LogicallyPartitioned(a, names[:1 + n_in] + ("lora_rank",)),
            "lora_b": nn.LogicallyPartitioned(b, (names[0], "lora_rank") + names[1 + n_in:]),
        }
    return {"backbone": {"llm": {"blocks": out}}}


def merge(params, lora_cfg):
    """params with `lora` adapters -> plain model params with the adapters folded into the kernels."""
    if "lora" not in params:
        return params
    scale = float(lora_cfg.alpha) / float(lora_cfg.rank)
    adapters = params["lora"]["backbone"]["llm"]["blocks"]
    blocks = dict(params["backbone"]["llm"]["blocks"])
    for name, ab in adapters.items():
        k = blocks[name]["kernel"]
        a, b = ab["lora_a"], ab["lora_b"]
        layers, rank = a.shape[0], a.shape[-1]
        delta = jnp.matmul(a.reshape(layers, -1, rank), b.reshape(layers, rank, -1)).reshape(k.shape)
        blocks[name] = dict(blocks[name], kernel=k + scale * delta.astype(k.dtype))
    llm = dict(params["backbone"]["llm"], blocks=blocks)
    out = {k: v for k, v in params.items() if k != "lora"}
    out["backbone"] = dict(params["backbone"], llm=llm)
    return out
