"""Model config <-> the `config.json` of a Molmo2 / MolmoAct2 Hugging Face folder.

Reads both spellings: transformers' Molmo2 (`vision_config`, `adapter_config.vision_feature_layer`,
`text_config.rope_parameters`) and the released checkpoints' (`vit_config` with `image_default_input_size`,
`vit_layers`, `rope_theta`). Token ids always come from the file (they differ between releases).
Writes the transformers spelling, so `Molmo2ForConditionalGeneration.from_pretrained` loads the export.
"""
from __future__ import annotations

import os

import ml_collections
from tokenizers import Tokenizer

from molmoact2_jax.models.config import get_model_config, set_token_layout
from molmoact2_jax.models.vit import num_built_layers
from molmoact2_jax.token_layout import MULTIMODAL_FIELDS
from molmoact2_jax.tokenizers.text import HF_ID_KEYS, hf_token_ids, resolve_layout

# config.json key -> our config.tokens field (the text tokenizer's map, with EOS under its config name).
TOKEN_KEYS = {**{k: ("eos_token_id" if v == "eos" else v) for k, v in HF_ID_KEYS.items()},
               "pad_token_id": "pad_token_id"}


def first_of(d: dict, *keys, default=None):
    """The first of `keys` that `d` holds with a non-None value (configs spell fields several ways)."""
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return default


def model_config_from_hf(hf: dict, source: str = "config.json", tokenizer_file: str | None = None
                         ) -> ml_collections.ConfigDict:
    """Builds our model config from a parsed HF config.json (`source` names the file in errors). With the folder's
    `tokenizer_file`, the token layout is the folder's own (tokenizers.text.resolve_layout): config ids win, the
    rest come from the tokenizer's tokens by name, the layout rule fills the gaps
    (docs/model_notes.md, "Token layout")."""
    try:
        text = hf["text_config"]
        vis = hf.get("vision_config") or hf["vit_config"]
        adapter = hf["adapter_config"]
    except KeyError as e:
        raise ValueError(f"{source}: missing section {e.args[0]!r} (need text_config, vision_config or "
                         f"vit_config, adapter_config)") from None
    c = get_model_config("full")
    c.dtype = "float32"
    image_size = first_of(vis, "image_size", "image_default_input_size", default=[378, 378])
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    c.vit.update(dict(
        image_size=int(image_size),
        patch_size=int(first_of(vis, "patch_size", "image_patch_size", default=14)),
        hidden_size=int(first_of(vis, "hidden_size", "image_emb_dim")),
        num_heads=int(first_of(vis, "num_attention_heads", "image_num_heads")),
        head_dim=int(first_of(vis, "head_dim", "image_head_dim")),
        mlp_dim=int(first_of(vis, "intermediate_size", "image_mlp_dim")),
        num_layers=int(first_of(vis, "num_hidden_layers", "image_num_layers")),
        layer_norm_eps=float(first_of(vis, "layer_norm_eps", "image_norm_eps", default=1e-6)),
        feature_layers=tuple(int(x) for x in first_of(adapter, "vision_feature_layer", "vit_layers",
                                                      default=[-3, -9])),
    ))
    c.connector.update(dict(
        num_heads=int(adapter.get("num_attention_heads", c.vit.num_heads)),
        head_dim=int(adapter.get("head_dim", c.vit.head_dim)),
        hidden_size=int(adapter.get("hidden_size", c.vit.hidden_size)),
        mlp_dim=int(adapter["intermediate_size"]),
    ))
    rope = text.get("rope_parameters") or {}
    c.llm.update(dict(
        hidden_size=int(text["hidden_size"]),
        num_layers=int(text["num_hidden_layers"]),
        num_heads=int(text["num_attention_heads"]),
        num_kv_heads=int(text["num_key_value_heads"]),
        head_dim=int(text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]),
        mlp_dim=int(text["intermediate_size"]),
        vocab_size=int(text["vocab_size"]),
        additional_vocab_size=int(text.get("additional_vocab_size", 128)),
        rope_theta=float(first_of(rope, "rope_theta", default=text.get("rope_theta", 1_000_000.0))),
        rms_norm_eps=float(first_of(text, "rms_norm_eps", "layer_norm_eps", default=1e-6)),
        qk_norm=True,
    ))
    if text.get("qk_norm_type", "qwen3") != "qwen3":
        raise ValueError(f"{source}: text_config.qk_norm_type={text.get('qk_norm_type')!r}; only the per-head "
                         f"'qwen3' q/k norm of MolmoAct2 is supported")
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{source}: rope_type {rope.get('rope_type')!r} is not supported (only unscaled RoPE)")
    c.max_sequence_length = int(text.get("max_position_embeddings", c.max_sequence_length))
    t = c.tokens
    t.vocab_size = c.llm.vocab_size
    # Multimodal ids default to their rule-3.1 slots after the vocabulary, then the file overrides them.
    for i, name in enumerate(MULTIMODAL_FIELDS):
        t[name] = c.llm.vocab_size + i
    for field, value in hf_token_ids(hf).items():
        t["eos_token_id" if field == "eos" else field] = value
    pad = hf.get("pad_token_id", text.get("pad_token_id"))
    if pad is not None:
        t.pad_token_id = int(pad)
    if tokenizer_file is not None and os.path.exists(tokenizer_file):
        try:
            backend = Tokenizer.from_file(tokenizer_file)
        except Exception as e:  # noqa: BLE001 - the library raises bare Exceptions on bad JSON
            raise ValueError(f"{tokenizer_file}: not a valid Hugging Face tokenizer.json ({e})") from None
        layout = resolve_layout(hf, backend, source, tokenizer_file)
        set_token_layout(c, layout)
        if pad is None and backend.token_to_id("<|endoftext|>") is not None:
            t.pad_token_id = int(backend.token_to_id("<|endoftext|>"))
        if layout.vocab_size != c.llm.vocab_size:
            raise ValueError(f"{source}: text_config.vocab_size={c.llm.vocab_size} but the token layout of "
                             f"{tokenizer_file} needs {layout.vocab_size} rows")
    elif hf.get("setup_start_token_id") is not None:  # the robot tokens start right after the base tokenizer
        t.base_vocab = t.setup_start
    t.num_added_robot_tokens = t.depth_token_start + t.num_depth_tokens - t.base_vocab
    return c


