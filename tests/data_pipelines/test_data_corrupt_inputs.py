"""Corrupted inputs give a clear error naming file / episode / key — never silent garbage."""
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipelines.errors import (CorruptRecordError, DataError, IncompleteDatasetError, MissingVideoError,
                                   NonFiniteValueError, ShapeMismatchError, TruncatedFileError)
from data_pipelines.fixtures import make_fixture
from data_pipelines.formats.droid_rlds import DroidRLDS
from data_pipelines.formats.lerobot_reader import LeRobotDataset


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_flipped_byte_in_tfrecord(tmp_path, droid_rlds):
    root = _copy(droid_rlds, tmp_path / "r")
    shard = sorted(root.glob("*.tfrecord-*"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError) as e:
        list(DroidRLDS(root))
    msg = str(e.value)
    assert str(shard) in msg and "CRC mismatch" in msg and "episode=" in msg


def test_truncated_tfrecord(tmp_path, droid_rlds):
    root = _copy(droid_rlds, tmp_path / "r")
    shard = sorted(root.glob("*.tfrecord-*"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(TruncatedFileError) as e:
        list(DroidRLDS(root))
    assert str(shard) in str(e.value) and "episode=" in str(e.value)


def test_truncated_parquet_names_file_and_episode(tmp_path, so100_v21):
    root = _copy(so100_v21, tmp_path / "d")
    path = root / "data/chunk-000/episode_000001.parquet"
    path.write_bytes(path.read_bytes()[:200])
    ds = LeRobotDataset(root)
    ds.episode_columns(0)
    with pytest.raises(TruncatedFileError) as e:
        ds.episode_columns(1)
    assert str(path) in str(e.value) and "episode=1" in str(e.value)


def test_unfinalized_v3_dataset(tmp_path):
    make_fixture("lerobot-v3.0", "so100", tmp_path / "d", episodes=4, finalize=False)
    ds = LeRobotDataset(tmp_path / "d")
    with pytest.raises(TruncatedFileError) as e:
        ds.episode_columns(3)
    assert "file-001.parquet" in str(e.value) and "finalized" in str(e.value)


def test_truncated_mp4(tmp_path, yam_v3):
    root = _copy(yam_v3, tmp_path / "d")
    ds = LeRobotDataset(root)
    key = "observation.images.top"
    path, _ = ds.episodes[1].videos[key]  # shared file: episodes 0 and 1
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ds = LeRobotDataset(root)
    with pytest.raises(DataError) as e:
        ds.episode_video(1, key)
    assert str(path) in str(e.value) and "episode=1" in str(e.value)


def test_missing_camera(tmp_path, so100_v21):
    root = _copy(so100_v21, tmp_path / "d")
    path = root / "videos/chunk-000/observation.images.phone/episode_000002.mp4"
    path.unlink()
    ds = LeRobotDataset(root)
    with pytest.raises(MissingVideoError) as e:
        ds.frames(2, "observation.images.phone", [0])
    assert str(path) in str(e.value) and "episode=2" in str(e.value) and "observation.images.phone" in str(e.value)
    with pytest.raises(MissingVideoError) as e:
        ds.frames(0, "observation.images.side", [0])
    assert "observation.images.side" in str(e.value)


def _rewrite_episode(path, fn):
    t = pq.read_table(path)
    pq.write_table(fn(t), path)


def test_nan_action(tmp_path, so100_v21):
    root = _copy(so100_v21, tmp_path / "d")
    path = root / "data/chunk-000/episode_000002.parquet"

    def poison(t):
        a = np.stack(t["action"].to_numpy(zero_copy_only=False)).astype(np.float32)
        a[4, 2] = np.nan
        return t.set_column(t.column_names.index("action"), "action", pa.array(list(a), pa.list_(pa.float32())))
    _rewrite_episode(path, poison)
    with pytest.raises(NonFiniteValueError) as e:
        LeRobotDataset(root).episode_columns(2)
    assert "episode=2" in str(e.value) and "key=action" in str(e.value) and "frame 4" in str(e.value)


def test_shape_mismatch(tmp_path, so100_v21):
    root = _copy(so100_v21, tmp_path / "d")
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.state"]["shape"] = [7]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ShapeMismatchError) as e:
        LeRobotDataset(root).episode_columns(0)
    assert "key=observation.state" in str(e.value) and "declares 7" in str(e.value)


def test_not_a_dataset(tmp_path):
    with pytest.raises(IncompleteDatasetError) as e:
        LeRobotDataset(tmp_path)
    assert "info.json" in str(e.value)


def test_inspect_reports_jittery_timestamps(tmp_path, so100_v21, capsys):
    from molmoact2_jax.cli import data as cli
    root = _copy(so100_v21, tmp_path / "d")
    path = root / "data/chunk-000/episode_000001.parquet"

    def jitter(t):
        ts = t["timestamp"].to_numpy().copy()
        ts[5:] += 0.01  # a resumed recording: a gap inside the episode
        return t.set_column(t.column_names.index("timestamp"), "timestamp", pa.array(ts, pa.float32()))
    _rewrite_episode(path, jitter)
    assert cli.main(["inspect", str(root)]) == 1
    out = capsys.readouterr().out
    assert "FrameTimestampError" in out and "episode=1" in out and "not 1/fps apart" in out
