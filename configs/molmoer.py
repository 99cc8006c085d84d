"""Molmo2-ER, "specialize-then-rehearse", as two data-mixture stages run one after the other:

  stage 1: molmoact2-train --config=configs/molmoer.py:specialize --workdir=ER1 --config.init_from=MOLMO2_4B
  stage 2: molmoact2-train --config=configs/molmoer.py:rehearse --workdir=ER2 --config.init_from=ER1/checkpoints/20000
  CPU smoke run: --config=configs/molmoer.py:tiny
Stage 1: 20K steps on the embodied-reasoning corpus plus 8% Tulu-3 text. Stage 2: 1.5K steps with an
embodied/general mix of p = 0.5 at sequence length 16384. The VLM corpora are not public in the reference
(docs/model_notes.md, "VLM rehearsal"): `data.sources` lists the mixture tags; point each at a converted VLM source.
"""
from molmoact2_configs import common

STAGES = {
    "specialize": dict(steps=20_000, seq_len=4096, mixture=(("embodied_reasoning", 0.92), ("tulu3_text", 0.08))),
    "rehearse": dict(steps=1_500, seq_len=16384, mixture=(("embodied_reasoning", 0.5), ("general_multimodal", 0.5))),
}


def get_config(arg: str | None = None):
    variant = arg or "specialize"
    common.check_variant("molmoer", variant, set(STAGES) | {"tiny"})
    stage = STAGES["specialize" if variant == "tiny" else variant]
    c = common.base(variant, "molmoer")
    c.stage = "specialize" if variant == "tiny" else variant
    c.model.use_action_expert = False     # a VLM: no action head
    c.model.action_mode = "discrete"
    c.total_steps = 20 if variant == "tiny" else stage["steps"]
    if variant != "tiny":
        c.data.seq_len = stage["seq_len"]
        c.model.max_sequence_length = max(c.model.max_sequence_length, stage["seq_len"])
    c.data.sources = common.mixture_sources(stage["mixture"])
    return c
