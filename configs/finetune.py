"""Embodiment fine-tuning from allenai/MolmoAct2 (spec 16.1 stage 3): robot data only, K=8 flow samples, full
fine-tune with flow gradients flowing into the VLM (no insulation).

  molmoact2-train --config=configs/finetune.py:droid --workdir=DIR --config.init_from=MOLMOACT2_CKPT \
      --config.data.sources[0].path=DROID_SHARDS --config.data.norm_stats=... --config.data.tokenizer=...
Variants: droid, yam, so100, libero (full size) and tiny / <embodiment>_tiny (CPU); MolmoThink fine-tuning:
<embodiment>_think (and think_tiny / <embodiment>_think_tiny): styles robot_action : robot_depth_action = 1 : 1,
10% depth-code input noise, per-layer depth gates (spec 14); data converted with --depth-codes.
Reference: batch 64, 50K steps (README; the paper trains YAM/DROID/SO 100K), LLM 1e-5, ViT/connector 5e-6,
expert 5e-5.
"""
from configs import common

# embodiment -> (norm tag, horizon, steps)
EMBODIMENTS = {
    "droid": ("franka_droid", 15, 100_000),
    "yam": ("yam_dual_molmoact2", 30, 100_000),
    "so100": ("so100_so101_molmoact2", 30, 100_000),
    "libero": ("libero", 10, 50_000),
}


def get_config(arg: str | None = None):
    variant = arg or "so100"
    allowed = set(EMBODIMENTS) | {"tiny", "think_tiny"} | {f"{e}{s}" for e in EMBODIMENTS
                                                          for s in ("_tiny", "_think", "_think_tiny")}
    common.check_variant("finetune", variant, allowed)
    think = "think" in variant
    emb = variant.replace("_tiny", "").replace("_think", "").replace("think", "").replace("tiny", "") or "so100"
    tag, _, steps = EMBODIMENTS[emb]
    c = common.base(variant, "finetune")
    tiny = variant.endswith("tiny")
    c.embodiment = emb
    c.model.use_action_expert = True
    c.model.action_mode = "both"
    c.model.flow.num_samples = 8
    c.model.flow.detach_vlm = False
    if not tiny:
        c.model.action_expert.max_action_horizon = 30
        # EMA of the params, served by default (openpi's 0.99). Off in the tiny variants: a 20-step CPU run's EMA
        # would still be mostly the initial weights.
        c.ema.decay = 0.99
    c.data.global_batch_size = 4 if tiny else 64
    c.total_steps = 20 if tiny else steps
    c.data.sources = common.mixture_sources(((tag, 1.0),))
    if think:
        c.model.action_expert.depth_gate = True
        c.model.action_expert.depth_gate_per_layer = True
        c.data.style_weights.update(dict(robot_action=1.0, robot_depth=0.0, robot_depth_action=1.0))
        c.data.depth_code_input_noise_rate = 0.1
    return c
