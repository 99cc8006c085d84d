"""Analytic step FLOPs (models/flops.py) against XLA's own count of the same step with every layer unrolled.

XLA's cost_analysis counts a while-loop body once, so it is only a reference when nothing is scanned
(model.scan_unroll=True). Measured: hardware FLOPs within 1.3-3.2% of XLA's (the rest is elementwise work such as
the optimizer update and norms, which the analytic count leaves out).
"""
import numpy as np
import pytest

from molmoact2_configs.pretrain import get_config
from molmoact2_jax.models import flops
from molmoact2_jax.training import trainer


def config(size: str, expert: bool, samples: int = 1, remat: str = "none", detach: bool = False, freeze=()):
    c = get_config("tiny")
    c.model.use_action_expert, c.model.action_mode = expert, ("both" if expert else "discrete")
    c.model.flow.num_samples, c.model.flow.detach_vlm, c.model.remat_policy = samples, detach, remat
    c.optimizer.freeze = tuple(freeze)
    if size == "small":  # wider, so the ratio of matmul to elementwise work is closer to full size
        m, w = c.model, 256
        m.llm.hidden_size, m.llm.num_layers, m.llm.mlp_dim = w, 4, 3 * w
        m.llm.num_heads, m.llm.num_kv_heads, m.llm.head_dim = 8, 2, w // 8
        m.action_expert.hidden_size, m.action_expert.num_heads = w // 2, 4
        m.action_expert.context_dim = 2 * (w // 8)
        m.vit.hidden_size, m.vit.num_heads, m.vit.head_dim, m.vit.mlp_dim = 128, 4, 32, 256
        m.connector.hidden_size, m.connector.num_heads, m.connector.head_dim = 128, 4, 32
    c.model.scan_unroll = True
    c.trainer.compilation_cache_dir = ""
    return c


def xla_flops(cfg):
    example = next(trainer.make_data(cfg))
    setup = trainer.Setup(cfg, example)
    with setup.context():
        compiled = setup.train_step.lower(setup.abstract_sharded_state(), setup.abstract_sharded_batch()).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]), setup.step_flops(example)


# One case per axis of the count (size, expert, frozen groups, remat policy, detached VLM): a plain tiny or small
# expert case adds no term these do not already exercise, and each case is an unrolled compile (20-45 s here).
CASES = {
    "tiny_expert_K4_vit_connector_frozen": dict(size="tiny", expert=True, samples=4, freeze=("vit", "connector")),
    "small_no_expert": dict(size="small", expert=False),
    "small_expert_K4_remat_full_detach": dict(size="small", expert=True, samples=4, remat="full", detach=True),
    "small_expert_K4_remat_dots_no_batch": dict(size="small", expert=True, samples=4, remat="dots_no_batch"),
    # a named policy (models/layers.py REMAT_POLICIES): the blocks' checkpoint names decide what is recomputed
    "small_expert_K4_remat_save_qkv_proj": dict(size="small", expert=True, samples=4, remat="save_qkv_proj"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hardware_flops_match_unrolled_xla(case):
    xla, mine = xla_flops(config(**CASES[case]))
    print(f"{case}: XLA {xla / 1e9:.4f} GFLOP, analytic {mine['hardware'] / 1e9:.4f} GFLOP "
          f"({mine['hardware'] / xla:.3f}), model {mine['model'] / 1e9:.4f} GFLOP")
    assert mine["hardware"] == pytest.approx(xla, rel=0.05)
    assert 0 < mine["model"] < mine["hardware"]  # the synthetic rows are mostly padding


def test_freezing_drops_exactly_the_frozen_backward():
    cfg = config("tiny", True, 4).model
    counts = flops.Counts(images=8, patches=9, image_tokens=16, tokens=1024, llm_pairs=1024 * 256,
                          action_examples=4, horizon=8, context_tokens=1024, cross_pairs=4 * 8 * 256)
    kw = dict(num_flow_samples=4, elementwise=False)
    ops = [o for o in flops.forward_ops(cfg, counts, 4) if not o.elementwise]
    full = flops.step_flops(cfg, counts, **kw)
    # Freezing the ViT removes its whole backward: 2x its forward, but 1x for the patch embedding (no input grad).
    vit_bwd = sum((2 if o.input_grad else 1) * o.flops for o in ops if o.group == "vit")
    no_vit = flops.step_flops(cfg, counts, trainable=("connector", "llm", "action_expert"), **kw)
    assert full["forward"] == no_vit["forward"]
    assert full["backward"] - no_vit["backward"] == pytest.approx(vit_bwd, rel=1e-12)
    # Only the expert trains and the flow loss is detached: no backbone backward, and the expert's context
    # projection, time and action embeddings need no input gradient.
    expert_only = flops.step_flops(cfg, counts, trainable=("action_expert",), detach_vlm=True, **kw)
    expected = sum((1 if (not o.input_grad or o.from_context and o.weight) else 2) * o.flops
                   for o in ops if o.group == "action_expert")
    assert expert_only["backward"] == pytest.approx(expected, rel=1e-12)


def test_masked_counts_follow_the_attention_masks():
    cfg = config("tiny", True).model
    t = cfg.tokens
    # One row: 5 valid tokens (positions 1 and 2 are image tokens) then one pad; causal pairs 1+2+3+4+5 = 15, plus
    # image position 1 seeing image position 2 = 16. A second row packs two segments of 3 and 2 tokens: 6 + 3.
    ids = np.array([[7, t.image_start, t.image_patch, 8, 9, -1],
                    [7, 8, 9, 7, 8, -1]], np.int32)
    batch = dict(input_ids=ids, attention_mask=ids >= 0, segment_ids=np.array([[0] * 6, [0, 0, 0, 1, 1, 1]]))
    c = flops.masked_counts(cfg, batch)
    assert c.llm_pairs == 16 + 9
    assert c.tokens == 10 and c.action_examples == 0
    unpacked = flops.masked_counts(cfg, dict(input_ids=ids[:1], attention_mask=ids[:1] >= 0))
    assert unpacked.llm_pairs == 16  # the vectorised path for rows without segments
    dense = flops.dense_counts(cfg, batch)
    assert dense.llm_pairs == 2 * 36 and dense.tokens == 12
