"""Round-trip: every fixture format reads back what the simulator wrote.

Codec tolerance (stated): decoded video frames have mean |error| <= 8/255 per frame and PSNR >= 24 dB
against the source frames (yuv420p chroma subsampling smears the sharp block edges at 36x64);
states, actions, tasks and timestamps are exact.
"""
import numpy as np
import pytest

from data_pipelines.errors import FrameTimestampError
from data_pipelines.fixtures import fixture_embodiment, make_fixture
from data_pipelines.formats.droid_rlds import DroidRLDS
from data_pipelines.formats.lerobot_reader import LeRobotDataset
from data_pipelines.formats.lerobot_writer import DIRTY_VARIANTS
from data_pipelines.synthetic import simulate_episode

MAX_MEAN_ABS = 8.0
MIN_PSNR = 24.0


def assert_video_close(decoded, source):
    assert decoded.shape == source.shape
    err = decoded.astype(np.float64) - source
    mean_abs = np.abs(err).mean(axis=(1, 2, 3))
    psnr = 10 * np.log10(255.0**2 / np.maximum((err**2).mean(axis=(1, 2, 3)), 1e-9))
    assert mean_abs.max() <= MAX_MEAN_ABS, mean_abs.max()
    assert psnr.min() >= MIN_PSNR, psnr.min()


def check_lerobot(root, fmt, embodiment, n, **kw):
    emb = fixture_embodiment(embodiment, fmt, kw.get("so100_naming"))
    ds = LeRobotDataset(root)
    assert len(ds.episodes) == n
    assert ds.camera_keys == list(emb.camera_keys)
    assert ds.names("observation.state") == list(emb.state_names)
    for i in range(n):
        src = simulate_episode(emb, i)
        cols = ds.episode_columns(i)
        np.testing.assert_array_equal(cols["observation.state"], src.states)
        np.testing.assert_array_equal(cols["action"], src.actions)
        np.testing.assert_allclose(cols["timestamp"], np.arange(src.length) / emb.fps, atol=1e-6)
        assert ds.task(i, annotated=False) == src.task
        for cam, key in zip(emb.cameras, emb.camera_keys):
            assert_video_close(ds.episode_video(i, key), src.images[cam])
            pick = [src.length - 1, 0, 5]
            assert_video_close(ds.frames(i, key, pick), src.images[cam][pick])
    return ds


@pytest.mark.parametrize("fmt,embodiment,codec", [
    ("lerobot-v3.0", "so100", "av1"), ("lerobot-v3.0", "droid", "h264"),
    ("lerobot-v2.1", "yam", "h264"), ("lerobot-v2.1", "droid", "av1")])
def test_lerobot_roundtrip(tmp_path, fmt, embodiment, codec):
    n = 4
    make_fixture(fmt, embodiment, tmp_path / "ds", episodes=n, codec=codec)
    ds = check_lerobot(tmp_path / "ds", fmt, embodiment, n)
    assert ds.version == fmt.split("-")[1]
    assert ds.info["features"][ds.camera_keys[0]]["info"]["video.codec"] == codec


def test_yam_v3_rollover_and_annotations(yam_v3):
    ds = check_lerobot(yam_v3, "lerobot-v3.0", "yam", 6)
    emb = fixture_embodiment("yam", "lerobot-v3.0")
    assert emb.dim == 14 and ds.camera_keys == [f"observation.images.{c}" for c in ("top", "left", "right")]
    # several episodes share a file (non-zero offsets), cameras roll over at different episodes,
    # and file_index rolls into chunk-001
    offsets = [v[1] for e in ds.episodes for v in e.videos.values()]
    assert max(offsets) > 0
    assert any(len({v[0] for v in e.videos.values()}) > 1 for e in ds.episodes)
    assert any("chunk-001" in str(v[0]) for e in ds.episodes for v in e.videos.values())
    assert len({e.data_path for e in ds.episodes}) == 2
    assert (yam_v3 / "meta/tasks_annotated.parquet").exists()
    assert ds.task(0) == simulate_episode(emb, 0).annotated_task  # annotated wins by default


