"""The attention implementations agree (models/attention.py): splash (Pallas TPU kernel, run here in interpret mode)
and the cuDNN call's semantics against the einsum path, on the model's own mask: packed examples, image blocks
separated by text (bidirectional among an example's image tokens), padding, grouped K/V heads.

What runs without an accelerator: splash's kernel body through the Pallas interpreter (the same kernel, tiling, tile
skipping and mask tiles a TPU runs; not its Mosaic code generation, which test_compile.py covers by compiling for a
TPU topology), and the cuDNN path's call through `jax.nn.dot_product_attention(implementation="xla")` with the same
arguments: layout, grouped heads, scale and mask-as-bias. cuDNN's kernel itself needs a GPU and is not run here."""
import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn
import pytest

from molmoact2_jax.models import attention as A
from molmoact2_jax.models import layers as L
from molmoact2_jax.models.config import get_model_config
from molmoact2_jax.models.llm import attention_allowed
from molmoact2_jax.models.molmoact2 import MolmoAct2
from molmoact2_jax.sharding.rules import DEFAULT_RULES

S, HQ, HKV, D = 384, 4, 2, 32


def packed_rows():
    """Row 0: three packed examples, each 'BOS Image 1 <image> Image 2 <image> text', then padding; row 1: one
    example with one image, then padding. Returns (slots, image, valid, segment) as [2, S] arrays."""
    img, valid, seg = np.zeros((2, S), bool), np.zeros((2, S), bool), np.zeros((2, S), np.int32)
    start = 0
    for e, length in enumerate((140, 100, 90)):
        seg[0, start:start + length] = e + 1
        valid[0, start:start + length] = True
        img[0, start + 3:start + 30] = True          # image 1
        img[0, start + 33:start + 55] = True         # image 2, after the text "Image 2"
        start += length
    seg[1, :300], valid[1, :300] = 1, True
    img[1, 2:120] = True
    slots = np.broadcast_to(np.arange(S), (2, S))
    return slots, img, valid, seg


def model_mask():
    slots, img, valid, seg = map(jnp.asarray, packed_rows())
    return attention_allowed(slots, slots, img, img, valid, seg, seg), valid


def qkv(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(2, S, HQ, D))
    k, v = rng.normal(size=(2, 2, S, HKV, D))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _loss(fn, mask, w):
    return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * w)


