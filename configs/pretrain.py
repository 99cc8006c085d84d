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
    c.seed = 6198                      # reference train seed
    c.total_steps = 20 if tiny else 200_000
    c.log_every_steps = 1 if tiny else 10

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: fill with the remaining devices

    c.data = ml_collections.ConfigDict()
    c.data.global_batch_size = 4 if tiny else 128
    c.data.seq_len = 256 if tiny else 4200
    c.data.seed = 50189                # reference data seed
    c.data.robot_share = 0.9           # 90% robot / 10% multimodal rehearsal

    c.optimizer = ml_collections.ConfigDict(dict(
        b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.0, clip_grad_norm=1.0,
        warmup_steps=2 if tiny else 200, final_lr_fraction=0.1,
        lr=ml_collections.ConfigDict(dict(vit=5e-6, connector=5e-6, llm=1e-5, action_expert=5e-5)),
    ))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=10 if tiny else 1000, keep_last=3))
    return c
