"""convert -> ArrayRecord shards (content, resume, skip policy), stats -> norm_stats.json, CLI."""
import json
import shutil

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from molmoact2_jax.cli import data as cli
from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.errors import NonFiniteValueError
from data_pipelines.fixtures import fixture_embodiment, make_fixture
from data_pipelines.formats.images import decode_image
from data_pipelines.formats.images import resize_square
from data_pipelines.record_codec import decode_record
from data_pipelines.shards import load_episodes
from data_pipelines.stats import compute_norm_stats
from data_pipelines.synthetic import simulate_episode


def read_all(shard_dir, shard_file):
    r = ArrayRecordReader(str(shard_dir / shard_file))
    recs = [decode_record(b) for b in r.read(list(range(r.num_records())))]
    r.close()
    return recs


@pytest.fixture(scope="module")
def yam_shards(yam_v3, tmp_path_factory):
    out = tmp_path_factory.mktemp("yam_shards")
    convert(ConvertOptions(f"lerobot:{yam_v3}", "yam", str(out), episodes_per_shard=2, workers=2, progress=False))
    return out


def test_convert_records_match_source(yam_shards):
    emb = fixture_embodiment("yam", "lerobot-v3.0")
    index = json.loads((yam_shards / "index.json").read_text())
    assert index["total_episodes"] == 6 and len(index["shards"]) == 3
    assert index["total_frames"] == sum(simulate_episode(emb, i).length for i in range(6))
    eps = load_episodes(yam_shards)
    for e in eps[:2] + eps[-1:]:
        i = int(e["episode_id"])
        src = simulate_episode(emb, i)
        recs = read_all(yam_shards, e["shard"])[e["first_record"]:e["first_record"] + e["num_frames"]]
        assert e["task"] == src.annotated_task  # the converted task is the MolmoAct2 annotated one
        for t in (0, 7, src.length - 1):
            r = recs[t]
            np.testing.assert_array_equal(r["state"], src.states[t])
            idx = np.minimum(np.arange(t, t + 30), src.length - 1)
            np.testing.assert_array_equal(r["actions"], src.actions[idx])
            np.testing.assert_array_equal(r["action_is_pad"], np.arange(t, t + 30) >= src.length)
            img = decode_image(r["image/observation.images.left"])  # squashed to the model's 378x378
            want = resize_square(src.images["left"][t], 378)
            assert img.shape == (378, 378, 3)
            assert np.abs(img.astype(float) - want).mean() < 10  # video codec + JPEG q95


def test_convert_is_resumable(yam_v3, tmp_path):
    out = tmp_path / "s"
    opts = ConvertOptions(f"lerobot:{yam_v3}", "yam", str(out), episodes_per_shard=3, image_size=32, progress=False)
    first = convert(opts)
    assert first["resumed_shards"] == 0
    (out / "shard-00001.json").unlink()              # as if killed before the shard finished
    (out / "shard-00001-of-00002.array_record.tmp").write_bytes(b"half")
    again = convert(opts)
    assert again["resumed_shards"] == 1 and again["total_frames"] == first["total_frames"]
    assert not list(out.glob("*.tmp"))
    assert read_all(out, "shard-00001-of-00002.array_record")[0]["frame_index"] == 0


def test_convert_skip_or_raise_on_bad_episode(tmp_path, so100_nan_episode):
    root = so100_nan_episode
    with pytest.raises(NonFiniteValueError, match="episode=1"):
        convert(ConvertOptions(f"lerobot:{root}", "so100", str(tmp_path / "a"), progress=False))
    index = convert(ConvertOptions(f"lerobot:{root}", "so100", str(tmp_path / "b"), on_error="skip",
                                   progress=False))
    assert index["total_episodes"] == 2 and len(index["skipped"]) == 1
    assert index["skipped"][0]["episode"] == "1" and "key=action" in index["skipped"][0]["error"]


def test_norm_stats_schema_and_values(yam_shards):
    stats = compute_norm_stats([yam_shards])
    assert stats["format"] == "molmoact2_norm_stats.v1" and stats["norm_mode"] == "q01_q99"
    m = stats["metadata_by_tag"]["yam_dual_molmoact2"]
    for k in ("action_key", "state_keys", "camera_keys", "normalize_gripper", "action_dim", "action_horizon",
              "n_action_steps", "setup_type", "control_mode"):
        assert k in m
    assert m["normalize_gripper"] is False and m["action_dim"] == 14 and m["action_horizon"] == 30
    a = m["action_stats"]
    assert set(a) >= {"min", "max", "mean", "std", "q01", "q99", "q10", "q90", "mask", "names", "count"}
    assert [n for n, k in zip(a["names"], a["mask"]) if not k] == ["left_gripper.pos", "right_gripper.pos"]
    emb = fixture_embodiment("yam", "lerobot-v3.0")
    actions = np.concatenate([simulate_episode(emb, i).actions for i in range(6)]).astype(np.float64)
    np.testing.assert_allclose(a["q01"], np.quantile(actions, 0.01, axis=0), rtol=1e-12)
    np.testing.assert_allclose(a["q99"], np.quantile(actions, 0.99, axis=0), rtol=1e-12)
    assert a["count"] == len(actions)