def test_so100_both_naming_generations(tmp_path, so100_v21):
    old = LeRobotDataset(so100_v21)
    assert old.info["robot_type"] == "so100" and old.names("action")[0] == "main_shoulder_pan"
    assert old.camera_keys == ["observation.images.laptop", "observation.images.phone"]
    assert not (so100_v21 / "meta/stats.json").exists() and (so100_v21 / "meta/episodes_stats.jsonl").exists()
    assert old.info["total_videos"] == 6 and "total_chunks" in old.info
    make_fixture("lerobot-v3.0", "so100", tmp_path / "new", episodes=2, so100_naming="new")
    new = LeRobotDataset(tmp_path / "new")
    assert new.info["robot_type"] == "so101_follower" and new.names("action")[0] == "shoulder_pan.pos"


@pytest.mark.parametrize("fmt", ["lerobot-v3.0", "lerobot-v2.1"])
def test_dirty_variants_read(tmp_path, fmt):
    make_fixture(fmt, "so100", tmp_path / "d", episodes=3, dirty=DIRTY_VARIANTS, so100_naming="new")
    ds = check_lerobot(tmp_path / "d", fmt, "so100", 3, so100_naming="new")
    f = ds.features["observation.images.top"]
    assert f["shape"][0] == 3 and "video_info" in f and ds.image_hw("observation.images.top") == (48, 64)
    assert isinstance(ds.info["fps"], float) and isinstance(ds.features["action"]["names"], dict)
    assert "q01" not in ds.stats()["action"]


def test_stats_match_data(yam_v3):
    ds = LeRobotDataset(yam_v3)
    actions = np.concatenate([ds.episode_columns(i)["action"] for i in range(len(ds.episodes))])
    st = ds.stats()["action"]
    np.testing.assert_allclose(st["q01"], np.quantile(actions.astype(np.float64), 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(st["mean"], actions.mean(0), rtol=1e-5, atol=1e-6)
    assert st["count"] == [len(actions)]


def test_timestamp_tolerance_rule(yam_v3):
    ds = LeRobotDataset(yam_v3, tolerance_s=1e-4)
    ep = ds.episodes[1]
    path, from_ts = ep.videos["observation.images.top"]
    ds.videos.frames_at(path, [from_ts + 2 / 30 + 0.5e-4])  # within tolerance: fine
    with pytest.raises(FrameTimestampError) as e:
        ds.videos.frames_at(path, [from_ts + 2 / 30 + 0.01], episode=1, key="observation.images.top")
    assert str(path) in str(e.value) and "episode=1" in str(e.value) and "tolerance_s" in str(e.value)


def test_droid_rlds_roundtrip(droid_rlds):
    emb = fixture_embodiment("droid", "droid-rlds")
    reader = DroidRLDS(droid_rlds.parent.parent)  # a parent with exactly one version folder is accepted
    got = {int(e.file_path.split("ep_")[1][:6]): e for e in reader}
    assert sorted(got) == [0, 1, 2, 3]
    assert [int(e.file_path.split("ep_")[1][:6]) for e in reader] != [0, 1, 2, 3]  # TFDS-style hashed order
    for i, e in got.items():
        src = simulate_episode(emb, i)
        np.testing.assert_array_equal(e.states, src.states)
        np.testing.assert_array_equal(e.actions, src.actions)
        assert e.instructions[0] == src.task and e.success
        for cam in emb.cameras:
            assert_video_close(e.images[cam], src.images[cam])  # JPEG q95: well inside the codec bound


@pytest.mark.parametrize("fmt", ["lerobot-v3.0", "lerobot-v2.1"])
def test_image_dtype_png_in_parquet(tmp_path, fmt):
    emb = fixture_embodiment("so100", fmt)
    make_fixture(fmt, "so100", tmp_path / "d", episodes=2, image_storage="image")
    ds = LeRobotDataset(tmp_path / "d")
    assert not (tmp_path / "d/videos").exists() and ds.features[ds.camera_keys[0]]["dtype"] == "image"
    for i in range(2):
        src = simulate_episode(emb, i)
        for cam, key in zip(emb.cameras, emb.camera_keys):
            np.testing.assert_array_equal(ds.episode_video(i, key), src.images[cam])  # PNG: lossless
            np.testing.assert_array_equal(ds.frames(i, key, [3, 0]), src.images[cam][[3, 0]])
