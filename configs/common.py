"""Pieces shared by every recipe: the run skeleton (mesh, data, optimizer, checkpoint, trainer, lora fields).

Recipes call `base(variant)` and change what their stage needs. Variant "tiny" is a CPU-sized model (fp32);
anything else is the full-size model (bf16 compute, fp32 params).

Data (config.data; molmoact2_jax/training/run_setup.py works it out before anything is written or compiled):
  source        "synthetic": a generated task, for smoke runs; only when asked for by that name, and never together
                with a data path. "" (the default of every full-size and fine-tune recipe): converted shards, which
                need data.sources[*].path; "arrayrecord" says the same explicitly. The CPU smoke recipes (tiny
                pretrain, posttrain, molmoer) name "synthetic" since they have no paths.
  sources       converted shard directories (molmoact2-data convert), each an entry {path, weight, tag}, or just a
                path. On the command line: --config.data.sources[0].path=DIR fills a recipe's entry; repeated
                --config.data.sources=DIR1 --config.data.sources=DIR2 replaces the list with those directories
                (weight 1, the shards' tag); --config.data.sources='({"path": "D1", "weight": 3}, "D2")' gives
                weights or tags.
  eval_sources  held-out shard directories, given the same way (--config.data.eval_sources=DIR); the trainer's
                eval (trainer.eval_every_steps, eval_batches) reads them in order. Empty: eval reads the training
                sources in order, without augmentation (not held out).
  tag           per source, the norm tag its examples use (the stats entry, the tag a served policy is asked
                for); "" takes the shards' own tag (index.json `tag`).
  norm_stats, tokenizer, openfast
                "" finds them: the tokenizer and OpenFAST in config.init_from's assets, else in the first source's
                shard folder (SHARD_DIR/tokenizer.json, SHARD_DIR/openfast/; made by molmoact2-data tokenizer and
                molmoact2-data openfast); norm stats in each source's SHARD_DIR/norm_stats.json (molmoact2-data
                stats), never from init_from (the stats describe the data trained on). A path given here wins.
  seq_len       tokens per example; 0 sizes it from the data (the longest example of a sample of each source,
                plus headroom). model.action_expert.max_action_horizon = 0 likewise takes the data's horizon.
"""
import ml_collections

from molmoact2_jax.models.config import get_model_config

REFERENCE_LR = dict(vit=5e-6, connector=5e-6, llm=1e-5, action_expert=5e-5)   # docs/model_notes.md, "Training recipe"
TINY_LR = dict(vit=1e-3, connector=1e-3, llm=1e-3, action_expert=1e-3)        # so a CPU run visibly learns

# Robot mixture of pre- and post-training: tag -> sampling rate before the robot/VLM split.
MOLMOACT2_MIXTURE = (
    ("yam_dual_molmoact2", 0.30), ("so100_so101_molmoact2", 0.30), ("franka_droid", 0.30),
    ("franka_molmoact", 0.025), ("google_robot_bc_z", 0.025), ("google_robot_fractal", 0.025),
    ("widowx_bridge", 0.025),
)


def mixture_sources(mixture) -> tuple:
    """`data.sources` entries for a tag mixture; users fill in each tag's converted shard directory (`path`). A
    tuple, so that the command line can also replace it (ml_collections overrides tuples, not lists)."""
    return tuple(ml_collections.ConfigDict(dict(tag=tag, path="", weight=rate)) for tag, rate in mixture)


def base(variant: str, recipe: str) -> ml_collections.ConfigDict:
    tiny = variant == "tiny" or variant.endswith("_tiny")
    c = ml_collections.ConfigDict()
    c.recipe, c.variant = recipe, variant
    c.model = get_model_config("tiny" if tiny else "full")
    c.seed = 6198                                 # reference train seed
    c.total_steps = 20 if tiny else 100_000
    c.init_from = ""                              # params-only start: a params checkpoint or a step directory
    c.init_fresh = ()                             # groups initialised fresh instead of loaded (e.g. action_expert)
    # -1 fills with the remaining devices: tiny runs data-parallel, full runs FSDP over every device.
    # slice: the DCN axis of multi-slice runs (one slice per pod slice; ICI axes are per slice).
    c.mesh = ml_collections.ConfigDict(dict(slice=1, data=-1, fsdp=1, tensor=1) if tiny else
                                       dict(slice=1, data=1, fsdp=-1, tensor=1))
    c.data = ml_collections.ConfigDict(dict(
        source="synthetic" if tiny else "",       # see the module docstring; recipes with data paths set ""
        sources=(), eval_sources=(), norm_stats="", tokenizer="", openfast="",
        vlm_sources=[],                           # .parquet/.jsonl VLM rehearsal files (data_pipelines vlm.py)
        robot_share=1.0,                          # with vlm_sources: share of robot batches
        global_batch_size=4 if tiny else 128,
        seq_len=256 if tiny else 2100,
        seed=50189,                               # reference data seed
        worker_count=0 if tiny else 8,
        max_cameras=3, augment=True,
        # MolmoThink: training style per example; depth styles need shards with depth codes.
        style_weights=ml_collections.ConfigDict(dict(robot_action=1.0, robot_depth=0.0, robot_depth_action=0.0)),
        depth_code_input_noise_rate=0.0,          # share of teacher-forced depth-code inputs made random
        synthetic_action_dim=4,                   # source "synthetic": action dims of the generated task
    ))
    c.optimizer = ml_collections.ConfigDict(dict(
        b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.0, clip_grad_norm=1.0,
        warmup_steps=2 if tiny else 200, final_lr_fraction=0.1, freeze=(),
        lr=ml_collections.ConfigDict(TINY_LR if tiny else REFERENCE_LR),
    ))
    # EMA of the params (openpi's ema_decay): 0 = off. Kept sharded like the params, checkpointed, used by the
    # trainer's eval and, by default, by Policy.load / export-hf / molmoact2-serve (--weights ema|raw).
    c.ema = ml_collections.ConfigDict(dict(decay=0.0))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=10 if tiny else 1000, keep_last=3, keep_every=0,
                                                  async_save=True))
    # Logical axis -> mesh axis rules, [[logical_name, mesh_axis | [mesh_axes] | None], ...]; None: the defaults
    # of molmoact2_jax/sharding/rules.py.
    c.sharding = ml_collections.ConfigDict(dict(rules=None))
    c.trainer = ml_collections.ConfigDict(dict(
        grad_accum_steps=1,
        max_consecutive_bad_steps=5,              # abort after this many non-finite steps in a row
        eval_every_steps=10 if tiny else 1000,
        eval_batches=1 if tiny else 8,
        profile_steps=(),                         # (first_step, num_steps): a jax.profiler trace window
        peak_tflops_per_device=0.0,               # > 0 enables the MFU metric (e.g. 989 for H100 bf16)
        compilation_cache_dir="~/.cache/molmoact2_jax/xla",
    ))
    c.lora = ml_collections.ConfigDict(dict(enabled=False, rank=64, alpha=16.0, lr=5e-5,
                                            targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                     "up_proj", "down_proj")))
    return c


def check_variant(recipe: str, variant: str, allowed) -> None:
    if variant not in allowed:
        raise ValueError(f"configs/{recipe}.py: unknown variant {variant!r}; choose from {sorted(allowed)}")
