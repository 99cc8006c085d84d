"""Embodiment fine-tuning from allenai/MolmoAct2 (spec 16.1 stage 3): robot data only, K=8 flow samples, full
fine-tune with flow gradients flowing into the VLM (no insulation).

Your robot, from the released model (the text tokenizer and OpenFAST come from the checkpoint's assets, the norm
stats from SHARD_DIR/norm_stats.json, the norm tag from the shards; `robot` is the recipe for any robot's shards):
  molmoact2-train --config=configs/finetune.py:robot --workdir=DIR --config.init_from=MOLMOACT2_CKPT \
      --config.data.sources[0].path=SHARD_DIR [--config.data.sources[0].tag=NORM_TAG]
A tiny model from scratch on CPU (tokenizer, OpenFAST and norm stats from the shard folder: molmoact2-data stats,
tokenizer and openfast SHARD_DIR make them; sequence length and action horizon sized from the data):
  molmoact2-train --config=configs/finetune.py:robot_tiny --workdir=DIR --config.data.sources[0].path=SHARD_DIR
Several sources and held-out eval sources (configs/common.py): --config.data.sources=DIR1 --config.data.sources=DIR2
--config.data.eval_sources=HELDOUT_DIR.
Variants: robot and robot_tiny (any robot's shards, their own norm tag), droid, yam, so100, libero (full size; their
norm tag is the embodiment's, e.g. libero -> "libero", which molmoact2-eval asks for) and <embodiment>_tiny (CPU);
tiny and think_tiny: CPU smoke runs on synthetic data (so100-shaped), no other flag needed, never a data path.
MolmoThink fine-tuning: <embodiment>_think (and think_tiny / <embodiment>_think_tiny): styles robot_action :
robot_depth_action = 1 : 1, 10% depth-code input noise, per-layer depth gates (spec 14); data converted with
--depth-codes.
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
GENERIC = ("robot", "robot_tiny")           # any robot's shards: no embodiment, so no norm tag of their own
# CPU smoke runs with no other flag (every recipe has one): synthetic data, asked for by name here. Fine-tuning on
# shards is `robot_tiny` (or <embodiment>_tiny); these never read a data path.
SMOKE = ("tiny", "think_tiny")
GENERIC_STEPS = 50_000                      # the README's fine-tuning length


def get_config(arg: str | None = None):
    variant = arg or "so100"
    allowed = set(EMBODIMENTS) | set(GENERIC) | set(SMOKE) | {f"{e}{s}" for e in EMBODIMENTS
                                                 for s in ("_tiny", "_think", "_think_tiny")}
    common.check_variant("finetune", variant, allowed)
    think = "think" in variant
    generic, smoke = variant in GENERIC, variant in SMOKE
    emb = "" if generic else "so100" if smoke else variant.replace("_tiny", "").replace("_think", "")
    tag, _, steps = ("", None, GENERIC_STEPS) if generic else EMBODIMENTS[emb]
    c = common.base(variant, "finetune")
    tiny = variant.endswith("tiny")
    c.embodiment = emb
    c.model.use_action_expert = True
    c.model.action_mode = "both"
    c.model.flow.num_samples = 8
    c.model.flow.detach_vlm = False
    # converted shards, a path required (configs/common.py); the smoke variants name synthetic data
    c.data.source = "synthetic" if smoke else ""
    if tiny and not smoke:
        # Sized from the data (training/run_setup.py): a user's shards hold chunks of their robot's horizon (so100
        # converts 30 steps) and prompts of their cameras and tasks; the tiny model's 8 / 256 fit neither.
        c.model.action_expert.max_action_horizon = 0
        c.data.seq_len = 0
    else:
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
