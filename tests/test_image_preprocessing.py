"""Host image preprocessing: resize vs PyTorch's bilinear (no antialias), patch order, pooling index."""
import numpy as np
import pytest

from molmoact2_jax.preprocessing.image import (patchify, pooling_index, preprocess_image, preprocess_images,
                                               resize_uint8, to_uint8_rgb)


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(360, 640), (180, 320), (378, 378), (500, 200), (17, 29)])
def test_resize_matches_torch_bilinear_without_antialias(shape):
    import torch
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ref = torch.nn.functional.interpolate(torch.tensor(img).permute(2, 0, 1)[None].float(), size=(378, 378),
                                          mode="bilinear", align_corners=False, antialias=False)
    ref = ref.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    ours = resize_uint8(img, 378, 378)
    diff = np.abs(ours.astype(int) - ref.astype(int))
    # fp32 interpolation in a different order may flip a .5 rounding tie: allow off-by-one on a tiny fraction.
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_patch_order_and_normalisation():
    img = np.arange(28 * 28 * 3, dtype=np.float32).reshape(28, 28, 3)
    p = patchify(img, 14)
    assert p.shape == (4, 588)
    np.testing.assert_array_equal(p[1], img[:14, 14:].reshape(-1))   # row-major patches, (py, px, c) inside
    patches, idx = preprocess_image(np.full((10, 10, 3), 255, np.uint8), size=378)
    assert patches.shape == (729, 588) and np.allclose(patches, 1.0) and idx.shape == (196, 4)


def test_pooling_index_pads_bottom_and_right():
    idx = pooling_index(27, 27)
    assert idx.shape == (196, 4)
    np.testing.assert_array_equal(idx[0], [0, 1, 27, 28])
    np.testing.assert_array_equal(idx[13], [26, -1, 53, -1])          # right column padded
    np.testing.assert_array_equal(idx[-1], [728, -1, -1, -1])         # bottom-right corner
    assert (idx >= 0).any(-1).all()                                   # every pooled token is valid at 378 px
    _, multi = preprocess_images([np.zeros((5, 5, 3), np.uint8)] * 2)
    assert multi.shape == (392, 4) and multi[196, 0] == 729           # image 1 offset by 729 patches


def test_coercion_rules_and_errors():
    np.testing.assert_array_equal(to_uint8_rgb(np.full((2, 2, 3), 0.5)), np.full((2, 2, 3), 127, np.uint8))
    np.testing.assert_array_equal(to_uint8_rgb(np.full((2, 2, 3), 300.0)), np.full((2, 2, 3), 255, np.uint8))
    with pytest.raises(ValueError, match="camera 2: expected an HxWx3"):
        to_uint8_rgb(np.zeros((4, 4, 4)), name="camera 2")
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_rgb(np.full((2, 2, 3), np.nan))
