"""Every recipe builds at full size (abstract model + optimizer state under its mesh) and trains as `tiny`."""
import importlib
import json

import jax
import numpy as np
import pytest

from molmoact2_jax.training import trainer
from train_harness import CACHE

RECIPES = {
    "pretrain": ["full"], "posttrain": ["full", "think"], "finetune": ["robot", "droid", "yam", "so100", "libero"],
    "finetune_lora": ["libero"], "molmoer": ["specialize", "rehearse"],
}
TINY = {"pretrain": "tiny", "posttrain": "think_tiny", "finetune": "tiny", "finetune_lora": "tiny",
        "molmoer": "tiny"}


def get(recipe, variant, synthetic=True):
    """The recipe's config; `synthetic` asks for synthetic data by name (full-size and fine-tune recipes read shards
    and would refuse to start without a data path)."""
    cfg = importlib.import_module(f"molmoact2_configs.{recipe}").get_config(None if variant == "full" else variant)
    if synthetic:
        cfg.data.source = "synthetic"
    return cfg


@pytest.mark.parametrize("recipe,variant", [(r, v) for r, vs in RECIPES.items() for v in vs])
def test_full_size_recipe_builds_abstractly(recipe, variant):
    cfg = get(recipe, variant)
    cfg.data.global_batch_size = 1  # only shapes matter here; one synthetic example keeps the test fast
    setup = trainer.Setup(cfg, next(iter(trainer.make_data(cfg))))
    state = setup.abstract_state
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
    expert = cfg.model.use_action_expert
    assert (4.4e9 if expert else 4.8e9) < n_params + (0.6e9 if not expert else 0) < 5.6e9, n_params
    assert n_opt >= 2 * n_params - 1e6 or cfg.lora.enabled  # Adam mu + nu for every trainable leaf
    assert cfg.model.dtype == "bfloat16"
    print(f"{recipe}:{variant}: {n_params / 1e9:.2f}B params, {n_opt / 1e9:.2f}B optimizer values")


@pytest.mark.parametrize("recipe", sorted(TINY))
def test_tiny_variant_trains(recipe, tmp_path):
    cfg = get(recipe, TINY[recipe])
    cfg.total_steps = 3
    cfg.trainer.compilation_cache_dir = CACHE
    out = trainer.train(cfg, str(tmp_path))
    rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    assert cfg.model.dtype == "float32"
    del out


def test_init_from_loads_backbone_and_keeps_expert_fresh(tmp_path):
    src = get("posttrain", "tiny")
    src.total_steps = 2
    src.trainer.compilation_cache_dir = CACHE
    first = trainer.train(src, str(tmp_path / "a"))
    cfg = get("finetune", "tiny")
    cfg.total_steps = 1
    cfg.optimizer.lr = {k: 0.0 for k in cfg.optimizer.lr}  # lr 0: params after the step are the initial ones
    cfg.init_from = str(tmp_path / "a" / "checkpoints" / "2")
    cfg.init_fresh = ("action_expert",)
    cfg.trainer.compilation_cache_dir = CACHE
    out = trainer.train(cfg, str(tmp_path / "b"))
    a, b = jax.device_get(first["state"].params), jax.device_get(out["state"].params)
    np.testing.assert_array_equal(a["backbone"]["llm"]["wte"]["embedding"], b["backbone"]["llm"]["wte"]["embedding"])
    cfg = out["config"]   # prepared: sizes the tiny fine-tune recipe leaves to the data
    fresh = jax.device_get(trainer.Setup(cfg, next(iter(trainer.make_data(cfg)))).create_state().params)
    np.testing.assert_array_equal(b["action_expert"]["action_embed"]["kernel"],
                                  fresh["action_expert"]["action_embed"]["kernel"])
    # The source run did train its expert (the zero-initialised final layer moved), and that was not loaded.
    assert np.abs(a["action_expert"]["final_layer"]["linear"]["kernel"]).max() > 0
    np.testing.assert_array_equal(b["action_expert"]["final_layer"]["linear"]["kernel"], 0.0)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="configs/finetune.py: unknown variant 'franka'"):
        get("finetune", "franka")