def test_norm_stats_multi_repo_merge(tmp_path, so100_v21):
    make_fixture("lerobot-v3.0", "so100", tmp_path / "new", episodes=2, seed=1)
    dirs = []
    for name, src in (("old", so100_v21), ("new", tmp_path / "new")):
        convert(ConvertOptions(f"lerobot:{src}", "so100", str(tmp_path / f"s_{name}"), progress=False))
        dirs.append(tmp_path / f"s_{name}")
    merged = compute_norm_stats(dirs)["metadata_by_tag"]["so100_so101_molmoact2"]
    parts = [compute_norm_stats([d])["metadata_by_tag"]["so100_so101_molmoact2"]["action_stats"] for d in dirs]
    a, n = merged["action_stats"], np.array([p["count"] for p in parts])
    assert merged["normalize_gripper"] is True and all(a["mask"])  # SO100 normalizes its 0..100 gripper
    assert a["count"] == n.sum() and a["names"][0] == "shoulder_pan"  # main_ prefix canonicalized
    assert merged["name_variants"][0][0] == "shoulder_pan.pos"
    w = n / n.sum()
    np.testing.assert_allclose(a["q01"], w @ np.array([p["q01"] for p in parts]))
    np.testing.assert_allclose(a["mean"], w @ np.array([p["mean"] for p in parts]))
    np.testing.assert_allclose(a["min"], np.min([p["min"] for p in parts], 0))
    pooled = np.sqrt(w @ (np.array([p["std"] for p in parts]) ** 2
                          + (np.array([p["mean"] for p in parts]) - np.array(a["mean"])) ** 2))
    np.testing.assert_allclose(a["std"], pooled)


def _without_paths(stats):
    for m in stats["metadata_by_tag"].values():
        m["repos"] = [{k: v for k, v in r.items() if k == "count"} for r in m["repos"]]
    return stats


def test_norm_stats_without_video_equal_the_converters(yam_v3, yam_shards, so100_v21, droid_rlds, tmp_path,
                                                       monkeypatch):
    """`molmoact2-data stats lerobot:DIR|rlds:DIR` reads numeric columns only and gives the converter's numbers."""
    from data_pipelines.formats import images, lerobot_reader
    from data_pipelines.stats import compute_source_norm_stats, write_norm_stats
    # the converter's stats first: one YAM repo; two SO100 repos of one tag (old v2.1 naming + v3.0); DROID RLDS
    make_fixture("lerobot-v3.0", "so100", tmp_path / "new", episodes=2, seed=1)
    so100_dirs = []
    for name, src in (("old", so100_v21), ("new", tmp_path / "new")):
        convert(ConvertOptions(f"lerobot:{src}", "so100", str(tmp_path / f"s_{name}"), horizon=10, progress=False))
        so100_dirs.append(tmp_path / f"s_{name}")
    convert(ConvertOptions(f"rlds:{droid_rlds}", "droid", str(tmp_path / "s_droid"), progress=False))
    # then the direct path, with every video and image decoder disabled: it must not need one
    monkeypatch.setattr(lerobot_reader.LeRobotDataset, "episode_video", None)
    monkeypatch.setattr(images, "decode_image", None)
    assert _without_paths(compute_source_norm_stats([f"lerobot:{yam_v3}"], "yam")) == \
        _without_paths(compute_norm_stats([yam_shards]))
    direct = compute_source_norm_stats([f"lerobot:{so100_v21}", f"lerobot:{tmp_path / 'new'}"], "so100",
                                       horizon=10)
    assert _without_paths(direct) == _without_paths(compute_norm_stats(so100_dirs))
    assert direct["metadata_by_tag"]["so100_so101_molmoact2"]["action_horizon"] == 10
    assert cli.main(["stats", f"rlds:{droid_rlds}", "--embodiment", "droid", "--out", str(tmp_path / "r.json")]) == 0
    assert _without_paths(json.loads((tmp_path / "r.json").read_text())) == \
        _without_paths(compute_norm_stats([tmp_path / "s_droid"]))
    with pytest.raises(ValueError, match="need --embodiment"):
        write_norm_stats([f"lerobot:{yam_v3}"], tmp_path / "x.json")
    with pytest.raises(ValueError, match="not both"):
        write_norm_stats([f"lerobot:{yam_v3}", str(yam_shards)], tmp_path / "x.json", embodiment="yam")


