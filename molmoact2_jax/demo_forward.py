"""`molmoact2-forward`: one forward pass of the backbone on a synthetic camera image and prompt.

  molmoact2-forward                                   # tiny model, CPU
  molmoact2-forward --config=configs/pretrain.py:tiny --config.model.llm.num_layers=4
"""
from __future__ import annotations

import sys
import time

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from molmoact2_jax.preprocessing.image import pooled_grid, preprocess_images
from molmoact2_jax.recipes import recipe_path
from molmoact2_jax.tokenizers.text import expand_image_tokens, layout_from_model_config
from molmoact2_jax.train import list_flags_in_help

_DEFAULT = recipe_path("pretrain", "tiny")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT, "Recipe: configs/<recipe>.py with an optional :variant; its model config and seed are "
    "used. Override fields with --config.<field>=<value> (e.g. --config.model.llm.num_layers=4).")
_BATCH = flags.DEFINE_integer("batch", 2, "Batch size: copies of the synthetic image + prompt in one forward pass.")


def run(cfg, batch: int) -> dict:
    import jax  # lazy: --help must not import jax
    from flax import linen as nn  # lazy: imports jax

    from molmoact2_jax.models.backbone import Backbone  # lazy: imports jax

    mcfg = ml_collections.FrozenConfigDict(cfg.model)
    layout = layout_from_model_config(mcfg.tokens)
    rng = np.random.default_rng(cfg.seed)
    grid = pooled_grid(mcfg.vit.image_size, mcfg.vit.patch_size, mcfg.connector.pool_size)
    prompt = [layout.eos] + list(rng.integers(2, 200, 4)) + [layout.image_placeholder] + list(rng.integers(2, 200, 8))
    ids = np.array([expand_image_tokens(prompt, layout, [grid])] * batch, np.int32)
    camera = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
    patches, idx = preprocess_images([camera], size=mcfg.vit.image_size, patch=mcfg.vit.patch_size,
                                     pool=mcfg.connector.pool_size)
    images, pooled = np.stack([patches] * batch), np.stack([idx] * batch)

    model = Backbone(mcfg)
    t0 = time.perf_counter()
    params = jax.jit(model.init)(jax.random.PRNGKey(cfg.seed), ids, images, pooled)
    t1 = time.perf_counter()
    out = jax.jit(model.apply)(params, ids, images, pooled)
    logits = np.asarray(out["logits"])
    t2 = time.perf_counter()
    n_params = sum(x.size for x in jax.tree.leaves(nn.unbox(params)))
    return dict(params=n_params, logits=logits.shape, keys=tuple(out["keys"].shape), init_s=t1 - t0,
                forward_s=t2 - t1, finite=bool(np.isfinite(logits).all()))


def main(argv=None):
    list_flags_in_help([_CONFIG, _BATCH], __doc__)

    def _main(_):
        r = run(_CONFIG.value, _BATCH.value)
        print(f"backbone ({_CONFIG.value.variant}): {r['params'] / 1e6:.2f}M params; logits {r['logits']}, "
              f"per-layer keys {r['keys']}; init {r['init_s']:.1f}s, forward {r['forward_s']:.1f}s, "
              f"finite={r['finite']}")
        return 0 if r["finite"] else 1
    app.run(_main, argv=[sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
