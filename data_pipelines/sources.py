"""Uniform episode access over LeRobot and RLDS sources: `lerobot:PATH` / `rlds:PATH`."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from data_pipelines.embodiments import Embodiment
from data_pipelines.errors import NonFiniteValueError, ShapeMismatchError
from data_pipelines.formats import tf_example, tfrecord
from data_pipelines.formats.droid_rlds import LEROBOT_CAMERAS, DroidRLDS
from data_pipelines.formats.lerobot_reader import LeRobotDataset


@dataclasses.dataclass
class SourceEpisode:
    source_key: str                  # where it came from (for error messages / index)
    states: np.ndarray               # [T, D] float32
    actions: np.ndarray              # [T, D] float32
    images: dict[str, np.ndarray]    # camera key -> [T, H, W, 3] uint8 (every frame decoded)
    task: str

    @property
    def length(self) -> int:
        return len(self.states)


def parse_source(spec: str) -> tuple[str, Path]:
    kind, sep, path = spec.partition(":")
    if not sep or kind not in ("lerobot", "rlds"):
        raise ValueError(f"--source must look like lerobot:PATH or rlds:PATH, got {spec!r}")
    return kind, Path(path)


class LeRobotSource:
    def __init__(self, path, emb: Embodiment, tolerance_s: float = 1e-4):
        self.ds = LeRobotDataset(path, tolerance_s=tolerance_s)
        self.path = Path(path)
        self.camera_keys = list(self.ds.camera_keys)
        self.state_names = self.ds.names("observation.state") or list(emb.state_names)
        self.fps = self.ds.fps
        _check_dim(len(self.state_names), emb, self.ds.root / "meta/info.json")

    def groups(self, episodes_per_shard: int) -> list[list]:
        ids = [e.index for e in self.ds.episodes]
        return [ids[i:i + episodes_per_shard] for i in range(0, len(ids), episodes_per_shard)]

    def load_group(self, ids):
        """Yield (episode id, SourceEpisode or DataError) so a bad episode can be skipped."""
        for ep in ids:
            try:
                cols = self.ds.episode_columns(ep)
                imgs = {k: self.ds.episode_video(ep, k, cols["timestamp"]) for k in self.camera_keys}
                task = self.ds.task(ep, int(cols["task_index"][0]))
                yield ep, SourceEpisode(f"{self.path}#episode={ep}", cols["observation.state"], cols["action"],
                                        imgs, task)
            except Exception as e:  # noqa: BLE001 - handed to the caller's skip/raise policy
                yield ep, e

    def load_numeric(self, ids):
        """Yield (episode id, (states, actions) or DataError) from the parquet files alone: no video is opened."""
        for ep in ids:
            try:
                cols = self.ds.episode_columns(ep)
                yield ep, (cols["observation.state"], cols["action"])
            except Exception as e:  # noqa: BLE001 - handed to the caller's skip/raise policy
                yield ep, e


class RLDSSource:
    """One group per input tfrecord shard; episode ids are '<shard>#<record>'."""

    def __init__(self, path, emb: Embodiment, tolerance_s: float = 1e-4):
        self.reader = DroidRLDS(path)
        self.path = self.reader.root
        self.camera_keys = [f"observation.images.{c}" for c in LEROBOT_CAMERAS]
        self.state_names = list(emb.state_names)
        self.fps = 15.0
        _check_dim(8, emb, self.path)

    def groups(self, episodes_per_shard: int) -> list[list]:
        return [[str(s)] for s in self.reader.shards]

    def _parsed(self, ids):
        """Yield (episode id, shard, record index, parsed features or the DataError reading them)."""
        for shard in ids:
            n = 0
            try:
                for n, rec in enumerate(tfrecord.read_records(shard)):
                    try:
                        yield f"{Path(shard).name}#{n}", shard, n, tf_example.parse_example(rec, path=shard, record=n)
                    except Exception as e:  # noqa: BLE001
                        yield f"{Path(shard).name}#{n}", shard, n, e
            except Exception as e:  # noqa: BLE001 - framing error: rest of the shard is unreadable
                yield f"{Path(shard).name}#{n}+", shard, n, e

    def _converted(self, ids, convert):
        """Yield (episode id, shard, record index, convert(shard, n, features) or the DataError), with NaN/inf in
        the converted states/actions refused. `convert` returns (states, actions, anything else...)."""
        for key, shard, n, feats in self._parsed(ids):
            if isinstance(feats, Exception):
                yield key, shard, n, feats
                continue
            try:
                out = convert(Path(shard), n, feats)
                if not (np.isfinite(out[0]).all() and np.isfinite(out[1]).all()):
                    raise NonFiniteValueError("NaN/inf in state or action", path=shard, episode=n)
                yield key, shard, n, out
            except Exception as e:  # noqa: BLE001 - handed to the caller's skip/raise policy
                yield key, shard, n, e

    def load_group(self, ids):
        def episode(shard, n, feats):
            ep = DroidRLDS.to_episode(shard, n, feats)
            return ep.states, ep.actions, ep
        for key, shard, n, out in self._converted(ids, episode):
            if isinstance(out, Exception):
                yield key, out
                continue
            ep = out[2]
            task = next((t for t in ep.instructions if t), "")
            yield key, SourceEpisode(f"{shard}#{n}", ep.states, ep.actions,
                                     {f"observation.images.{c}": v for c, v in ep.images.items()}, task)

    def load_numeric(self, ids):
        """Yield (episode id, (states, actions) or DataError) without decoding any image."""
        for key, _, _, out in self._converted(ids, DroidRLDS.numeric_steps):
            yield key, out


def _check_dim(dim, emb, where):
    if dim != emb.dim:
        raise ShapeMismatchError(f"source state has {dim} dims but --embodiment {emb.name} has {emb.dim}",
                                 path=where, key="observation.state")


def open_source(spec: str, emb: Embodiment, tolerance_s: float = 1e-4):
    kind, path = parse_source(spec)
    return (LeRobotSource if kind == "lerobot" else RLDSSource)(path, emb, tolerance_s)
