"""Input validation for the backbone: shape/dtype checks that work under tracing, and value checks (token counts)
that run whenever the arrays are concrete, so bad batches fail with a message instead of silent garbage."""
from __future__ import annotations

import numpy as np
import jax


def _concrete(x) -> bool:
    return x is not None and not isinstance(x, jax.core.Tracer)


def check_backbone_inputs(cfg, input_ids, images=None, pooled_idx=None):
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] > cfg.max_sequence_length:
        raise ValueError(f"sequence length {input_ids.shape[1]} exceeds config model.max_sequence_length="
                         f"{cfg.max_sequence_length}")
    if images is None:
        if pooled_idx is not None:
            raise ValueError("pooled_idx given without images")
        if _concrete(input_ids) and (np.asarray(input_ids) == cfg.tokens.image_patch).any():
            raise ValueError("input_ids contain <im_patch> tokens but no images were given")
        return
    v = cfg.vit
    patch_values = v.patch_size * v.patch_size * 3
    if images.ndim != 4 or images.shape[-1] != patch_values:
        raise ValueError(f"images must be patches [batch, n_images, n_patches, {patch_values}] (use "
                         f"molmoact2_jax.preprocessing.image), got shape {tuple(images.shape)}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
    if images.shape[2] != (v.image_size // v.patch_size) ** 2:
        raise ValueError(f"images have {images.shape[2]} patches per image; config model.vit.image_size="
                         f"{v.image_size} needs {(v.image_size // v.patch_size) ** 2}")
    if pooled_idx is None or pooled_idx.ndim != 3 or pooled_idx.shape[0] != images.shape[0]:
        raise ValueError(f"pooled_idx must be [batch, n_tokens, 4] with the images' batch size, got "
                         f"{None if pooled_idx is None else tuple(pooled_idx.shape)}")
    if _concrete(input_ids) and _concrete(pooled_idx):
        ids, idx = np.asarray(input_ids), np.asarray(pooled_idx)
        n_patch_tokens = (ids == cfg.tokens.image_patch).sum(-1)
        n_features = (idx >= 0).any(-1).sum(-1)
        bad = np.nonzero(n_patch_tokens > n_features)[0]
        if bad.size:
            b = int(bad[0])
            raise ValueError(f"example {b}: {int(n_patch_tokens[b])} <im_patch> tokens but only "
                             f"{int(n_features[b])} image features")
        limit = images.shape[1] * images.shape[2]
        if (idx >= limit).any():
            raise ValueError(f"pooled_idx refers to patch {int(idx.max())} but the images hold {limit} patches")
