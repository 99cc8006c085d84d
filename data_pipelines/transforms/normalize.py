"""State/action normalization and discrete state bins (docs/model_notes.md, "Normalization and state bins"). Pure numpy.

Shared by training (Grain transforms) and serving, so the two cannot drift apart; the stats themselves are
`data_pipelines.norm_stats.FeatureStats`.
"""
from __future__ import annotations

import numpy as np

from data_pipelines.norm_stats import NORM_MODES, FeatureStats

_EPS = 1e-6


def normalize(x, stats: FeatureStats, mode: str = "q01_q99") -> np.ndarray:
    """x [..., D] -> normalized; bounded modes: 2(x-lo)/max(hi-lo,1e-6)-1 clipped to [-1,1]."""
    x = np.asarray(x, np.float64)
    if x.shape[-1] != stats.dim:
        raise ValueError(f"normalize: last dim {x.shape[-1]} != stats dim {stats.dim}")
    if mode == "none":
        return x.astype(np.float32)
    if mode == "mean_std":
        y = (x - stats.mean) / np.maximum(stats.std, _EPS)
    elif mode in NORM_MODES:
        lo, hi = stats.bounds(mode)
        y = np.clip(2.0 * (x - lo) / np.maximum(hi - lo, _EPS) - 1.0, -1.0, 1.0)
    else:
        raise ValueError(f"norm_mode must be one of {NORM_MODES}, got {mode!r}")
    y = np.where(stats.zero_mask, 0.0, y)
    return np.where(stats.mask, y, x).astype(np.float32)


def unnormalize(y, stats: FeatureStats, mode: str = "q01_q99") -> np.ndarray:
    """Inverse of normalize; bounded modes clip y to [-1,1] first. Masked dims return the clipped y."""
    y = np.asarray(y, np.float64)
    if mode == "none":
        return y.astype(np.float32)
    if mode == "mean_std":
        return np.where(stats.mask, y * np.maximum(stats.std, _EPS) + stats.mean, y).astype(np.float32)
    lo, hi = stats.bounds(mode)
    y = np.clip(y, -1.0, 1.0)
    x = (y + 1.0) / 2.0 * (hi - lo) + lo
    return np.where(stats.mask, x, y).astype(np.float32)


def state_bins(state_norm, num_bins: int = 256) -> np.ndarray:
    """Discrete state tokens: rint((clip(nan_to_num(s), -1, 1) + 1) / 2 * (num_bins-1)), half to even."""
    s = np.nan_to_num(np.asarray(state_norm, np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    s = np.clip(s, -1.0, 1.0)
    return np.clip(np.rint((s + 1.0) / 2.0 * (num_bins - 1)), 0, num_bins - 1).astype(np.int32)


def pad_last(x: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad the last dim to `size`; returns (padded, is_pad [size])."""
    d = x.shape[-1]
    if d > size:
        raise ValueError(f"dimension {d} exceeds max_action_dim {size}")
    out = np.zeros(x.shape[:-1] + (size,), np.float32)
    out[..., :d] = x
    return out, np.arange(size) >= d
