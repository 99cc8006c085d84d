"""MolmoAct2 model configs: the released full-size model and a tiny CPU variant with the same structure, and the
token ids they carry.

Every recipe in `configs/` includes one of these as `config.model`; the library reads model configs, never recipes.
Token ids are counted from the base vocabulary as molmoact2_jax/token_layout.py lays them out; for the full model they
are the `allenai/MolmoAct2` release's, and a checkpoint's config.json is read for them when importing (ids differ
between releases). A run's text tokenizer sets them (set_token_layout).
"""
import dataclasses

import ml_collections

from molmoact2_jax.token_layout import (NUM_ACTION_TOKENS, NUM_DEPTH_TOKENS, NUM_STATE_TOKENS,
                                        robot_token_ids)

NUM_ADDED_EMBEDDINGS = 128  # rows of wte.new_embedding (the 14 multimodal tokens + spare)


def _tokens(base_vocab: int, eos: int, pad: int) -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict(robot_token_ids(base_vocab))
    t.base_vocab = base_vocab
    t.eos_token_id = eos     # <|im_end|>, also BOS
    t.pad_token_id = pad     # <|endoftext|>
    t.num_state_tokens = NUM_STATE_TOKENS
    t.num_action_tokens = NUM_ACTION_TOKENS
    t.num_depth_tokens = NUM_DEPTH_TOKENS
    return t


def get_model_config(variant: str = "full") -> ml_collections.ConfigDict:
    """`full`: the released MolmoAct2 (Qwen3-4B + SigLIP2 so400m); `tiny`: same structure, CPU sized."""
    if variant not in ("full", "tiny"):
        raise ValueError(f"model variant {variant!r}: expected 'full' or 'tiny'")
    c = ml_collections.ConfigDict()
    full = variant == "full"
    c.dtype = "bfloat16" if full else "float32"        # compute dtype; params are always fp32
    c.remat_policy = "dots_no_batch" if full else "none"  # see molmoact2_jax.models.layers.REMAT_POLICIES
    c.attention_impl = "auto"  # auto | xla | splash | cudnn: molmoact2_jax/models/attention.py (auto: by platform)
    c.scan_unroll = False                                # True unrolls the scanned layers (same param layout)
    c.max_sequence_length = 16384 if full else 1024
    c.action_mode = "both"   # "continuous" | "discrete" | "both" (docs/model_notes.md, "Encoder mask")
    c.use_action_expert = True  # False: the discrete-only MolmoAct2-Pretrain model (no flow head)
    c.loss = ml_collections.ConfigDict(dict(ce_weight=1.0, flow_weight=1.0, z_loss_weight=1e-4))

    c.vit = ml_collections.ConfigDict(dict(
        image_size=378 if full else 42,     # squash-resize target; the tiny grid (3x3) keeps the odd -1 padding
        patch_size=14,
        hidden_size=1152 if full else 32,
        num_heads=16 if full else 4,
        head_dim=72 if full else 8,
        mlp_dim=4304 if full else 64,
        num_layers=27 if full else 4,       # SigLIP2 depth; only max(feature_layers)+1 blocks are built
        feature_layers=(-3, -9) if full else (-1, -3),
        layer_norm_eps=1e-6,
        # Init of the learned positions. The full model starts from SigLIP2's. A from-scratch ViT (tiny) needs
        # positions on the scale of its patch embeddings (std ~0.6) that vary smoothly over the grid, or its tokens
        # do not say where things are: the tiny flow head, trained 600 steps to act on a square's place in the
        # image, reached first-step correlation 0.0 with normal(0.02), 0.9 with normal(1.0), and 0.79 vs 0.94-0.97
        # (normal(1.0) vs sincos2d) when trained on only 40 places (tests/test_learns_from_images.py).
        position_init="normal" if full else "sincos2d",   # "normal" (std position_init_std) | "sincos2d"
        position_init_std=0.02,
    ))
    c.connector = ml_collections.ConfigDict(dict(
        pool_size=2,                        # 2x2 windows
        num_heads=16 if full else 4,
        head_dim=72 if full else 8,
        hidden_size=1152 if full else 32,   # pooled width (= ViT width)
        mlp_dim=9728 if full else 48,       # SwiGLU projector inner width
        pooling_attention_mask=True,
    ))
    if full:
        tokens = _tokens(base_vocab=151669, eos=151645, pad=151643)
    else:
        # 512: room for the synthetic task's text tokenizer (training/synthetic_data.py) to hold its prompt's words
        tokens = _tokens(base_vocab=512, eos=1, pad=0)
    c.tokens = tokens
    c.llm = ml_collections.ConfigDict(dict(
        hidden_size=2560 if full else 64,
        num_layers=36 if full else 2,
        num_heads=32 if full else 4,
        num_kv_heads=8 if full else 2,
        head_dim=128 if full else 16,
        mlp_dim=9728 if full else 96,
        vocab_size=tokens.vocab_size,               # rows of wte.embedding and lm_head
        additional_vocab_size=NUM_ADDED_EMBEDDINGS,  # rows of wte.new_embedding
        rope_theta=5_000_000.0,                     # docs/model_notes.md, "RoPE theta"
        rms_norm_eps=1e-6,
        qk_norm=True,
        bidirectional_image_attention=True,         # docs/model_notes.md, "Image attention"
    ))
    c.action_expert = ml_collections.ConfigDict(dict(
        hidden_size=768 if full else 32,
        num_heads=8 if full else 4,
        num_layers=c.llm.get_ref("num_layers"),     # block l reads LLM layer l: depths must match
        mlp_ratio=4.0,                              # docs/model_notes.md, "Expert MLP ratio"
        ffn_multiple_of=256 if full else 16,
        timestep_embed_dim=256 if full else 32,
        max_action_dim=32,
        max_action_horizon=30 if full else 8,
        rope_theta=10000.0,
        context_dim=c.llm.get_ref("num_kv_heads") * c.llm.get_ref("head_dim"),
        depth_gate=False,                           # Think checkpoints: per-layer sigmoid gate on depth K/V
        depth_gate_per_layer=True,
    ))
    c.flow = ml_collections.ConfigDict(dict(
        num_steps=10,                # Euler steps at inference
        time_offset=0.001, time_scale=0.999, beta_alpha=1.0, beta_beta=1.5,
        num_samples=4,               # K flow samples per example sharing one backbone pass
        detach_vlm=False,            # knowledge insulation: stop-gradient on the K/V the expert reads
        mask_action_dim_padding=True,
    ))
    return c