def test_splash_equals_xla_forward_and_gradients_on_packed_rows_with_images():
    mask, valid = model_mask()
    q, k, v = qkv()
    xla = jax.jit(lambda q, k, v, m: L.attention(q, k, v, m))
    splash = jax.jit(lambda q, k, v, m: A.splash_attention(q, k, v, m, interpret=True))
    rows = valid[..., None, None]
    out_x, out_s = xla(q, k, v, mask), splash(q, k, v, mask)
    assert bool(jnp.isfinite(out_s).all())
    assert float(jnp.max(jnp.abs(jnp.where(rows, out_x - out_s, 0)))) <= 2e-6   # measured 4.8e-7
    # gradients of a loss over the valid rows (padding rows are never read downstream)
    w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32) * rows
    g_x = jax.jit(jax.grad(_loss(xla, mask, w), argnums=(0, 1, 2)))(q, k, v)
    g_s = jax.jit(jax.grad(_loss(splash, mask, w), argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", g_x, g_s):
        assert bool(jnp.isfinite(b).all()), name
        assert float(jnp.max(jnp.abs(a - b))) <= 2e-5, name   # measured <= 3.4e-6 (|grad| up to ~6)


def test_the_image_term_is_exact_not_dropped():
    """An image token sees the example's next image but not the text between: causal alone differs."""
    mask, valid = model_mask()
    slots, img, _, seg = map(jnp.asarray, packed_rows())
    causal = attention_allowed(slots, slots, img, img, valid, seg, seg, bidirectional_image=False)
    assert bool(mask[0, 0, 10, 40]) and not bool(mask[0, 0, 10, 31]) and not bool(causal[0, 0, 10, 40])
    q, k, v = qkv(2)
    with_images = A.splash_attention(q, k, v, mask, interpret=True)
    causal_only = A.splash_attention(q, k, v, causal, interpret=True)
    assert float(jnp.max(jnp.abs(with_images - L.attention(q, k, v, mask))[0, :300])) <= 2e-6
    assert float(jnp.max(jnp.abs(with_images - causal_only)[0, 3:30])) > 0.1


def test_splash_skips_the_tiles_packing_and_causality_leave_empty():
    mask, _ = model_mask()
    counts = A.splash_tile_counts(A.splash_tiles(mask, S, S))
    # 128-tiles, 9 per row. Row 0 (examples at 0/140/240, padding from 330): query tile 0 needs key tile 0; tile 1
    # key tiles 0-2 (example 1's tail, example 2, and example 3's image ahead in tile 2); tile 2 key tiles 1-2 (the
    # padding rows see their own index, inside the diagonal tile): 6. Row 1 (one example of 300): 1 + 2 + 3 = 6.
    assert counts == {"computed": 12, "total": 18}
    one_long = A.splash_tiles(jnp.tril(jnp.ones((1, 1, 4096, 4096), bool)), 4096, 4096)
    c = A.splash_tile_counts(one_long)
    assert c["total"] == 64 and c["computed"] == 36   # 512-tiles, causal: 8 * 9 / 2 of 64


def test_splash_in_bf16_is_within_bf16_rounding_of_xla():
    mask, valid = model_mask()
    q, k, v = qkv(3, jnp.bfloat16)
    out_x = L.attention(q, k, v, mask, dtype=jnp.bfloat16).astype(jnp.float32)
    out_s = A.splash_attention(q, k, v, mask, interpret=True).astype(jnp.float32)
    diff = jnp.where(valid[..., None, None], jnp.abs(out_x - out_s), 0)
    assert float(jnp.max(diff)) <= 0.03 and float(jnp.mean(diff)) <= 2e-3


def test_cudnn_call_semantics_equal_the_einsum_path():
    """The exact call the cudnn path makes, run by XLA: same layout, GQA grouping, scale and mask."""
    mask, valid = model_mask()
    q, k, v = qkv(4)
    ref = L.attention(q, k, v, mask)
    via_api = A.cudnn_attention(q, k, v, mask, jnp.float32, implementation="xla")
    assert float(jnp.max(jnp.abs(ref - via_api))) <= 2e-6     # padding rows included: both uniform there
    bias = L.mask_to_bias(mask)
    assert float(jnp.max(jnp.abs(ref - A.cudnn_attention(q, k, v, bias, jnp.float32, implementation="xla")))) <= 2e-6


def test_auto_picks_by_the_platform_being_compiled_for():
    assert A.resolve("auto") == "xla"            # this CPU
    assert A.resolve("splash") == "splash"
    with pytest.raises(ValueError, match="model.attention_impl='flash'"):
        A.resolve("flash")


def test_model_loss_and_gradients_with_splash_equal_xla():
    """The tiny model end to end, one device: the LLM over 2 images + text in one 128-token tile with padding in row 1
    runs splash; the ViT and the expert (fewer than 128 queries) keep the einsum path."""
    cfg = get_model_config("tiny")
    model = MolmoAct2(cfg)
    batch = model.fake_batch(batch_size=2, seq_len=128, num_images=2, training=True)
    batch["attention_mask"][1, 100:] = False
    params = model.init(jax.random.PRNGKey(0), batch)

    def loss_and_grads(impl):
        c = get_model_config("tiny")
        c.attention_impl = impl
        m = MolmoAct2(c)
        return jax.jit(jax.value_and_grad(lambda p: m.compute_loss(p, batch, jax.random.PRNGKey(1))[0]))(params)

    (l_x, g_x), (l_s, g_s) = loss_and_grads("xla"), loss_and_grads("splash")
    assert abs(float(l_x) - float(l_s)) <= 1e-5 * abs(float(l_x))
    worst = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g_x), jax.tree.leaves(g_s)))
    assert worst <= 2e-5


def test_splash_under_a_mesh_runs_per_shard_and_equals_xla():
    devices = jax.devices()
    if len(devices) < 2:   # the suite runs on 1 CPU device; the multi-device run is below in a subprocess
        _run_in_subprocess_with_devices(4)
        return
    mesh = jax.sharding.Mesh(np.array(devices[:4]).reshape(2, 2), ("data", "tensor"))
    mask, valid = model_mask()
    q, k, v = qkv(5)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        out = jax.jit(lambda q, k, v, m: A.splash_attention(q, k, v, m, interpret=True))(q, k, v, mask)
        hlo = jax.jit(lambda q, k, v, m: A.splash_attention(q, k, v, m, interpret=True)).lower(
            q, k, v, mask).as_text()
    assert "shard_map" in hlo or "sdy.manual_computation" in hlo
    ref = L.attention(q, k, v, mask)
    assert float(jnp.max(jnp.abs(jnp.where(valid[..., None, None], ref - out, 0)))) <= 2e-6


def _run_in_subprocess_with_devices(n):
    import os
    import subprocess
    import sys
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
    code = ("import sys; sys.path.insert(0, 'tests'); import test_attention as t; "
            "t.test_splash_under_a_mesh_runs_per_shard_and_equals_xla()")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
