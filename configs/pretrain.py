"""MolmoAct2 pre-training: the reference recipe (spec 16.1 stage 1, 16.2).

  Full run (64 H100 / TPU pod):  molmoact2-train --config=configs/pretrain.py --workdir=...
  CPU smoke run:                 molmoact2-train --config=configs/pretrain.py:tiny --workdir=/tmp/run
Any field can be overridden, e.g. --config.total_steps=10 --config.mesh.fsdp=8 --config.model.llm.rope_theta=1e6.
"""
import ml_collections

from configs.model import get_model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "full"
    if variant not in ("full", "tiny"):
        raise ValueError(f"configs/pretrain.py: unknown variant {variant!r} (use ':tiny' or nothing)")
    tiny = variant == "tiny"
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.model = get_model_config(variant)
    c.model.use_action_expert = False   # MolmoAct2-Pretrain is the discrete AR VLA (--add_action_expert=false)
    c.model.action_mode = "discrete"
    c.seed = 6198                      # reference train seed
    c.total_steps = 20 if tiny else 200_000
    c.log_every_steps = 1 if tiny else 10

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: fill with the remaining devices

    c.data = ml_collections.ConfigDict()
    c.data.global_batch_size = 4 if tiny else 128
    c.data.seq_len = 256 if tiny else 4200
    c.data.seed = 50189                # reference data seed
    c.data.robot_share = 0.9           # 90% robot / 10% multimodal rehearsal
    c.data.source = "synthetic"        # until a dataset is configured (see data_pipelines)

    c.optimizer = ml_collections.ConfigDict(dict(
        b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.0, clip_grad_norm=1.0,
        warmup_steps=2 if tiny else 200, final_lr_fraction=0.1,
        # Reference peak LRs; the tiny variant uses larger ones so a CPU run visibly learns.
        lr=ml_collections.ConfigDict(dict(vit=1e-3, connector=1e-3, llm=1e-3, action_expert=1e-3) if tiny else
                                     dict(vit=5e-6, connector=5e-6, llm=1e-5, action_expert=5e-5)),
    ))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=10 if tiny else 1000, keep_last=3,
                                                  keep_every=0, async_save=True))
    c.trainer = trainer_config(tiny)
    c.lora = ml_collections.ConfigDict(dict(enabled=False, rank=64, alpha=16.0, lr=5e-5,
                                            targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                     "up_proj", "down_proj")))
    return c


def trainer_config(tiny: bool) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        grad_accum_steps=1,
        max_consecutive_bad_steps=5,           # abort after this many non-finite steps in a row
        eval_every_steps=10 if tiny else 1000,
        eval_batches=1 if tiny else 8,
        profile_steps=(),                      # (first_step, num_steps): a jax.profiler trace window
        peak_tflops_per_device=0.0,            # > 0 enables the MFU metric (e.g. 989 for H100 bf16, 459 for v5p)
        compilation_cache_dir="~/.cache/molmoact2_jax/xla",
    ))
