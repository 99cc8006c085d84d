"""Inference Policy: determinism, units (un-normalization, gripper pass-through), discrete decoding, input
validation, compilation reuse across task strings, and loading a saved checkpoint with assets."""
import os

import numpy as np
import pytest

from data_pipelines.transforms.normalize import unnormalize
from data_pipelines.transforms.prompt import build_robot_prompt
from molmoact2_jax.inference import testing as T
from data_pipelines.norm_stats import parse_norm_stats
from molmoact2_jax.inference.policy import Policy
from molmoact2_jax.tokenizers.openfast import to_llm_ids


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("policy"))
    cfg, params, stats, tok, fast = T.make_parts(d)
    return d, cfg, params, stats, tok, fast


@pytest.fixture(scope="module")
def policy(parts):
    _, cfg, params, stats, tok, fast = parts
    return Policy(cfg, params, stats, tok, fast)


IMGS = T.random_images(2, seed=1)
STATE = np.array([0.3, -0.2, 0.1, 0.0, 0.5, -0.4, 0.03])


def test_continuous_deterministic_shapes_and_units(policy):
    tag = policy.tag(T.TAG)
    a = policy.predict_action(IMGS, "Pick up the red block.", STATE, T.TAG, seed=7)
    b = policy.predict_action(IMGS, "Pick up the red block.", STATE, T.TAG, seed=7)
    c = policy.predict_action(IMGS, "Pick up the red block.", STATE, T.TAG, seed=8)
    assert a.actions.shape == (tag.n_action_steps, T.ACTION_DIM) == (5, 7) and a.actions.dtype == np.float32
    assert a.normalized_actions.shape == (tag.horizon, T.ACTION_DIM)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.allclose(a.actions, c.actions)
    # robot units: un-normalized with the tag's q01/q99; the gripper (mask False) passes through clipped
    np.testing.assert_allclose(a.actions, unnormalize(a.normalized_actions[:5], tag.action_stats), rtol=1e-6)
    np.testing.assert_allclose(a.actions[:, -1], np.clip(a.normalized_actions[:5, -1], -1, 1), rtol=1e-6)
    lo, hi = tag.action_stats.q01[:-1], tag.action_stats.q99[:-1]
    assert ((a.actions[:, :-1] >= lo - 1e-5) & (a.actions[:, :-1] <= hi + 1e-5)).all()
    assert not np.allclose(a.actions[:, :-1], np.clip(a.normalized_actions[:5, :-1], -1, 1))


def test_explicit_noise_and_n_action_steps(policy):
    noise = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    a = policy.predict_action(IMGS, "open the drawer", STATE, T.TAG, noise=noise, n_action_steps=3, num_steps=4)
    b = policy.predict_action(IMGS, "open the drawer", STATE, T.TAG, noise=noise[None], n_action_steps=8,
                              num_steps=4)
    assert a.actions.shape == (3, 7) and b.actions.shape == (8, 7)
    np.testing.assert_array_equal(a.actions, b.actions[:3])
    with pytest.raises(ValueError, match=r"noise has shape \(8, 7\)"):
        policy.predict_action(IMGS, "open the drawer", STATE, T.TAG, noise=noise[:, :7])
    with pytest.raises(ValueError, match="n_action_steps=9"):
        policy.predict_action(IMGS, "open the drawer", STATE, T.TAG, n_action_steps=9)


def test_prompt_padding_and_compilation_reuse(policy):
    tag = policy.tag(T.TAG)
    inp = policy.build_inputs(policy.check_images(IMGS, tag), "  Task: Pick up the RED block!! ", STATE, tag)
    assert inp["prompt"] == build_robot_prompt("pick up the red block", 2, inp["state_bins"].tolist(),
                                               tag.setup_type, tag.control_mode)
    ids = policy.tokenizer.encode_prompt(inp["prompt"], image_grids=[policy.image_grid] * 2)
    n, bucket = len(ids), inp["ids"].shape[1]
    assert bucket % policy.prompt_bucket == 0 and bucket >= n
    assert inp["ids"][0, bucket - n:].tolist() == ids and not inp["attn"][0, :bucket - n].any()
    # left padding is invisible: same actions as an unpadded prompt of the same content
    policy.predict_action(IMGS, "stack the cups", STATE, T.TAG, seed=1)
    before = policy._continuous._cache_size()
    for task in ("put the cup on the plate", "close the lid now", "Open The Drawer."):
        policy.predict_action(IMGS, task, STATE, T.TAG, seed=1)
    assert policy._continuous._cache_size() == before  # different task strings, one compilation


def test_left_padding_does_not_change_actions(parts):
    _, cfg, params, stats, tok, fast = parts
    p64 = Policy(cfg, params, stats, tok, fast, prompt_bucket=64)
    p1 = Policy(cfg, params, stats, tok, fast, prompt_bucket=1)
    a = p64.predict_action(IMGS, "stack the cups", STATE, T.TAG, seed=3)
    b = p1.predict_action(IMGS, "stack the cups", STATE, T.TAG, seed=3)
    np.testing.assert_allclose(a.actions, b.actions, atol=1e-4)


