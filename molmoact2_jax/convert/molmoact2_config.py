"""Model config <-> the `config.json` of a MolmoAct2 Hugging Face release folder.

The release spelling: `text_config` / `vit_config` / `adapter_config` / `action_expert_config`
sections, every token id at the top level, and the expert's `max_action_horizon` / `max_action_dim` as top-level
keys (they are removed from `action_expert_config` on save). The backbone sections are read by
`molmo2_config.model_config_from_hf` (which also accepts the transformers spelling); this module adds the expert,
the flow and the robot constants, and writes the release spelling back.

Writing with `original=` (the config.json an import preserved) keeps every key of the original and only touches the
values that our config changed, in the spelling the original used, so import -> export reproduces it exactly.
"""
from __future__ import annotations

import copy

import ml_collections

from molmoact2_jax.convert import molmo2_config
from molmoact2_jax.convert.molmo2_config import first_of as _first
from molmoact2_jax.models.vit import num_built_layers

TOKEN_ID_KEYS = {  # config.json key -> our config.tokens field
    **molmo2_config.TOKEN_KEYS,
    "image_high_res_id": "image_patch",  # equals image_patch_id in the releases
}
COUNT_KEYS = ("num_state_tokens", "num_action_tokens", "num_depth_tokens")


def molmoact2_config_from_hf(hf: dict, source: str = "config.json", tokenizer_file: str | None = None
                             ) -> ml_collections.ConfigDict:
    """Our model config from a parsed MolmoAct2 config.json (and the folder's tokenizer.json, which supplies the
    token ids config.json does not state). Errors name `source` and the offending key."""
    c = molmo2_config.model_config_from_hf(hf, source, tokenizer_file)
    text = hf["text_config"]
    if text.get("rope_scaling"):
        raise ValueError(f"{source}: text_config.rope_scaling={text['rope_scaling']!r} is not supported "
                         f"(only unscaled RoPE)")
    if "action_expert_config" not in hf:
        raise ValueError(f"{source}: missing section 'action_expert_config' (not a MolmoAct2 config; use "
                         f"import-molmo2 for a backbone-only Molmo2 folder)")
    ae_hf = hf["action_expert_config"]
    ae = c.action_expert
    try:
        layers = int(_first(ae_hf, "num_layers", "num_hidden_layers", default=c.llm.num_layers))
        if layers != c.llm.num_layers:
            raise ValueError(f"{source}: action_expert_config.num_layers={layers} must equal "
                             f"text_config.num_hidden_layers={c.llm.num_layers}")
        # num_layers / context_dim are references to the LLM fields in our config: never assign them here.
        ae.hidden_size = int(ae_hf["hidden_size"])
        ae.num_heads = int(_first(ae_hf, "num_heads", "num_attention_heads"))
        ae.mlp_ratio = float(ae_hf.get("mlp_ratio", ae.mlp_ratio))
        ae.ffn_multiple_of = int(ae_hf.get("ffn_multiple_of", 256))
        ae.timestep_embed_dim = int(ae_hf.get("timestep_embed_dim", 256))
        ae.rope_theta = float(_first(ae_hf, "rope_theta", "rope_base", default=10000.0))
        ae.max_action_dim = int(_first(hf, "max_action_dim", default=ae_hf.get("max_action_dim", 32)))
        ae.max_action_horizon = int(_first(hf, "max_action_horizon", default=ae_hf.get("max_action_horizon", 30)))
    except KeyError as e:
        raise ValueError(f"{source}: action_expert_config has no {e.args[0]!r}") from None
    ae.depth_gate = bool(hf.get("action_expert_depth_gate", False))
    ae.depth_gate_per_layer = bool(hf.get("action_expert_depth_gate_per_layer", True))
    c.connector.pooling_attention_mask = bool(hf["adapter_config"].get("pooling_attention_mask", True))
    c.flow.num_steps = int(hf.get("flow_matching_num_steps", c.flow.num_steps))
    c.action_mode = str(hf.get("action_mode", c.action_mode))
    c.use_action_expert = True
    return c


