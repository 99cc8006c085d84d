"""MolmoThink training data and loss: depth codes converted into the shards, the three training styles
sampled by weight, their token layout, a clear error for depth styles on data without codes, depth-code input
noise, and a tiny Think run whose depth CE falls and whose depth gates learn."""
import json

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.errors import DataError
from data_pipelines.fixtures import make_fixture
from data_pipelines.formats.lerobot_reader import LeRobotDataset
from data_pipelines.pipeline.robot_dataset import PipelineConfig, Source, build_map_dataset
from data_pipelines.pipeline.robot_transform import RobotTransformConfig
from data_pipelines.stats import write_norm_stats
from data_pipelines.transforms import think_styles
from molmoact2_jax.models.config import get_model_config
from molmoact2_jax.training import depth_noise


def write_codes(src, out, skip_episode=None, seed=0):
    """A depth-code companion of the LeRobot dataset `src` in the released layout (one parquet per episode under
    data/chunk-000/); codes are random but fixed per (episode, frame)."""
    ds = LeRobotDataset(src)
    codes = {}
    for e in ds.episodes:
        if e.index == skip_episode:
            continue
        c = np.random.default_rng([seed, e.index]).integers(0, 128, (e.length, 100))
        codes[e.index] = c
        path = out / "data" / "chunk-000" / f"episode_{e.index:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"episode_index": np.full(e.length, e.index), "frame_index": np.arange(e.length),
                                 "depth_buffer_codes": [r.tolist() for r in c],
                                 "depth_updated_mask": [[True] * 100] * e.length}), path)
    return codes


@pytest.fixture(scope="module")
def think_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("think_data")
    src = make_fixture("lerobot-v3.0", "so100", root / "so100", episodes=3)
    codes = write_codes(src, root / "so100_depth")
    convert(ConvertOptions(source=f"lerobot:{src}", embodiment="so100", out=str(root / "shards"), horizon=8,
                           image_size=28, depth_codes=str(root / "so100_depth"), progress=False))
    convert(ConvertOptions(source=f"lerobot:{src}", embodiment="so100", out=str(root / "plain"), horizon=8,
                           image_size=28, progress=False))
    write_norm_stats([str(root / "shards")], root / "norm_stats.json")
    return root, src, codes


def pipeline(root, shard="shards", weights=None, seed=0, augment=False):
    probs = think_styles.style_probabilities(weights)
    return build_map_dataset(PipelineConfig(
        sources=[Source(str(root / shard))], norm_stats=str(root / "norm_stats.json"), batch_size=1, seed=seed,
        shard_index=0, shard_count=1,
        transform=RobotTransformConfig(image_size=28, max_action_horizon=8, augment=augment,
                                       style_probabilities=probs)))


