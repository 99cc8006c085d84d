"""MolmoAct2-Pretrain: the discrete autoregressive VLA, from Molmo2-ER. The reference recipe.

  molmoact2-train --config=configs/pretrain.py --workdir=DIR --config.init_from=MOLMO2_ER_CKPT \
      --config.data.sources[0].path=... (one converted shard directory per mixture tag)
  CPU smoke run: molmoact2-train --config=configs/pretrain.py:tiny --workdir=/tmp/run
Reference: 200K steps, global batch 128, seq 4200 with packing, 64 H100; 90% robot / 10% multimodal data.
"""
from molmoact2_configs import common


def get_config(arg: str | None = None):
    variant = arg or "full"
    common.check_variant("pretrain", variant, ("full", "tiny"))
    c = common.base(variant, "pretrain")
    c.model.use_action_expert = False     # --add_action_expert=false
    c.model.action_mode = "discrete"      # --action_format=discrete
    c.total_steps = 20 if variant == "tiny" else 200_000
    if variant != "tiny":
        c.data.seq_len = 4200
    c.data.sources = common.mixture_sources(common.MOLMOACT2_MIXTURE)
    c.data.robot_share = 0.9              # the remaining 10% is VLM rehearsal data (data.vlm_sources)
    return c
