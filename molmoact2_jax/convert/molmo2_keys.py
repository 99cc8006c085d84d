"""Backbone weights <-> the Molmo2 / MolmoAct2 Hugging Face layout (HF key names, PyTorch [out, in]).

Our Flax params keep per-head kernels ([in, heads, head_dim]) and stack layers on a leading axis for nn.scan;
the HF files keep fused q|k|v (`att_proj`) and up|gate (`ff_proj`) matrices, one key per layer. Everything here is
plain numpy and works tensor by tensor, so large checkpoints can be streamed.
"""
from __future__ import annotations

import numpy as np

from molmoact2_jax.models.vit import num_built_layers

VIT = "model.vision_backbone.image_vit."
POOL = "model.vision_backbone.image_pooling_2d."
PROJ = "model.vision_backbone.image_projector."
LLM = "model.transformer."


def _t(w):
    return np.ascontiguousarray(np.asarray(w).T)


def _heads_in(w, heads, head_dim):
    """torch [H*hd, in] -> kernel [in, H, hd]."""
    return _t(w).reshape(-1, heads, head_dim)


def _heads_out(w, heads, head_dim):
    """torch [out, H*hd] -> kernel [H, hd, out]."""
    return _t(w).reshape(heads, head_dim, -1)


def _vit_block_keys(cfg):
    v = cfg.vit
    h, hd = v.num_heads, v.head_dim
    # (hf suffix, flax path inside resblocks, to_flax, to_hf)
    return [
        ("attention.wq.weight", ("wq", "kernel"), lambda w: _heads_in(w, h, hd), lambda k: _t(k.reshape(k.shape[0], -1))),
        ("attention.wk.weight", ("wk", "kernel"), lambda w: _heads_in(w, h, hd), lambda k: _t(k.reshape(k.shape[0], -1))),
        ("attention.wv.weight", ("wv", "kernel"), lambda w: _heads_in(w, h, hd), lambda k: _t(k.reshape(k.shape[0], -1))),
        ("attention.wq.bias", ("wq", "bias"), lambda w: np.reshape(w, (h, hd)), lambda k: k.reshape(-1)),
        ("attention.wk.bias", ("wk", "bias"), lambda w: np.reshape(w, (h, hd)), lambda k: k.reshape(-1)),
        ("attention.wv.bias", ("wv", "bias"), lambda w: np.reshape(w, (h, hd)), lambda k: k.reshape(-1)),
        ("attention.wo.weight", ("wo", "kernel"), lambda w: _heads_out(w, h, hd), lambda k: _t(k.reshape(-1, k.shape[-1]))),
        ("attention.wo.bias", ("wo", "bias"), np.asarray, np.asarray),
        ("feed_forward.w1.weight", ("w1", "kernel"), _t, _t),
        ("feed_forward.w1.bias", ("w1", "bias"), np.asarray, np.asarray),
        ("feed_forward.w2.weight", ("w2", "kernel"), _t, _t),
        ("feed_forward.w2.bias", ("w2", "bias"), np.asarray, np.asarray),
        ("attention_norm.weight", ("attention_norm", "scale"), np.asarray, np.asarray),
        ("attention_norm.bias", ("attention_norm", "bias"), np.asarray, np.asarray),
        ("ffn_norm.weight", ("ffn_norm", "scale"), np.asarray, np.asarray),
        ("ffn_norm.bias", ("ffn_norm", "bias"), np.asarray, np.asarray),
    ]


def _connector_keys(cfg):
    c = cfg.connector
    h, hd = c.num_heads, c.head_dim
    flat_in = lambda k: _t(k.reshape(k.shape[0], -1))
    out = []
    for n in ("wq", "wk", "wv"):
        out += [(POOL + f"{n}.weight", ("connector", n, "kernel"), lambda w: _heads_in(w, h, hd), flat_in),
                (POOL + f"{n}.bias", ("connector", n, "bias"), lambda w: np.reshape(w, (h, hd)), lambda k: k.reshape(-1))]
    out += [(POOL + "wo.weight", ("connector", "wo", "kernel"), lambda w: _heads_out(w, h, hd),
             lambda k: _t(k.reshape(-1, k.shape[-1]))),
            (POOL + "wo.bias", ("connector", "wo", "bias"), np.asarray, np.asarray)]
    for n in ("w1", "w2", "w3"):
        out.append((PROJ + f"{n}.weight", ("connector", n, "kernel"), _t, _t))
    return out