def hf_config_from_model(cfg) -> dict:
    """transformers `Molmo2Config` dict for the backbone of `cfg`."""
    v, c, m, t = cfg.vit, cfg.connector, cfg.llm, cfg.tokens
    return {
        "architectures": ["Molmo2ForConditionalGeneration"],
        "model_type": "molmo2",
        "vision_config": {
            "model_type": "molmo2_vision", "hidden_size": v.hidden_size, "intermediate_size": v.mlp_dim,
            "num_hidden_layers": num_built_layers(v), "num_attention_heads": v.num_heads,
            "num_key_value_heads": v.num_heads, "head_dim": v.head_dim, "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": v.layer_norm_eps, "image_size": [v.image_size, v.image_size],
            "patch_size": v.patch_size, "num_channels": 3, "attention_bias": True,
        },
        "adapter_config": {
            "model_type": "molmo2_adapter",
            # Written as non-negative indices: the export holds only the blocks that are built.
            "vision_feature_layer": [l % v.num_layers for l in v.feature_layers],
            "hidden_size": c.hidden_size, "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_heads,
            "head_dim": c.head_dim, "intermediate_size": c.mlp_dim, "text_hidden_size": m.hidden_size,
            "hidden_act": "silu", "mlp_bias": False, "attention_bias": True,
        },
        "text_config": {
            "model_type": "molmo2_text", "hidden_size": m.hidden_size, "num_attention_heads": m.num_heads,
            "num_key_value_heads": m.num_kv_heads, "head_dim": m.head_dim, "vocab_size": m.vocab_size,
            "additional_vocab_size": m.additional_vocab_size, "num_hidden_layers": m.num_layers,
            "intermediate_size": m.mlp_dim, "hidden_act": "silu", "rms_norm_eps": m.rms_norm_eps,
            "qk_norm_type": "qwen3", "max_position_embeddings": cfg.max_sequence_length,
            "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
            "attention_bias": False, "norm_after": False, "tie_word_embeddings": False,
        },
        "image_start_token_id": t.image_start, "image_end_token_id": t.image_end,
        "image_patch_id": t.image_patch, "low_res_image_start_token_id": t.low_res_image_start,
        "frame_start_token_id": t.frame_start, "frame_end_token_id": t.frame_end,
        "tie_word_embeddings": False,
    }
