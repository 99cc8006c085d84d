"""LeRobot-style per-feature stats (min/max/mean/std/count, q01..q99) as written in meta files."""
from __future__ import annotations

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


def quantile_key(q: float) -> str:
    return f"q{int(round(q * 100)):02d}"


def vector_stats(x: np.ndarray, quantiles: bool = True) -> dict:
    """x: [N, D] (or [N]) -> stats lists; quantiles are exact numpy (linear) quantiles."""
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    if quantiles:
        for q, v in zip(QUANTILES, np.quantile(x, QUANTILES, axis=0)):
            out[quantile_key(q)] = v
    return {k: v.tolist() for k, v in out.items()}


def image_stats(frames: np.ndarray, quantiles: bool = True, max_frames: int = 100, max_side: int = 150) -> dict:
    """frames [T,H,W,3] uint8 -> per-channel stats of shape [3,1,1] in [0,1] (LeRobot convention).
    Like LeRobot, on a subsample: at most max_frames frames, strided down to about max_side pixels."""
    step = max(1, -(-len(frames) // max_frames))
    stride = max(1, -(-max(frames.shape[1:3]) // max_side))
    x = frames[::step, ::stride, ::stride].reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
    s = vector_stats(x, quantiles)
    return {k: (v if k == "count" else [[[c]] for c in v]) for k, v in {**s, "count": [len(frames)]}.items()}