def _released_sections(cfg) -> dict:
    """{section or None (top level): {key: value}} in the release spelling."""
    v, cn, m, ae, t = cfg.vit, cfg.connector, cfg.llm, cfg.action_expert, cfg.tokens
    grid = v.image_size // v.patch_size
    vit = {
        "hidden_size": v.hidden_size, "intermediate_size": v.mlp_dim, "num_hidden_layers": v.num_layers,
        "num_attention_heads": v.num_heads, "num_key_value_heads": v.num_heads, "head_dim": v.head_dim,
        "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": v.layer_norm_eps,
        "image_default_input_size": [v.image_size, v.image_size], "image_patch_size": v.patch_size,
        "image_num_pos": grid * grid,
    }
    adapter = {
        "vit_layers": list(v.feature_layers), "pooling_attention_mask": bool(cn.pooling_attention_mask),
        "hidden_size": cn.hidden_size, "num_attention_heads": cn.num_heads, "num_key_value_heads": cn.num_heads,
        "head_dim": cn.head_dim, "intermediate_size": cn.mlp_dim, "text_hidden_size": m.hidden_size,
        "hidden_act": "silu",
    }
    text = {
        "hidden_size": m.hidden_size, "num_attention_heads": m.num_heads, "num_key_value_heads": m.num_kv_heads,
        "head_dim": m.head_dim, "vocab_size": m.vocab_size, "additional_vocab_size": m.additional_vocab_size,
        "num_hidden_layers": m.num_layers, "intermediate_size": m.mlp_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_sequence_length, "rope_theta": m.rope_theta, "rope_scaling": None,
        "layer_norm_eps": m.rms_norm_eps, "use_qk_norm": True, "qk_norm_type": "qwen3", "qkv_bias": False,
        "norm_after": False, "tie_word_embeddings": False,
    }
    expert = {
        "hidden_size": ae.hidden_size, "num_layers": ae.num_layers, "num_heads": ae.num_heads,
        "mlp_ratio": ae.mlp_ratio, "ffn_multiple_of": ae.ffn_multiple_of,
        "timestep_embed_dim": ae.timestep_embed_dim, "rope_theta": ae.rope_theta, "qk_norm": True,
        "context_layer_norm": True, "rope": True, "causal_attn": False, "dropout": 0.0,
    }
    top = {
        "architectures": ["MolmoAct2ForConditionalGeneration"], "model_type": "molmoact2",
        "max_action_horizon": ae.max_action_horizon, "max_action_dim": ae.max_action_dim,
        "flow_matching_num_steps": cfg.flow.num_steps, "action_mode": cfg.action_mode,
        "action_expert_depth_gate": bool(ae.depth_gate),
        "action_expert_depth_gate_per_layer": bool(ae.depth_gate_per_layer),
        "tie_word_embeddings": False, "torch_dtype": "float32",
    }
    for key, field in TOKEN_ID_KEYS.items():
        top[key] = int(t[field])
    for key in COUNT_KEYS:
        top[key] = int(t[key])
    return {"vit_config": vit, "adapter_config": adapter, "text_config": text, "action_expert_config": expert,
            None: top}


# Other spellings a preserved original may use: (section, our key) -> alternatives, first match wins.
_SECTION_ALIASES = {"vit_config": ("vit_config", "vision_config")}
_KEY_ALIASES = {
    "image_default_input_size": ("image_size",), "image_patch_size": ("patch_size",),
    "vit_layers": ("vision_feature_layer",), "layer_norm_eps": ("rms_norm_eps",), "torch_dtype": ("dtype",),
    "num_layers": ("num_hidden_layers",), "num_heads": ("num_attention_heads",),
}


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def hf_molmoact2_config(cfg, original: dict | None = None, dtype: str = "float32") -> dict:
    """The MolmoAct2 config.json dict for `cfg`. With `original`, every key of it is kept and only values that
    differ from `cfg` are replaced (in the original's spelling); keys the original lacks are added."""
    out = copy.deepcopy(original) if original else {}
    for section, values in _released_sections(cfg).items():
        if section is None:
            dest = out
        else:
            name = next((s for s in _SECTION_ALIASES.get(section, (section,)) if s in out), section)
            dest = out.setdefault(name, {})
        for key, value in values.items():
            name = next((k for k in (key,) + _KEY_ALIASES.get(key, ()) if k in dest), key)
            if name == "vision_feature_layer":  # transformers spelling: non-negative indices
                value = [l % cfg.vit.num_layers for l in value]
            if name == "rope_theta" and section == "text_config" and "rope_parameters" in dest:
                rp = dest["rope_parameters"]
                if not _same(rp.get("rope_theta"), value):
                    rp["rope_theta"] = value
                continue
            if name not in dest or not _same(dest[name], value):
                dest[name] = value
    key = "dtype" if "dtype" in out and "torch_dtype" not in out else "torch_dtype"
    out[key] = dtype
    return out


def vit_blocks_in_checkpoint(cfg) -> int:
    """A checkpoint holds max(vit_layers) + 1 ViT blocks, not num_hidden_layers."""
    return num_built_layers(cfg.vit)