def test_discrete_mode_shapes_and_units(policy, parts):
    fast = parts[5]
    tag = policy.tag(T.TAG)
    r = policy.predict_action(IMGS, "pick up the block", STATE, T.TAG, mode="discrete")
    assert r.actions.shape == (5, 7) and r.generated_token_ids.ndim == 1
    assert len(r.generated_token_ids) <= 16 * tag.horizon
    # these random weights (seed 0) run to the 16 x horizon limit without a decodable chunk: flagged, and the
    # chunk is zeros in model space, un-normalized like any other
    assert not r.valid and len(r.generated_token_ids) == 16 * tag.horizon
    np.testing.assert_allclose(r.actions, unnormalize(np.zeros((5, 7)), tag.action_stats), rtol=1e-6)
    # a decodable generation: stub the jitted greedy decoder with a known token sequence
    chunk = np.clip(np.sin(np.linspace(0, 3, 8))[:, None] * np.linspace(0.2, 0.9, 7)[None], -1, 1)
    bpe = fast.encode(chunk[None])[0]
    t = policy.cfg.tokens
    seq = [t.action_token_start + 3] + to_llm_ids(bpe, t.action_start, t.action_end, t.action_token_start) + [
        t.eos_token_id]
    toks = np.full((1, 16 * tag.horizon), -1, np.int32)
    toks[0, :len(seq)] = seq
    orig = policy._generate
    policy._generate = lambda *a, **k: (toks, np.array([len(seq)]))
    try:
        r = policy.predict_action(IMGS, "pick up the block", STATE, T.TAG, mode="discrete")
    finally:
        policy._generate = orig
    assert r.valid and r.generated_token_ids.tolist() == seq
    decoded, _ = fast.decode([bpe], horizon=8, action_dim=7)
    np.testing.assert_allclose(r.normalized_actions, decoded[0], atol=1e-6)
    assert np.abs(r.normalized_actions - chunk).max() < 0.1  # quantization error only
    np.testing.assert_allclose(r.actions, unnormalize(decoded[0, :5], tag.action_stats), rtol=1e-5)
    np.testing.assert_allclose(r.actions[:, -1], decoded[0, :5, -1], rtol=1e-5)  # gripper pass-through


@pytest.mark.parametrize("kwargs, match", [
    (dict(norm_tag="franka_droid"), r"unknown norm_tag 'franka_droid'.*tiny_arm"),
    (dict(state=np.zeros(8)), r"state has shape \(8,\).*expects \(7,\)"),
    (dict(state=[0, 1, "x", 0, 0, 0, 0]), "state must be a vector"),
    (dict(state=np.full(7, np.nan)), "NaN"),
    (dict(images=IMGS[:1]), "expects 2 images"),
    (dict(images=[]), "got 0 images"),
    (dict(images=[IMGS[0], IMGS[1].astype(np.int64)]), "image 1: dtype int64"),
    (dict(images=[IMGS[0], IMGS[1][..., 0]]), r"image 1: expected an HxWx3 RGB array, got shape \(48, 64\)"),
    (dict(images=[IMGS[0], np.zeros((4, 4, 4), np.uint8)]), "image 1: expected an HxWx3"),
    (dict(images="not images"), "images must be a list"),
    (dict(mode="both"), "mode must be one of"),
    (dict(task=None), "task/instruction must be a string"),
    (dict(num_steps=0), "num_steps=0"),
])
def test_bad_inputs_raise_clear_errors(policy, kwargs, match):
    args = dict(images=IMGS, task="pick", state=STATE, norm_tag=T.TAG)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        policy.predict_action(**args)


def test_norm_stats_schema_errors_and_gripper_mask():
    stats = T.norm_stats()
    meta = stats["metadata_by_tag"][T.TAG]
    for k in ("mask",):
        meta["action_stats"].pop(k)
    tags = parse_norm_stats(stats)   # no mask: derived from names + normalize_gripper=False
    assert tags[T.TAG].action_stats.mask.tolist() == [True] * 6 + [False]
    with pytest.raises(ValueError, match="metadata_by_tag"):
        parse_norm_stats({"format": "x"})
    bad = T.norm_stats()
    del bad["metadata_by_tag"][T.TAG]["action_stats"]
    with pytest.raises(ValueError, match="missing 'action_stats'"):
        parse_norm_stats(bad)


def test_layout_mismatch_is_refused(parts):
    _, cfg, params, stats, tok, fast = parts
    other = cfg.copy_and_resolve_references() if hasattr(cfg, "copy_and_resolve_references") else cfg
    other.tokens.image_patch = other.tokens.image_patch + 1
    try:
        with pytest.raises(ValueError, match="image_patch"):
            Policy(other, params, stats, tok, fast)
    finally:
        other.tokens.image_patch = other.tokens.image_patch - 1