def get_path(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def set_path(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def backbone_from_hf(tensors, cfg) -> dict:
    """`tensors`: mapping HF key -> array (a dict, or a lazy reader with __getitem__/__contains__).
    Returns the Flax `params` tree of molmoact2_jax.models.backbone.Backbone (numpy, float32)."""
    need = lambda k: _require(tensors, k)
    p: dict = {}
    set_path(p, ("vit", "patch_embedding", "kernel"), _t(need(VIT + "patch_embedding.weight")))
    set_path(p, ("vit", "patch_embedding", "bias"), np.asarray(need(VIT + "patch_embedding.bias")))
    set_path(p, ("vit", "positional_embedding"), np.asarray(need(VIT + "positional_embedding")))
    depth = num_built_layers(cfg.vit)
    for suffix, path, to_flax, _ in _vit_block_keys(cfg):
        stacked = np.stack([to_flax(need(f"{VIT}transformer.resblocks.{i}.{suffix}")) for i in range(depth)])
        set_path(p, ("vit", "resblocks") + path, stacked)
    for key, path, to_flax, _ in _connector_keys(cfg):
        set_path(p, path, to_flax(need(key)))

    m = cfg.llm
    # Import relies on the concatenation only: transformers' save_pretrained may split the two tables unevenly.
    table = np.concatenate([np.asarray(need(LLM + "wte.embedding")), np.asarray(need(LLM + "wte.new_embedding"))])
    if table.shape[0] != m.vocab_size + m.additional_vocab_size:
        raise ValueError(f"embedding tables have {table.shape[0]} rows in total; config expects vocab_size "
                         f"{m.vocab_size} + additional_vocab_size {m.additional_vocab_size}")
    set_path(p, ("llm", "wte", "embedding"), table[:m.vocab_size])
    set_path(p, ("llm", "wte", "new_embedding"), table[m.vocab_size:])
    set_path(p, ("llm", "ln_f", "scale"), np.asarray(need(LLM + "ln_f.weight")))
    set_path(p, ("llm", "lm_head", "kernel"), _t(need("lm_head.weight")))
    layers = [_llm_layer_from_hf(need, i, m) for i in range(m.num_layers)]
    for name in layers[0]:
        set_path(p, ("llm", "blocks") + name, np.stack([l[name] for l in layers]))
    return p


def _llm_layer_from_hf(need, i, m):
    b = f"{LLM}blocks.{i}."
    hd, nq, nkv = m.head_dim, m.num_heads, m.num_kv_heads
    qkv = np.asarray(need(b + "self_attn.att_proj.weight"))
    q, k, v = np.split(qkv, [nq * hd, (nq + nkv) * hd])
    up, gate = np.split(np.asarray(need(b + "mlp.ff_proj.weight")), 2)  # first half up, second half gate
    out = {
        ("attn_norm", "scale"): np.asarray(need(b + "attn_norm.weight")),
        ("ff_norm", "scale"): np.asarray(need(b + "ff_norm.weight")),
        ("q_proj", "kernel"): _heads_in(q, nq, hd),
        ("k_proj", "kernel"): _heads_in(k, nkv, hd),
        ("v_proj", "kernel"): _heads_in(v, nkv, hd),
        ("o_proj", "kernel"): _heads_out(need(b + "self_attn.attn_out.weight"), nq, hd),
        ("up_proj", "kernel"): _t(up),
        ("gate_proj", "kernel"): _t(gate),
        ("down_proj", "kernel"): _t(need(b + "mlp.ff_out.weight")),
    }
    if m.qk_norm:
        out[("q_norm", "scale")] = np.asarray(need(b + "self_attn.q_norm.weight"))
        out[("k_norm", "scale")] = np.asarray(need(b + "self_attn.k_norm.weight"))
    return out


def backbone_to_hf(params, cfg):
    """Yields (HF key, numpy array) pairs for the backbone, one tensor at a time (export streams them)."""
    p = params
    np_ = lambda x: np.asarray(x)
    yield VIT + "patch_embedding.weight", _t(get_path(p, ("vit", "patch_embedding", "kernel")))
    yield VIT + "patch_embedding.bias", np_(get_path(p, ("vit", "patch_embedding", "bias")))
    yield VIT + "positional_embedding", np_(get_path(p, ("vit", "positional_embedding")))
    for i in range(num_built_layers(cfg.vit)):
        for suffix, path, _, to_hf in _vit_block_keys(cfg):
            yield f"{VIT}transformer.resblocks.{i}.{suffix}", to_hf(np_(get_path(p, ("vit", "resblocks") + path)[i]))
    for key, path, _, to_hf in _connector_keys(cfg):
        yield key, to_hf(np_(get_path(p, path)))

    m = cfg.llm
    yield LLM + "wte.embedding", np_(get_path(p, ("llm", "wte", "embedding")))
    yield LLM + "wte.new_embedding", np_(get_path(p, ("llm", "wte", "new_embedding")))
    blocks = get_path(p, ("llm", "blocks"))
    flat_in = lambda k: _t(np_(k).reshape(k.shape[0], -1))
    for i in range(m.num_layers):
        b = f"{LLM}blocks.{i}."
        layer = lambda *path: np_(get_path(blocks, path)[i])
        yield b + "attn_norm.weight", layer("attn_norm", "scale")
        yield b + "ff_norm.weight", layer("ff_norm", "scale")
        yield b + "self_attn.att_proj.weight", np.concatenate(
            [flat_in(layer(n, "kernel")) for n in ("q_proj", "k_proj", "v_proj")])
        if m.qk_norm:
            yield b + "self_attn.q_norm.weight", layer("q_norm", "scale")
            yield b + "self_attn.k_norm.weight", layer("k_norm", "scale")
        o = layer("o_proj", "kernel")
        yield b + "self_attn.attn_out.weight", _t(o.reshape(-1, o.shape[-1]))
        yield b + "mlp.ff_proj.weight", np.concatenate([_t(layer("up_proj", "kernel")), _t(layer("gate_proj", "kernel"))])
        yield b + "mlp.ff_out.weight", _t(layer("down_proj", "kernel"))
    yield LLM + "ln_f.weight", np_(get_path(p, ("llm", "ln_f", "scale")))
    yield "lm_head.weight", _t(get_path(p, ("llm", "lm_head", "kernel")))


def _require(tensors, key):
    if key not in tensors:
        raise KeyError(f"checkpoint has no tensor {key!r}")
    return tensors[key]
