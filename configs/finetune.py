"""Embodiment fine-tuning from allenai/MolmoAct2: robot data only, K=8 flow samples, full
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
demo and demo_think: molmoact2-demo's settings (the tiny model on MetaWorld shards the demo records itself).
MolmoThink fine-tuning: <embodiment>_think (and think_tiny / <embodiment>_think_tiny): styles robot_action :
robot_depth_action = 1 : 1, 10% depth-code input noise, per-layer depth gates; data converted with
--depth-codes.
Reference: batch 64, 50K steps (README; the paper trains YAM/DROID/SO 100K), LLM 1e-5, ViT/connector 5e-6,
expert 5e-5.
"""
import ml_collections

from molmoact2_configs import common

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
    if variant in ("demo", "demo_think"):
        return demo_config(variant)
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


def demo_config(variant: str):
    """molmoact2-demo (molmoact2_jax/demo/): `demo` trains the tiny model on MetaWorld reach + push and scores it in
    closed loop; `demo_think` trains MolmoThink's three styles on depth recorded in simulation. robot_tiny plus the
    demo's settings; the demo fills in the paths of the shards, stats and tokenizers it makes. config.demo holds what
    is no training field: recording, drawing and closed-loop evaluation."""
    think = variant == "demo_think"
    c = get_config("robot_tiny")
    c.variant = variant
    c.data.source = "arrayrecord"
    c.model.vit.image_size = 112              # also the recorded camera size: 8x8 patches, 16 tokens per camera
    # One width (--config.model.vit.hidden_size) sizes the ViT and the connector; one learning rate
    # (--config.optimizer.lr.llm) drives every parameter group.
    width, heads = c.model.vit.get_ref("hidden_size"), c.model.vit.get_ref("num_heads")
    c.model.connector.hidden_size = width.to_int()
    c.model.vit.head_dim = c.model.connector.head_dim = width // heads
    c.model.vit.mlp_dim = width * 2
    for group in [g for g in c.optimizer.lr.keys() if g != "llm"]:
        c.optimizer.lr[group] = c.optimizer.lr.get_ref("llm").to_float()
    c.model.action_mode = "both" if think else "continuous"
    if not think:
        c.model.flow.num_samples = 4          # the Think run keeps the recipe's 8 (10% more time per step)
    c.data.global_batch_size = 8 if think else 32
    c.data.seq_len = 320 if think else 128    # two 112 px cameras: 121-token prompts; Think adds 102 depth tokens
    c.data.augment = False                    # fixed cameras: crops and rotations move the pixels that place the goal
    c.optimizer.warmup_steps = 20
    c.total_steps = 600 if think else 1200
    c.checkpoint.every_steps = c.get_ref("total_steps") // 2
    c.trainer.eval_every_steps = c.get_ref("total_steps") // 4
    c.trainer.eval_batches = 2
    if think:
        c.model.action_expert.depth_gate = True
        c.model.action_expert.depth_gate_per_layer = True
        c.data.style_weights.update(dict(robot_action=1.0, robot_depth=1.0, robot_depth_action=1.0))
    # Why these defaults: the demo's runs in docs/experiments/demo_runs.md (60 closed-loop seeds per task).
    c.demo = ml_collections.ConfigDict(dict(
        think=think,                          # the MolmoThink demo instead of the closed-loop one
        tasks="reach-v3,push-v3",             # MetaWorld tasks, comma-separated
        # policy order. behindGripper shows the goal at 1.3 px per cm (corner2: 0.4); corner2 + the wrist view
        # left the held-out dx error above the mean action's
        cameras="corner2,gripperPOV" if think else "behindGripper,corner",
        # expert episodes: one count, or one per task. reach holds 56/60 from 40 and 50/60 from 30; push gains
        # from more (16/60 from 40, 28/60 from 50); the push expert keeps about 37 of 50 under DART
        train_episodes="15" if think else "30,50",
        heldout_episodes=3,                   # per task, recorded without noise on seeds 500+ (training: 0+)
        lossless=True,                        # PNG frames: LeRobot's mp4 turns the 2-pixel goal marker grey
        goal_marker=0.0 if think else 0.05,   # goal drawn with this radius (m), 13 px wide; 0: the task's own
        # the puck drawn blue and 0.045 m wide (its contacts stay 0.02 m): the first dx then follows the puck
        # (correlation 0.55 against 0.03), push 11/60 -> 16/60. "none" / 0: as the task draws it
        object_color="none" if think else "0.1,0.4,1.0",
        object_marker=0.0 if think else 0.045,
        # DART: std of noise added to the executed expert actions of the training episodes (labels stay clean):
        # reach 57/60 against 51/60 without, push 11/60 against 5/60
        action_noise=0.0 if think else 0.5,
        vqvae_steps=300,                      # demo_think: depth VQ-VAE steps
        think_eval_frames=40,                 # demo_think: held-out frames whose depth codes are scored
        execute_steps=8,                      # actions of each predicted chunk executed before re-planning
        max_steps=120,                        # closed-loop steps per episode
        mode="continuous",                    # closed-loop action head: continuous or discrete (action_mode both)
        # Evaluation protocol (docs/experiments/demo_runs.md): every choice of a default is made on the
        # validation block; the test block is evaluated once per change of the defaults and never chosen on.
        # Both are disjoint from the recorded seeds (training 0+, held-out 500+).
        eval_block="test",                    # the block demo_summary.json's closed_loop table reports
        eval_episodes=100,                    # closed-loop episodes per task and policy on that block
        validation_seed=900,                  # validation block: seeds 900+ (every run A-AD was compared on it)
        test_seed=100_000,                    # test block: seeds 100000+
        validation_episodes=0,                # model episodes per task on the validation block too (0: none)
        workers=2,                            # processes recording, converting and running closed loop (0: none)
    ))
    return c