def test_load_checkpoint_with_assets(parts, policy, tmp_path):
    d, cfg, params, stats, tok, fast = parts
    ckpt = T.save_checkpoint(str(tmp_path / "ckpt"), cfg, params, stats, os.path.join(d, "tokenizer.json"), fast)
    loaded = Policy.load(ckpt)
    assert loaded.action_tokenizer is not None and sorted(loaded.tags) == [T.TAG]
    a = loaded.predict_action(IMGS, "pick up the red block", STATE, T.TAG, seed=5)
    b = policy.predict_action(IMGS, "pick up the red block", STATE, T.TAG, seed=5)
    np.testing.assert_allclose(a.actions, b.actions, rtol=1e-5, atol=1e-6)
    os.remove(os.path.join(ckpt, "assets", "norm_stats.json"))
    with pytest.raises(FileNotFoundError, match="norm_stats.json"):
        Policy.load(ckpt)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    # an HF-looking folder is converted in memory; one that is not a MolmoAct2 release names its config.json
    with pytest.raises(ValueError, match=r"config.json: missing section 'text_config'"):
        Policy.load(str(hf))


def test_load_hf_folder_matches_and_leaves_no_temp_files(parts, policy, tmp_path):
    """Policy.load on an HF export converts in memory: same actions, and the temp dir holds nothing afterwards."""
    import subprocess
    import sys
    from molmoact2_jax.convert import molmoact2_hf
    d, cfg, params, stats, tok, fast = parts
    ckpt = T.save_checkpoint(str(tmp_path / "ckpt"), cfg, params, stats, os.path.join(d, "tokenizer.json"), fast)
    hf = str(tmp_path / "hf")
    molmoact2_hf.export_hf(ckpt, hf, progress=False)
    a = Policy.load(hf).predict_action(IMGS, "pick up the red block", STATE, T.TAG, seed=5)
    b = policy.predict_action(IMGS, "pick up the red block", STATE, T.TAG, seed=5)
    np.testing.assert_allclose(a.actions, b.actions, rtol=1e-6, atol=1e-6)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = "import sys; from molmoact2_jax.inference import Policy; Policy.load(sys.argv[1])"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code, hf], env=dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=root),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.listdir(tmp) == []


def _official_tokenizer(base_path, out_path, layout):
    """The official layout: a small base vocabulary, then the robot tokens as added tokens in rule-3.1 order,
    `<extra_i>` padding up to the embedding size, then the 14 multimodal strings (found by name)."""
    from tokenizers import AddedToken, Tokenizer
    tok = Tokenizer.from_file(base_path)
    strings = sorted(layout.special_strings().items(), key=lambda kv: kv[1])
    for s, i in strings:
        assert tok.add_tokens([AddedToken(s, special=False, normalized=False)]) == 1
        assert tok.token_to_id(s) == i, (s, i, tok.token_to_id(s))
    tok.save(out_path)
    return tok


def test_official_folder_with_its_own_tokenizer_loads(parts, tmp_path):
    """config.json states only the ids the official config states (not setup/control); the rest come from the
    folder's tokenizer by name. Policy.load and import-hf derive the same layout, and prompt ids equal the
    tokenizer's own encoding."""
    import json
    from molmoact2_jax.convert import molmoact2_hf
    from molmoact2_jax.checkpoint_io import params as params_io
    d, cfg, params, stats, tok, fast = parts
    ckpt = T.save_checkpoint(str(tmp_path / "ckpt"), cfg, params, stats, os.path.join(d, "tokenizer.json"), fast)
    hf = tmp_path / "hf"
    molmoact2_hf.export_hf(ckpt, str(hf), progress=False)
    backend = _official_tokenizer(os.path.join(d, "tokenizer.json"), str(hf / "tokenizer.json"), tok.layout)
    config = json.loads((hf / "config.json").read_text())
    for key in ("setup_start_token_id", "setup_end_token_id", "control_start_token_id", "control_end_token_id"):
        config.pop(key, None)
    (hf / "config.json").write_text(json.dumps(config))
    policy = Policy.load(str(hf))
    assert policy.cfg.tokens.setup_start == backend.token_to_id("<setup_start>") == tok.layout.setup_start
    text = ("The setup is <setup_start>single arm<setup_end>; <control_start>absolute joint pose<control_end> "
            "<state_start><state_3><state_255><state_end><|im_end|><action_output><action_start><action_7>"
            "<action_end><depth_start><depth_9><depth_end>")
    assert policy.tokenizer.encode(text) == backend.encode(text, add_special_tokens=False).ids
    molmoact2_hf.import_hf(str(hf), str(tmp_path / "imported"), progress=False)
    imported = params_io.load_model_config(str(tmp_path / "imported"))
    assert imported.tokens.to_dict() == policy.cfg.tokens.to_dict()
    assert imported.tokens.control_end == backend.token_to_id("<control_end>")

    config["state_start_token_id"] = config["state_start_token_id"] + 1  # the folder now contradicts itself
    (hf / "config.json").write_text(json.dumps(config))
    for load in (lambda: Policy.load(str(hf)), lambda: molmoact2_hf.import_hf(str(hf), str(tmp_path / "x"))):
        with pytest.raises(ValueError, match=r"config\.json states state_start_token_id=\d+ but .*tokenizer\.json "
                                             r"has <state_start> = \d+"):
            load()
