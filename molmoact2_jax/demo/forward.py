"""One forward pass of the backbone on a synthetic camera image and prompt (`molmoact2-forward`,
molmoact2_jax/cli/forward.py): the smallest check that a recipe's model builds and runs."""
from __future__ import annotations

import time

import ml_collections
import numpy as np

from molmoact2_jax.preprocessing.image import pooled_grid, preprocess_images
from molmoact2_jax.token_layout import TokenLayout, expand_image_tokens


def run(cfg, batch: int) -> dict:
    import jax  # lazy: --help must not import jax
    from flax import linen as nn  # lazy: imports jax

    from molmoact2_jax.models.backbone import Backbone  # lazy: imports jax

    mcfg = ml_collections.FrozenConfigDict(cfg.model)
    layout = TokenLayout.from_model_tokens(mcfg.tokens)
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
