"""MolmoAct2 model configs: the released full-size model and a tiny CPU variant with the same structure, and the
token-id layout (spec 3.1) they carry.

Every recipe in `configs/` includes one of these as `config.model`; the library reads model configs, never recipes. Token ids follow spec section 3 (rule 3.1); for the full
model they are the `allenai/MolmoAct2` values of table 3.2 and must be read from a checkpoint's config.json when
importing (ids differ between releases).
"""
import dataclasses

import ml_collections

# The 14 multimodal tokens of spec 3.1 rule 4, in table order (ids vocab_size + i).
MULTIMODAL_FIELDS = ("image_start", "image_end", "image_patch", "image_col", "low_res_image_start",
                     "image_placeholder", "image_low", "frame_start", "frame_end", "video_placeholder", "points",
                     "token_index", "vit_index", "vit_loc")
NUM_ADDED_EMBEDDINGS = 128  # rows of wte.new_embedding (the 14 multimodal tokens + spare)
PAD_MULTIPLE = 1024          # embedding_size = vocab + robot tokens rounded up to this


def robot_token_ids(base_vocab: int, pad_multiple: int = PAD_MULTIPLE) -> dict:
    """Ids of the robot token families appended after the base tokenizer, spec 3.1 (in this order)."""
    ids = {}
    nxt = base_vocab
    for name in ("setup_start", "setup_end", "control_start", "control_end", "state_start", "state_end"):
        ids[name] = nxt
        nxt += 1
    ids["state_token_start"], nxt = nxt, nxt + 256
    for name in ("action_output", "action_start", "action_end"):
        ids[name] = nxt
        nxt += 1
    ids["action_token_start"], nxt = nxt, nxt + 2048
    for name in ("depth_output", "depth_start", "depth_end"):
        ids[name] = nxt
        nxt += 1
    ids["depth_token_start"], nxt = nxt, nxt + 128
    embedding_size = -(-nxt // pad_multiple) * pad_multiple
    ids["num_added_robot_tokens"] = nxt - base_vocab
    ids["vocab_size"] = embedding_size
    # The 14 multimodal tokens live in the extra table, at embedding_size + i (spec 3.1 rule 4).
    for i, name in enumerate(MULTIMODAL_FIELDS):
        ids[name] = embedding_size + i
    return ids


def _tokens(base_vocab: int, eos: int, pad: int) -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict(robot_token_ids(base_vocab))
    t.base_vocab = base_vocab
    t.eos_token_id = eos     # <|im_end|>, also BOS
    t.pad_token_id = pad     # <|endoftext|>
    t.num_state_tokens = 256
    t.num_action_tokens = 2048
    t.num_depth_tokens = 128
    return t


def get_model_config(variant: str = "full") -> ml_collections.ConfigDict:
    """`full`: the released MolmoAct2 (Qwen3-4B + SigLIP2 so400m); `tiny`: same structure, CPU sized."""
    if variant not in ("full", "tiny"):
        raise ValueError(f"model variant {variant!r}: expected 'full' or 'tiny'")
    c = ml_collections.ConfigDict()
    full = variant == "full"
    c.dtype = "bfloat16" if full else "float32"        # compute dtype; params are always fp32
    c.remat_policy = "dots_no_batch" if full else "none"  # see molmoact2_jax.models.layers.REMAT_POLICIES
    c.scan_unroll = False                                # True unrolls the scanned layers (same param layout)
    c.max_sequence_length = 16384 if full else 1024
    c.action_mode = "both"   # "continuous" | "discrete" | "both": encoder-mask rules of spec 10.1
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
        tokens = _tokens(base_vocab=300, eos=1, pad=0)
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
        rope_theta=5_000_000.0,                     # spec gap 20.2: read from the checkpoint when importing
        rms_norm_eps=1e-6,
        qk_norm=True,
        bidirectional_image_attention=True,         # spec gap 20.3: HF inference path; False = causal only
    ))
    c.action_expert = ml_collections.ConfigDict(dict(
        hidden_size=768 if full else 32,
        num_heads=8 if full else 4,
        num_layers=c.llm.get_ref("num_layers"),     # block l reads LLM layer l: depths must match
        mlp_ratio=4.0,                              # spec gap 20.1: 4.0 (released) vs 8/3 (code default)
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


def apply_overrides(cfg, overrides: dict):
    """Sets dotted fields ("flow.detach_vlm": True) on a ConfigDict, as --config.<field> flags do."""
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return cfg
