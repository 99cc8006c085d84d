"""Which of the 10x10 depth cells changed between two camera images: both images are resized to 320x320
(bilinear), cut into 10x10 cells of 32x32x3, and a cell changed when the cosine similarity of its pixels is below
0.996. MolmoThink re-predicts only the changed cells; the depth-code tool writes the same masks for training."""
from __future__ import annotations

import numpy as np
from PIL import Image

from molmoact2_jax.preprocessing.image import to_uint8_rgb

GRID = 10                 # 10x10 depth codes
NUM_CELLS = GRID * GRID   # num_depth_codes = 100
CELL = 32                 # pixels per cell side
CHANGE_SIZE = GRID * CELL  # 320
CHANGE_THRESHOLD = 0.996


def _resize320(image) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = to_uint8_rgb(img, "depth cache image")
    pil = Image.fromarray(img)
    return np.asarray(pil.resize((CHANGE_SIZE, CHANGE_SIZE), Image.BILINEAR), np.float32)


def _cells(img320: np.ndarray) -> np.ndarray:
    """[320, 320, 3] -> [100, 3072] (row-major cells, (y, x, c) inside a cell)."""
    x = img320.reshape(GRID, CELL, GRID, CELL, -1).transpose(0, 2, 1, 3, 4)
    return x.reshape(NUM_CELLS, -1).astype(np.float64)


def cell_similarity(current, previous) -> np.ndarray:
    """Cosine similarity per cell, [100] float64; cells where |a||b| < 1e-8 count as identical (1.0)."""
    a, b = _cells(_resize320(current)), _cells(_resize320(previous))
    dot = np.sum(a * b, axis=-1)
    denom = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(denom < 1e-8, 1.0, dot / (denom + 1e-12))


def changed_cells(current, previous, threshold: float = CHANGE_THRESHOLD) -> np.ndarray:
    """bool [100]: True where the cell changed (similarity < threshold)."""
    return cell_similarity(current, previous) < threshold
