"""Host-side image preprocessing (numpy; docs/model_notes.md, "Image preprocessing"), `crop_mode="resize"`:
uint8 HWC RGB -> squash-resize (bilinear, half-pixel centres, no antialias, rounded back to uint8) ->
x/255*2-1 -> (py, px, c)-ordered patches -> 2x2 pooling index with -1 padding on the bottom row / right column."""
from __future__ import annotations

import numpy as np


def to_uint8_rgb(image, name: str = "image") -> np.ndarray:
    """Coerce to uint8 HxWx3: floats with max <= 1 are scaled by 255; values clipped and truncated."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"{name}: expected an HxWx3 RGB array, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"{name}: empty image of shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all():
            raise ValueError(f"{name}: contains NaN or Inf")
        if img.size and img.max() <= 1.0:
            img = img * 255.0
    elif not np.issubdtype(img.dtype, np.integer):
        raise ValueError(f"{name}: unsupported dtype {img.dtype}; expected uint8, integer or float")
    return np.clip(img, 0, 255).astype(np.uint8)


def _bilinear_weights(n_in: int, n_out: int):
    # Half-pixel centres (align_corners=False); negative source coordinates clamp to 0, as in PyTorch.
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, w1


def resize_uint8(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear squash-resize of a uint8 HxWxC image without antialiasing, rounded and clipped back to uint8
    (torchvision `Resize(BILINEAR, antialias=False)` on a uint8 tensor)."""
    x = img.astype(np.float32)
    if x.shape[0] != height:
        r0, r1, wr = _bilinear_weights(x.shape[0], height)
        x = x[r0] * (1 - wr)[:, None, None] + x[r1] * wr[:, None, None]
    if x.shape[1] != width:
        c0, c1, wc = _bilinear_weights(x.shape[1], width)
        x = x[:, c0] * (1 - wc)[None, :, None] + x[:, c1] * wc[None, :, None]
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def patchify(img: np.ndarray, patch: int) -> np.ndarray:
    """HxWxC -> [(H/p)*(W/p), p*p*C], patches row-major, values (py, px, c) inside a patch."""
    h, w, c = img.shape
    gh, gw = h // patch, w // patch
    x = img.reshape(gh, patch, gw, patch, c).transpose(0, 2, 1, 3, 4)
    return x.reshape(gh * gw, patch * patch * c)


def pooled_grid(image_size: int, patch: int = 14, pool: int = 2) -> tuple[int, int]:
    """(rows, cols) of pooled image tokens of one squash-resized image: ceil((image_size // patch) / pool) each
    (378 / 14 / 2 -> 14 x 14). The one place this formula lives: prompts, model inputs and policies call it."""
    g = -(-(image_size // patch) // pool)
    return g, g


def pooling_index(grid_h: int, grid_w: int, pool: int = 2) -> np.ndarray:
    """[ceil(h/pool)*ceil(w/pool), pool*pool] patch indices per pooled token; -1 pads the bottom/right edge."""
    ph, pw = -(-grid_h // pool) * pool, -(-grid_w // pool) * pool
    idx = np.full((ph, pw), -1, np.int32)
    idx[:grid_h, :grid_w] = np.arange(grid_h * grid_w, dtype=np.int32).reshape(grid_h, grid_w)
    idx = idx.reshape(ph // pool, pool, pw // pool, pool).transpose(0, 2, 1, 3)
    return idx.reshape(-1, pool * pool)


def preprocess_image(image, size: int = 378, patch: int = 14, pool: int = 2, name: str = "image"):
    """One camera image -> (patches float32 [P, patch*patch*3] in [-1, 1], pooled_idx int32 [Nt, pool*pool])."""
    img = resize_uint8(to_uint8_rgb(image, name), size, size)
    patches = patchify(img.astype(np.float32) / 255.0 * 2.0 - 1.0, patch)
    return patches.astype(np.float32), pooling_index(size // patch, size // patch, pool)


def preprocess_images(images, size: int = 378, patch: int = 14, pool: int = 2):
    """A list of camera images of one example -> (patches [N, P, V], pooled_idx [N*Nt, pool*pool]) with image j's
    indices offset by j*P, the layout the backbone's connector expects."""
    if len(images) == 0:
        raise ValueError("preprocess_images: no images given")
    out = [preprocess_image(im, size, patch, pool, name=f"image {j}") for j, im in enumerate(images)]
    patches = np.stack([p for p, _ in out])
    n_patches = patches.shape[1]
    idx = np.concatenate([np.where(i >= 0, i + j * n_patches, -1) for j, (_, i) in enumerate(out)])
    return patches, idx.astype(np.int32)