def set_token_layout(model_cfg, layout) -> None:
    """Takes every token id and the vocabulary size from a tokenizer's TokenLayout (the tokenizer defines them)."""
    for f in dataclasses.fields(layout):
        if f.name == "eos":
            model_cfg.tokens.eos_token_id = layout.eos
        elif f.name in model_cfg.tokens:
            model_cfg.tokens[f.name] = getattr(layout, f.name)
    model_cfg.llm.vocab_size = layout.vocab_size


def model_config_from_saved(saved: dict) -> ml_collections.ConfigDict:
    """A model config as saved with a checkpoint (model_config.json, a trainer step's meta) over the current schema:
    a field added since it was saved takes get_model_config("full")'s value (the released model's), every saved
    field keeps its value. The one place an older saved config meets newer code, so the model reads fields directly."""
    def merged(schema: dict, over: dict) -> dict:
        out = dict(schema)
        for key, value in over.items():
            out[key] = merged(schema[key], value) if isinstance(value, dict) and isinstance(schema.get(key),
                                                                                           dict) else value
        return out
    # resolved first: the schema's references (the expert's depth is the LLM's) must not tie the saved values
    cfg = merged(get_model_config("full").copy_and_resolve_references().to_dict(), saved)
    cfg["vit"]["feature_layers"] = tuple(cfg["vit"]["feature_layers"])   # JSON gives a list
    return ml_collections.ConfigDict(cfg)


def apply_overrides(cfg, overrides: dict):
    """Sets dotted fields ("flow.detach_vlm": True) on a ConfigDict, as --config.<field> flags do."""
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return cfg
