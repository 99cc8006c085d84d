"""LoRA fine-tuning: rank 64, alpha 16, LR 5e-5 adapters on the LLM projections; the base LLM is
frozen, the action expert trains fully. Same variants as configs/finetune.py.

  molmoact2-train --config=configs/finetune_lora.py:libero --workdir=DIR --config.init_from=MOLMOACT2_CKPT
"""
from molmoact2_configs import finetune


def get_config(arg: str | None = None):
    c = finetune.get_config(arg)
    c.recipe = "finetune_lora"
    c.lora.enabled = True
    if c.variant.endswith("tiny"):
        c.lora.rank = 4
        c.lora.lr = 1e-3
    return c
