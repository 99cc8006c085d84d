"""Backbone behaviour: KV-cache decoding, packing, full-size shapes/parameter counts, logical axes, bad inputs."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import flax.linen as nn

from molmoact2_jax.models.config import get_model_config
from molmoact2_jax.models.backbone import Backbone
from molmoact2_jax.preprocessing.image import preprocess_images


def tiny():
    return ml_collections.FrozenConfigDict(get_model_config("tiny"))


def tiny_batch(cfg, seed=0, batch=2, lengths=(20, 14)):
    """Left-padded prompts with one image each (4 pooled tokens at 42 px)."""
    rng = np.random.default_rng(seed)
    t, T = cfg.tokens, max(lengths)
    ids = np.full((batch, T), -1, np.int32)
    for b, n in enumerate(lengths):
        row = list(rng.integers(2, 300, 3)) + [t.image_start] + [t.image_patch] * 4 + [t.image_end]
        row += list(rng.integers(2, 300, n - len(row)))
        ids[b, T - n:] = row
    imgs, idx = zip(*[preprocess_images([rng.integers(0, 256, (50, 60, 3), np.uint8)], size=cfg.vit.image_size)
                      for _ in range(batch)])
    return ids, np.stack(imgs), np.stack(idx)


@pytest.fixture(scope="module")
def model_and_params():
    cfg = tiny()
    model = Backbone(cfg)
    ids, imgs, idx = tiny_batch(cfg)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), ids, imgs, idx)   # jitted: eager init is slow
    return cfg, model, params


def test_incremental_decoding_matches_full_forward(model_and_params):
    cfg, model, params = model_and_params
    ids, imgs, idx = tiny_batch(cfg, seed=1)
    full = model.apply(params, ids, imgs, idx)["logits"]
    prefill = jax.jit(lambda p, i: model.apply(p, i, imgs, idx, cache_size=32, method=Backbone.prefill))
    decode = jax.jit(lambda p, i, c: model.apply(p, i, c, method=Backbone.decode))
    logits, cache = prefill(params, ids[:, :15])  # whole image blocks in the prompt
    chunks = [logits]
    for start, size in ((15, 1), (16, 1), (17, 3)):  # single tokens and multi-token chunks
        step, cache = decode(params, ids[:, start:start + size], cache)
        chunks.append(step)
    dec = np.concatenate(chunks, axis=1)
    valid = ids >= 0
    err = np.abs(dec - full)[valid].max() / np.abs(full)[valid].max()
    print(f"decode vs full forward: max rel err {err:.2e}")
    assert err < 1e-5
    assert int(cache["index"]) == 20


def test_packed_segments_do_not_see_each_other(model_and_params):
    cfg, model, params = model_and_params
    ids, imgs, idx = tiny_batch(cfg, seed=2, batch=1, lengths=(12,))
    other = np.random.default_rng(3).integers(2, 300, (1, 9)).astype(np.int32)
    packed = np.concatenate([ids, other], axis=1)
    seg = np.array([[0] * 12 + [1] * 9], np.int32)
    pos = np.array([list(range(12)) + list(range(9))], np.int32)
    out = model.apply(params, packed, imgs, idx, position_ids=pos, segment_ids=seg)
    a = model.apply(params, ids, imgs, idx)["logits"]
    b = model.apply(params, other)["logits"]
    np.testing.assert_allclose(out["logits"][:, :12], a, atol=2e-5)
    np.testing.assert_allclose(out["logits"][:, 12:], b, atol=2e-5)


def test_full_size_parameter_counts_without_allocating():
    cfg = ml_collections.FrozenConfigDict(get_model_config("full"))
    t = cfg.tokens
    ids = np.zeros((1, 200), np.int32)
    ids[0, 1:198] = t.image_patch
    imgs = jax.ShapeDtypeStruct((1, 1, 729, 588), jnp.float32)
    idx = jax.ShapeDtypeStruct((1, 196, 4), jnp.int32)
    shapes = jax.eval_shape(Backbone(cfg).init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(ids.shape, jnp.int32),
                            imgs, idx)
    p = nn.unbox(shapes)["params"]
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
    vit, conn = count(p["vit"]), count(p["connector"])
    lm_head = count(p["llm"]["lm_head"])
    llm = count(p["llm"]) - lm_head
    d, layer = 2560, 2560 * 6144 + 4096 * 2560 + 3 * 2560 * 9728 + 2 * 2560 + 2 * 128
    assert llm == 36 * layer + (154624 + 128) * d + d            # 4.03B: decoder + both embedding tables
    assert lm_head == 154624 * d                                 # untied head, another 0.40B
    vit_block = 4 * (1152 * 1152 + 1152) + 2 * 1152 * 4304 + 4304 + 1152 + 4 * 1152
    assert p["vit"]["resblocks"]["wq"]["kernel"].shape[0] == 25  # blocks 0..24 of 27
    assert vit == 25 * vit_block + 588 * 1152 + 1152 + 729 * 1152
    assert conn == 3 * (2304 * 1152 + 1152) + 1152 * 1152 + 1152 + 2 * 1152 * 9728 + 9728 * 2560
    print(f"LLM {llm / 1e9:.3f}B (+ head {lm_head / 1e9:.3f}B), ViT {vit / 1e9:.3f}B, connector {conn / 1e6:.1f}M")
    assert 3.9e9 < llm < 4.1e9 and 0.37e9 < vit < 0.39e9 and 56e6 < conn < 58e6


def test_every_parameter_has_logical_axes(model_and_params):
    _, _, params = model_and_params
    specs = nn.get_partition_spec(params)
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    for spec, leaf in zip(jax.tree.leaves(specs, is_leaf=lambda x: x is None or hasattr(x, "index")), leaves):
        assert len(spec) == leaf.value.ndim and all(a is not None for a in spec)


def test_bad_inputs_raise_clear_errors(model_and_params):
    cfg, model, params = model_and_params
    ids, imgs, idx = tiny_batch(cfg, seed=4)
    with pytest.raises(ValueError, match="HxWx3"):
        preprocess_images([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ValueError, match="unsupported dtype"):
        preprocess_images([np.zeros((10, 10, 3), np.complex64)])
    with pytest.raises(ValueError, match="patches"):
        model.apply(params, ids, imgs[:, 0], idx)                       # wrong rank
    with pytest.raises(ValueError, match="floating point"):
        model.apply(params, ids, imgs.astype(np.int32), idx)            # wrong dtype
    too_many = ids.copy()
    too_many[0, -3:] = cfg.tokens.image_patch
    with pytest.raises(ValueError, match="example 0: 7 <im_patch> tokens but only 4 image features"):
        model.apply(params, too_many, imgs, idx)
    long = np.zeros((1, cfg.max_sequence_length + 1), np.int32)
    with pytest.raises(ValueError, match="max_sequence_length"):
        model.apply(params, long)
