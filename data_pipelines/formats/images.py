"""JPEG/PNG encode/decode and resize with Pillow."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from data_pipelines.errors import DataError
from molmoact2_jax.preprocessing.image import resize_uint8


def encode_image(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 95, full_chroma: bool = False) -> bytes:
    """`full_chroma`: JPEG 4:4:4 instead of libjpeg's 4:2:0, which averages colour over 2x2 pixels (a 2-pixel red
    marker comes out grey-pink)."""
    buf = io.BytesIO()
    kw = {"quality": quality, **({"subsampling": 0} if full_chroma else {})} if fmt == "jpeg" else {}
    Image.fromarray(rgb).save(buf, format=fmt.upper(), **kw)
    return buf.getvalue()


def decode_image(data: bytes, *, path=None, episode=None, key=None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises several unrelated types for bad bytes
        raise DataError(f"cannot decode image bytes: {e}", path=path, episode=episode, key=key) from e


def resize(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if rgb.shape[:2] == tuple(hw):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((hw[1], hw[0]), Image.BILINEAR))


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """The model's squash-resize to size x size (bit-exact with what serving does to a raw camera image)."""
    if rgb.shape[:2] == (size, size):
        return rgb
    return resize_uint8(rgb, size, size)