def test_converted_records_hold_the_companion_codes(think_data):
    root, _, codes = think_data
    index = json.loads((root / "shards" / "index.json").read_text())
    assert index["depth_codes"] is True and index["depth_codes_source"].endswith("so100_depth")
    ds = pipeline(root, weights=dict(robot_action=1, robot_depth=1, robot_depth_action=1))
    for i in (0, 7, len(ds) // 2):
        ex = ds[i]
        np.testing.assert_array_equal(ex["depth_codes"], codes[int(ex["episode_id"])][int(ex["frame_index"])])


def test_style_sampling_follows_the_weights_and_is_reproducible(think_data):
    root = think_data[0]
    n = 1000
    ds = pipeline(root, weights=dict(robot_action=1, robot_depth=1, robot_depth_action=1))
    styles = [ds[i]["style"] for i in range(n)]
    counts = {s: styles.count(s) for s in think_styles.STYLES}
    # binomial(1000, 1/3): sd 14.9; 50 is 3.4 sd
    assert all(abs(c - n / 3) < 50 for c in counts.values()), counts
    assert [pipeline(root, weights=dict(robot_action=1, robot_depth=1, robot_depth_action=1))[i]["style"]
            for i in (3, 500, 999)] == [styles[3], styles[500], styles[999]]   # a function of (seed, index)
    ft = pipeline(root, weights=dict(robot_action=1, robot_depth=0, robot_depth_action=1), seed=1)
    ft_styles = [ft[i]["style"] for i in range(n)]
    assert "robot_depth" not in ft_styles
    assert abs(ft_styles.count("robot_action") - n / 2) < 55   # sd 15.8
    for i in range(40):
        ex = ds[i]
        assert bool(ex["has_actions"]) == (ex["style"] != "robot_depth")
        assert ex["prompt"].endswith({"robot_action": "<action_output>", "robot_depth": "assistant\n<depth_output>",
                                      "robot_depth_action": "<depth_output><action_output>"}[ex["style"]])


def test_depth_styles_on_data_without_codes_fail_naming_the_episode(think_data):
    root = think_data[0]
    with pytest.raises(DataError) as e:
        pipeline(root, "plain", weights=dict(robot_action=1, robot_depth=0, robot_depth_action=1))
    first = json.loads((root / "plain" / "shard-00000.json").read_text())["episodes"][0]["episode_id"]
    assert f"episode={first}" in str(e.value) and "depth_codes" in str(e.value) and "plain" in str(e.value)
    plain = pipeline(root, "plain")  # without depth styles the same shards train as before
    assert plain[0]["style"] == "robot_action" and "depth_codes" not in plain[0]


def test_companion_missing_an_episode_is_named(think_data, tmp_path):
    _, src, _ = think_data
    write_codes(src, tmp_path / "depth", skip_episode=1)
    with pytest.raises(DataError, match=r"no depth codes .*episode=1"):
        convert(ConvertOptions(source=f"lerobot:{src}", embodiment="so100", out=str(tmp_path / "s"), horizon=8,
                               image_size=28, depth_codes=str(tmp_path / "depth"), progress=False))
    index = convert(ConvertOptions(source=f"lerobot:{src}", embodiment="so100", out=str(tmp_path / "s2"), horizon=8,
                                   image_size=28, depth_codes=str(tmp_path / "depth"), on_error="skip",
                                   progress=False))
    assert [s["episode"] for s in index["skipped"]] == ["1"] and index["total_episodes"] == 2


def test_think_token_layout_per_style(think_data):
    from data_pipelines.transforms.model_inputs import ModelInputs
    from molmoact2_jax.inference import testing as T

    root, _, codes = think_data
    cfg, _, _, tok, fast = T.make_parts(str(root / "parts"))
    L = tok.layout
    ds = pipeline(root, weights=dict(robot_action=1, robot_depth=1, robot_depth_action=1))
    seen = set()
    for i in range(30):
        ex = ds[i]
        for fmt in ("continuous", "both"):
            mi = ModelInputs.for_model(tok, cfg, seq_len=None, openfast=fast if fmt == "both" else None,
                                       action_format=fmt)
            out = mi(dict(ex))
            ids, loss = out["input_ids"].tolist(), out["loss_mask"]
            n_prompt = len(mi.prompt_ids(ex["prompt"], int(ex["image_mask"].sum())))
            answer = ids[n_prompt:]
            assert loss[:n_prompt].sum() == 0 and loss[n_prompt:].all()
            depth = [L.depth_start] + [L.depth_token(int(c)) for c in
                                       codes[int(ex["episode_id"])][int(ex["frame_index"])]] + [L.depth_end]
            if ex["style"] == "robot_depth":
                assert answer == depth + [L.eos]
            elif ex["style"] == "robot_depth_action":
                assert answer[:102] == depth
                assert answer[102:] == ([] if fmt == "continuous" else mi.answer_ids(ex))
            else:
                assert answer == ([] if fmt == "continuous" else mi.answer_ids(ex))
            seen.add(ex["style"])
    assert seen == set(think_styles.STYLES)


def test_depth_code_input_noise_replaces_about_the_rate_and_never_a_label():
    tokens = get_model_config("tiny").tokens
    c0 = tokens.depth_token_start
    rng = np.random.default_rng(0)
    b, span = 64, 100
    codes = rng.integers(0, 128, (b, span))
    # [text, <depth_start>, 100 codes, <depth_end>, a depth code outside any span, text]
    ids = np.concatenate([np.full((b, 3), 7), np.full((b, 1), tokens.depth_start), c0 + codes,
                          np.full((b, 1), tokens.depth_end), np.full((b, 1), c0 + 5), np.full((b, 2), 9)], 1)
    ids = ids.astype(np.int32)
    target = np.concatenate([ids[:, 1:], np.full((b, 1), -1, np.int32)], 1)
    batch = dict(input_ids=ids, target_ids=target, attention_mask=np.ones_like(ids, bool))
    out = jax.jit(lambda x, r: depth_noise.add_depth_code_input_noise(x, r, 0.1, tokens))(
        batch, jax.random.PRNGKey(3))
    new = np.asarray(out["input_ids"])
    changed = new != ids
    inside = np.zeros_like(changed)
    inside[:, 4:4 + span] = True
    assert not changed[~inside].any()                       # only codes inside <depth_start> .. <depth_end>
    assert ((new[inside] >= c0) & (new[inside] < c0 + 128)).all()
    # a replaced code equals the old one with p 1/128: expected changed share 0.1 * 127/128 = 0.0992 (sd 0.003)
    assert abs(changed[inside].mean() - 0.0992) < 0.01, changed[inside].mean()
    np.testing.assert_array_equal(np.asarray(out["target_ids"]), target)   # labels kept
    same = jax.jit(lambda x, r: depth_noise.add_depth_code_input_noise(x, r, 0.1, tokens))(
        batch, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(same["input_ids"]), new)    # a function of the step's rng
