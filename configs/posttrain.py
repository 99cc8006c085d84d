"""MolmoAct2 post-training: adds the flow-matching action expert to MolmoAct2-Pretrain.

  molmoact2-train --config=configs/posttrain.py --workdir=DIR --config.init_from=PRETRAIN_CKPT
  Think variant (depth reasoning): --config=configs/posttrain.py:think (data converted with --depth-codes)
  CPU smoke runs: --config=configs/posttrain.py:tiny, :think_tiny
Reference: 100K steps, robot seq 2100, batch 128, expert LR 5e-5, K=4 flow samples, knowledge insulation on
(the paper detaches the VLM K/V from the flow loss; docs/model_notes.md, "Knowledge insulation"),
L_LM + L_flow ("both").
"""
from molmoact2_configs import common


def get_config(arg: str | None = None):
    variant = arg or "full"
    common.check_variant("posttrain", variant, ("full", "think", "tiny", "think_tiny"))
    c = common.base(variant, "posttrain")
    c.model.use_action_expert = True
    c.model.action_mode = "both"
    c.model.flow.num_samples = 4
    c.model.flow.detach_vlm = True        # knowledge insulation
    c.init_fresh = ("action_expert",)     # the expert starts fresh from the pretrain checkpoint
    c.total_steps = 20 if "tiny" in variant else 100_000
    c.data.sources = common.mixture_sources(common.MOLMOACT2_MIXTURE)
    c.data.robot_share = 0.9              # the remaining 10% is VLM rehearsal data (data.vlm_sources)
    if variant.startswith("think"):
        c.model.action_expert.depth_gate = True
        c.model.action_expert.depth_gate_per_layer = True
        c.data.style_weights.update(dict(robot_action=1.0, robot_depth=1.0, robot_depth_action=1.0))
    return c