def test_cli_end_to_end(tmp_path, capsys, droid_rlds):
    assert cli.main(["fixture", "--format", "droid-rlds", "--embodiment", "droid", "--out", str(tmp_path / "f"),
                     "--episodes", "2"]) == 0
    assert cli.main(["convert", "--source", f"rlds:{tmp_path / 'f'}", "--embodiment", "droid",
                     "--out", str(tmp_path / "s"), "--workers", "2"]) == 0
    assert cli.main(["stats", str(tmp_path / "s"), "--out", str(tmp_path / "ns.json")]) == 0
    ns = json.loads((tmp_path / "ns.json").read_text())
    droid = ns["metadata_by_tag"]["franka_droid"]
    assert droid["action_stats"]["mask"] == [True] * 7 + [False] and droid["action_horizon"] == 15
    assert cli.main(["inspect", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "episodes: 2" in out and "errors: 0" in out
    shard = sorted((tmp_path / "f/droid/1.0.1").glob("*.tfrecord-*"))[0]
    data = bytearray(shard.read_bytes())
    data[40] ^= 1
    shard.write_bytes(bytes(data))
    assert cli.main(["inspect", str(tmp_path / "f")]) == 1
    assert "CorruptRecordError" in capsys.readouterr().out
    assert cli.main(["fixture", "--format", "droid-rlds", "--embodiment", "yam", "--out", str(tmp_path / "x")]) == 2
    assert "only exists for --embodiment droid" in capsys.readouterr().err


def test_convert_counts_corrupt_rlds_and_missing_video_as_skips(tmp_path, droid_rlds, so100_v21):
    rlds = tmp_path / "rlds"
    shutil.copytree(droid_rlds, rlds)
    shard = sorted(rlds.glob("*.tfrecord-*"))[0]
    data = bytearray(shard.read_bytes())
    data[-50] ^= 0xFF  # inside the last record of the shard
    shard.write_bytes(bytes(data))
    index = convert(ConvertOptions(f"rlds:{rlds}", "droid", str(tmp_path / "r"), image_size=32, on_error="skip",
                                   progress=False))
    assert index["total_episodes"] == 3 and len(index["skipped"]) == 1
    assert shard.name in index["skipped"][0]["error"] and index["skipped"][0]["type"] == "CorruptRecordError"
    le = tmp_path / "le"
    shutil.copytree(so100_v21, le)
    (le / "videos/chunk-000/observation.images.laptop/episode_000000.mp4").unlink()
    index = convert(ConvertOptions(f"lerobot:{le}", "so100", str(tmp_path / "l"), image_size=32, on_error="skip",
                                   progress=False))
    assert [s["type"] for s in index["skipped"]] == ["MissingVideoError"] and index["total_episodes"] == 2


def test_norm_stats_name_the_cameras_the_records_hold(tmp_path):
    """A dataset whose cameras are not the embodiment's declared ones (MetaWorld recorded from behindGripper and
    gripperPOV, declared corner2 and gripperPOV): norm_stats.json must list the recorded cameras in record order,
    the order training feeds them, as a policy reads it to order its images. It listed the declared names, and
    molmoact2-eval refused the demo's export, or, with names disjoint from the declared ones, silently fed the
    images in the simulator config's order."""
    import dataclasses
    from data_pipelines.formats.lerobot_writer import WriteOptions, write_lerobot
    from data_pipelines.stats import compute_source_norm_stats
    emb = fixture_embodiment("yam", "lerobot-v3.0")
    recorded = dataclasses.replace(emb, cameras=("right", "wrist_cam", "top"))
    eps = [simulate_episode(recorded, i, image_hw=(24, 32), length=12) for i in range(2)]
    root = write_lerobot(tmp_path / "ds", recorded, eps, WriteOptions(version="v3.0", codec="h264"))
    want = [f"observation.images.{c}" for c in ("right", "wrist_cam", "top")]
    # the built-in yam refuses cameras other than its top/left/right (require_camera_keys); an embodiment file that
    # takes the dataset's own cameras, as metaworld.json does for recordings, converts them
    any_cams = tmp_path / "yam_any_cameras.json"
    any_cams.write_text(json.dumps(dataclasses.replace(emb, require_camera_keys=False).to_dict()))
    index = convert(ConvertOptions(f"lerobot:{root}", str(any_cams), str(tmp_path / "shards"), image_size=32,
                                   progress=False))
    assert index["camera_keys"] == want and index["tag_metadata"]["camera_keys"] == want
    converted = compute_norm_stats([tmp_path / "shards"])["metadata_by_tag"][emb.tag]
    raw = compute_source_norm_stats([f"lerobot:{root}"], str(any_cams))["metadata_by_tag"][emb.tag]
    assert converted["camera_keys"] == raw["camera_keys"] == want
