"""MolmoThink: changed-cell detection, adaptive depth decoding (only changed cells re-predicted, unchanged runs
teacher-forced as chunks, equal to full re-prediction), depth gate, discrete Think; depth VQ-VAE and the
depth-code companion tool."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from molmoact2_jax.inference import testing as T
from molmoact2_jax.inference import think
from molmoact2_jax.inference.policy import Policy

STATE = np.array([0.1, -0.2, 0.3, 0.0, 0.2, -0.1, 0.04])


def first_image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (320, 320, 3), np.uint8)


def change_cells(img, cells, seed=99):
    out = img.copy()
    rng = np.random.default_rng(seed)
    for c in cells:
        r, k = divmod(c, 10)
        out[r * 32:(r + 1) * 32, k * 32:(k + 1) * 32] = rng.integers(0, 256, (32, 32, 3), np.uint8)
    return out


def test_change_detection_cells():
    img = first_image()
    assert not think.changed_cells(img, img).any()
    cells = [0, 7, 55, 56, 99]
    assert np.flatnonzero(think.changed_cells(change_cells(img, cells), img)).tolist() == cells
    black = np.zeros((64, 80, 3), np.uint8)   # |a||b| < 1e-8 -> similarity 1
    assert not think.changed_cells(black, black).any() and (think.cell_similarity(black, black) == 1).all()
    # brightness scaling keeps the cosine similarity at 1: not a change
    assert not think.changed_cells((img // 2).astype(np.uint8) * 2, (img // 2).astype(np.uint8)).any()
    mask = np.array([1, 1, 0, 0, 0, 1], bool)
    assert think.plan_steps(mask, 1) == [(0, 1, True), (1, 1, True), (2, 1, False), (3, 1, False), (4, 1, False),
                                         (5, 1, True)]
    assert think.plan_steps(mask, 2) == [(0, 1, True), (1, 2, True), (3, 2, False), (5, 1, True)]
    assert think.plan_steps(mask, 100) == [(0, 1, True), (1, 4, True), (5, 1, True)]
    assert think.choose_width(np.zeros(100, bool)) == 100 and think.choose_width(np.ones(100, bool)) == 1
    scattered = np.zeros(100, bool)
    scattered[::3] = True
    assert think.choose_width(scattered) == 4  # 34 steps of 4 slots beat 100 single steps and 34 wider ones
    assert think.choose_width(scattered, step_cost=(1, 1, 1, 1)) == 4  # ties go to the narrower chunk
    few = np.zeros(100, bool)
    few[[0, 1, 2, 37, 64, 65, 99]] = True  # 100 / 29 / 12 / 7 steps
    assert think.choose_width(few) == 4 and think.choose_width(few, step_cost=(1, 1, 1, 1)) == 100
    assert think.as_depth_cache({"image": img, "depth_bins": [1] * 99}) == (None, None)


@pytest.fixture(scope="module")
def think_policy(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("think"))
    cfg, params, stats, tok, fast = T.make_parts(d, depth_gate=True, num_cameras=2)
    # the depth gate starts closed-ish (bias -4): open it so depth tokens matter to the expert
    ae = dict(params["action_expert"])
    ae["depth_gate_bias"] = ae["depth_gate_bias"] * 0 + 2.0
    params = dict(params, action_expert=ae)
    return Policy(cfg, params, stats, tok, fast)


def naive_codes_check(policy, result, images, cells):
    """Teacher-forced full forward (no KV cache) over prompt + <depth_start> + codes: every re-predicted code
    must be the restricted argmax at its position."""
    tag = policy.tag(T.TAG)
    inp = policy.build_inputs(policy.check_images(images, tag), "pick up the block", STATE, tag, think=True)
    n = inp["prompt_tokens"]
    c0 = policy.cfg.tokens.depth_token_start
    ids = np.concatenate([inp["ids"][:, -n:], (result.depth_bins + c0)[None].astype(np.int32)], axis=1)
    batch = dict(input_ids=ids, attention_mask=np.ones_like(ids, bool), images=inp["images"],
                 pooled_idx=inp["pooled"])
    logits = np.asarray(jax.jit(policy.model.context)(policy.params, batch)[0])[0]
    pred = logits[n - 1:n - 1 + 100, c0:c0 + 128].argmax(-1)
    np.testing.assert_array_equal(pred[cells], result.depth_bins[cells])


def test_adaptive_depth_decoding(think_policy):
    p = think_policy
    img0 = first_image(0)
    imgs = [img0, T.random_images(1, seed=3)[0]]
    full = p.predict_action(imgs, "pick up the block", STATE, T.TAG, think=True, seed=0)
    s = full.think_stats
    assert s.num_predicted == 100 and s.forced_cells == [] and full.depth_bins.shape == (100,)
    assert full.depth_bins.min() >= 0 and full.depth_bins.max() < 128
    assert full.depth_cache["depth_bins"].tolist() == full.depth_bins.tolist()
    assert full.generated_token_ids[0] == p.cfg.tokens.depth_start
    naive_codes_check(p, full, imgs, np.arange(100))

    # unchanged image: nothing re-predicted, codes fed from the cache in one chunk
    same = p.predict_action(imgs, "pick up the block", STATE, T.TAG, think=True, seed=0,
                            depth_cache=full.depth_cache)
    assert same.think_stats.num_predicted == 0 and same.think_stats.forced_cells == list(range(100))
    assert same.think_stats.steps == 1 and same.think_stats.width == 100   # one teacher-forced chunk of 100 codes
    np.testing.assert_array_equal(same.depth_bins, full.depth_bins)
    np.testing.assert_allclose(same.actions, full.actions, atol=1e-4)

    # k changed cells: exactly those are re-predicted (against a doctored cache, so the result is visible)
    cells = [0, 1, 2, 37, 64, 65, 99]
    cached = {"image": img0, "depth_bins": (full.depth_bins + 5) % 128}
    imgs_k = [change_cells(img0, cells), imgs[1]]
    part = p.predict_action(imgs_k, "pick up the block", STATE, T.TAG, think=True, seed=0, depth_cache=cached)
    st = part.think_stats
    keep = np.setdiff1d(np.arange(100), cells)
    assert st.predicted_cells == cells and np.flatnonzero(st.changed_mask).tolist() == cells
    assert st.forced_cells == keep.tolist() and st.steps == len(think.plan_steps(st.changed_mask, st.width)) < 100
    np.testing.assert_array_equal(part.depth_bins[keep], cached["depth_bins"][keep])
    naive_codes_check(p, part, imgs_k, np.array(cells))
    default_cost = p.think.step_cost
    try:  # every chunk width walks the same grid: identical codes, actions equal to float tolerance
        for width, cost in [(1, (1, 99, 99, 99)), (16, (99, 99, 1, 99)), (100, (99, 99, 99, 1))]:
            p.think.step_cost = cost
            other_width = p.predict_action(imgs_k, "pick up the block", STATE, T.TAG, think=True, seed=0,
                                           depth_cache=cached)
            assert other_width.think_stats.width == width
            np.testing.assert_array_equal(other_width.depth_bins, part.depth_bins)
            np.testing.assert_allclose(other_width.actions, part.actions, atol=1e-4)
    finally:
        p.think.step_cost = default_cost

    # everything changed: identical to full re-prediction without a cache
    other = first_image(5)
    allc = p.predict_action([other, imgs[1]], "pick up the block", STATE, T.TAG, think=True, seed=0,
                            depth_cache=full.depth_cache)
    fresh = p.predict_action([other, imgs[1]], "pick up the block", STATE, T.TAG, think=True, seed=0)
    assert allc.think_stats.num_predicted == 100
    np.testing.assert_array_equal(allc.depth_bins, fresh.depth_bins)
    np.testing.assert_array_equal(allc.actions, fresh.actions)


def test_depth_tokens_reach_the_expert_through_the_gate(think_policy):
    p = think_policy
    imgs = [first_image(0), T.random_images(1, seed=3)[0]]
    full = p.predict_action(imgs, "pick up the block", STATE, T.TAG, think=True, seed=0)
    fake = {"image": imgs[0], "depth_bins": (full.depth_bins + 64) % 128}
    forced = p.predict_action(imgs, "pick up the block", STATE, T.TAG, think=True, seed=0, depth_cache=fake)
    assert forced.think_stats.num_predicted == 0
    assert not np.allclose(forced.normalized_actions, full.normalized_actions, atol=1e-5)


def test_discrete_think(think_policy):
    imgs = [first_image(0), T.random_images(1, seed=3)[0]]
    r = think_policy.predict_action(imgs, "pick up the block", STATE, T.TAG, think=True, mode="discrete")
    t = think_policy.cfg.tokens
    assert r.actions.shape == (5, 7) and r.depth_bins.shape == (100,)
    gen = r.generated_token_ids.tolist()
    assert gen[0] == t.depth_start and all(t.depth_token_start <= g < t.depth_token_start + 128
                                           for g in gen[1:101])
    assert len(gen) > 102   # the random model runs to the cap (16 x horizon after <depth_end>) without EOS
    naive_codes_check(think_policy, r, imgs, np.arange(100))     # no cache: every code re-predicted
    # the tail after the codes: greedy over the full vocabulary, checked on the whole sequence teacher-forced
    # without a cache (sequence position of gen[i] is n - 1 + i, predicted by the logits at n - 2 + i)
    p = think_policy
    tag = p.tag(T.TAG)
    inp = p.build_inputs(p.check_images(imgs, tag), "pick up the block", STATE, tag, think=True)
    n = inp["prompt_tokens"]
    ids = np.concatenate([inp["ids"][:, -n:], np.asarray(gen[1:], np.int32)[None]], axis=1)
    batch = dict(input_ids=ids, attention_mask=np.ones_like(ids, bool), images=inp["images"],
                 pooled_idx=inp["pooled"])
    logits = np.asarray(jax.jit(p.model.context)(p.params, batch)[0])[0]
    tail = np.arange(101, len(gen))
    np.testing.assert_array_equal(logits[n - 2 + tail].argmax(-1), np.asarray(gen)[tail])
    # the depth prefix does not depend on the action mode
    c = p.predict_action(imgs, "pick up the block", STATE, T.TAG, think=True, seed=0)
    np.testing.assert_array_equal(c.depth_bins, r.depth_bins)


# ---------------------------------------------------------------------------------------------------------------
# depth VQ-VAE and the companion-data tool
def synthetic_depth(n, size=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    return [a * xx + b * yy + c * np.exp(-((xx - .5) ** 2 + (yy - .5) ** 2) * 20)
            for a, b, c in rng.uniform(-1, 1, (n, 3))]


@pytest.fixture(scope="module")
def vq_trained():
    """Trained at 64 px (fast on CPU); the model is fully convolutional, so the same params serve the 320 px ->
    10x10 interface."""
    from molmoact2_jax.depth import vqvae as vq
    small = vq.VQVAEConfig(image_size=64, channels=(4, 8, 8, 8, 8), code_dim=8)
    params, hist = vq.train_vqvae(synthetic_depth(2), small, steps=40, batch_size=2, learning_rate=1e-2)
    return params, hist, dataclasses.replace(small, image_size=320)


def test_vqvae_train_encode_decode_save(vq_trained, tmp_path):
    from molmoact2_jax.depth import vqvae as vq
    params, hist, cfg = vq_trained
    assert np.mean([h["recon"] for h in hist[-5:]]) < 0.97 * np.mean([h["recon"] for h in hist[:5]])
    assert cfg.grid == 10 and cfg.downsample == 32 and cfg.num_codes == 128
    codes = vq.encode_depth(params, synthetic_depth(3), cfg)
    assert codes.shape == (3, 100) and codes.dtype == np.int32 and 0 <= codes.min() and codes.max() < 128
    assert vq.decode_codes(params, codes, cfg).shape == (3, 320, 320)
    vq.save_vqvae(str(tmp_path / "vq"), params, cfg)
    p2, cfg2 = vq.load_vqvae(str(tmp_path / "vq"))
    assert cfg2 == cfg
    np.testing.assert_array_equal(vq.encode_depth(p2, synthetic_depth(3), cfg2), codes)
    with pytest.raises(ValueError, match="codes must be ints"):
        vq.decode_codes(params, np.full((1, 100), 128), cfg)
    with pytest.raises(ValueError, match="depth map must be HxW"):
        vq.prepare_depth(np.zeros((4, 4, 3)))


def test_depth_codes_tool_npy_and_lerobot(vq_trained, tmp_path, capsys):
    import pyarrow.parquet as pq
    from data_pipelines.fixtures import make_fixture
    from molmoact2_jax.cli import depth_codes as dc
    from molmoact2_jax.depth import vqvae as vq
    params, _, cfg = vq_trained
    vq.save_vqvae(str(tmp_path / "vq"), params, cfg)
    npy = tmp_path / "npy"
    npy.mkdir()
    maps = synthetic_depth(3)
    for i, m in enumerate([maps[0], maps[0], maps[1]]):   # frame 1 repeats frame 0: nothing updated
        np.save(npy / f"{i:04d}.npy", m.astype(np.float32))
    assert dc.main(["--npy-dir", str(npy), "--vqvae", str(tmp_path / "vq"), "--out", str(tmp_path / "o1")]) == 0
    t = pq.read_table(tmp_path / "o1" / "data" / "episode_000000.parquet").to_pydict()
    assert len(t["depth_buffer_codes"]) == 3 and all(len(c) == 100 for c in t["depth_buffer_codes"])
    assert all(t["depth_updated_mask"][0]) and not any(t["depth_updated_mask"][1])
    assert t["depth_buffer_codes"][0] == t["depth_buffer_codes"][1] and t["file"][2] == "0002.npy"

    root = make_fixture("lerobot-v2.1", "droid", tmp_path / "ds", episodes=2, length=4, image_storage="image")
    assert dc.main(["--lerobot", str(root), "--vqvae", str(tmp_path / "vq"), "--out", str(tmp_path / "o2")]) == 0
    for ep in (0, 1):
        t = pq.read_table(tmp_path / "o2" / "data" / f"episode_{ep:06d}.parquet").to_pydict()
        assert t["frame_index"] == [0, 1, 2, 3] and t["episode_index"] == [ep] * 4
        assert all(0 <= c < 128 for row in t["depth_buffer_codes"] for c in row)
    info = json.loads((tmp_path / "o2" / "meta" / "info.json").read_text())
    assert info["total_frames"] == 8 and info["estimator"] == "placeholder"
    capsys.readouterr()
    assert dc.main(["--npy-dir", str(tmp_path / "nothing"), "--vqvae", str(tmp_path / "vq"),
                    "--out", str(tmp_path / "o3")]) == 2
    assert "no .npy depth maps" in capsys.readouterr().err
