"""Training image augmentation (img_aug="full"; docs/model_notes.md, "Image preprocessing"), applied before the
model resize.

95% random crop resized back, rotation +-5 deg, colour jitter (brightness 0.2, contrast/saturation
0.8-1.2, hue 0.05; fixed order b-c-s-h), Gaussian blur sigma 0.1-1.0 with p=0.2 (Pillow's radius is
the sigma; its kernel is not truncated at 5 taps). Disabled at inference.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


def augment_image(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = Image.fromarray(rgb)
    W, H = img.size
    ch, cw = max(1, round(0.95 * H)), max(1, round(0.95 * W))
    y0, x0 = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((W, H), Image.BILINEAR)
    img = img.rotate(float(rng.uniform(-5, 5)), resample=Image.BILINEAR)
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.8, 1.2)))
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.8, 1.2)))
    hsv = np.asarray(img.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(rng.uniform(-0.05, 0.05) * 255))) % 256
    img = Image.fromarray(hsv, "HSV").convert("RGB")
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.1, 1.0))))
    return np.asarray(img)
