"""Uniform episode access over LeRobot and RLDS sources: `lerobot:PATH` (or a cached hub repo id) / `rlds:PATH`."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np

from data_pipelines.embodiments import (Embodiment, check_dataset_features, dumps_embodiment, embodiment_from_info,
                                        load_embodiment_dict)
from data_pipelines.errors import DataError, NonFiniteValueError, ShapeMismatchError
from data_pipelines.formats import tf_example, tfrecord
from data_pipelines.formats.droid_rlds import LEROBOT_CAMERAS, DroidRLDS
from data_pipelines.formats.lerobot_reader import LeRobotDataset, _read_jsonl, aggregate_episode_stats


@dataclasses.dataclass
class SourceEpisode:
    source_key: str                  # where it came from (for error messages / index)
    states: np.ndarray               # [T, D] float32
    actions: np.ndarray              # [T, A] float32
    images: dict[str, np.ndarray]    # camera key -> [T, H, W, 3] uint8 (every frame decoded)
    task: str

    @property
    def length(self) -> int:
        return len(self.states)


def parse_source(spec: str) -> tuple[str, Path]:
    """`lerobot:PATH` / `rlds:PATH` -> (kind, folder). A `lerobot:OWNER/NAME` that is not a local folder is a Hugging
    Face dataset repo id, found in the local cache (resolve_lerobot)."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in ("lerobot", "rlds"):
        raise ValueError(f"--source must look like lerobot:PATH or rlds:PATH, got {spec!r}")
    return kind, (resolve_lerobot(path) if kind == "lerobot" else Path(path))


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def hf_cache_dirs() -> tuple[Path, Path]:
    """(LeRobot's own dataset cache, the Hugging Face hub cache), from the environment as LeRobot and huggingface_hub
    read it: $HF_LEROBOT_HOME (default $HF_HOME/lerobot) and $HF_HUB_CACHE (default $HF_HOME/hub), where $HF_HOME
    defaults to $XDG_CACHE_HOME/huggingface, i.e. ~/.cache/huggingface."""
    env = os.environ
    home = Path(env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    lerobot = Path(env.get("HF_LEROBOT_HOME") or home / "lerobot")
    hub = Path(env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or home / "hub")
    return lerobot.expanduser(), hub.expanduser()


def resolve_lerobot(path: str) -> Path:
    """A local folder as given; else a repo id `owner/name` already in the local cache, never downloaded: LeRobot's
    layout <HF_LEROBOT_HOME>/owner/name, then the hub snapshot layout <hub>/datasets--owner--name/snapshots/<rev>
    (the newest snapshot holding meta/info.json)."""
    local = Path(path).expanduser()
    if local.exists() or not _REPO_ID.match(path):
        return local
    lerobot_home, hub = hf_cache_dirs()
    flat = lerobot_home / path
    if (flat / "meta/info.json").is_file():
        return flat
    snaps = hub / f"datasets--{path.replace('/', '--')}" / "snapshots"
    found = [d for d in (snaps.iterdir() if snaps.is_dir() else ()) if (d / "meta/info.json").is_file()]
    if found:
        return max(found, key=lambda d: (d.stat().st_mtime, d.name))
    raise DataError(f"lerobot:{path} is neither a local folder nor a dataset in the local Hugging Face cache (looked "
                    f"for {flat}/meta/info.json and {snaps}/<revision>/meta/info.json); nothing is downloaded here: "
                    f"fetch it first with `huggingface-cli download --repo-type dataset {path}` (or point HF_HOME / "
                    f"HF_LEROBOT_HOME at the cache that holds it)")


class LeRobotSource:
    def __init__(self, path, emb: Embodiment, tolerance_s: float = 1e-4):
        self.ds = LeRobotDataset(path, tolerance_s=tolerance_s)
        self.path = Path(path)
        self.state_key, self.action_key = emb.state_key, emb.action_key
        # The dataset must be the embodiment's robot (keys, dims, per-dim names, cameras): refused here, before any
        # shard is written, rather than converted under another robot's tag.
        self.state_names, self.action_names, self.camera_keys = check_dataset_features(
            emb, self.ds.features, self.ds.root / "meta/info.json")
        self.fps = self.ds.fps

    def groups(self, episodes_per_shard: int) -> list[list]:
        ids = [e.index for e in self.ds.episodes]
        return [ids[i:i + episodes_per_shard] for i in range(0, len(ids), episodes_per_shard)]

    def load_group(self, ids):
        """Yield (episode id, SourceEpisode or DataError) so a bad episode can be skipped."""
        for ep in ids:
            try:
                cols = self.ds.episode_columns(ep, keys=(self.state_key, self.action_key))
                imgs = {k: self.ds.episode_video(ep, k, cols["timestamp"]) for k in self.camera_keys}
                task = self.ds.task(ep, int(cols["task_index"][0]))
                yield ep, SourceEpisode(f"{self.path}#episode={ep}", cols[self.state_key], cols[self.action_key],
                                        imgs, task)
            except Exception as e:  # noqa: BLE001 - handed to the caller's skip/raise policy
                yield ep, e

    def load_numeric(self, ids):
        """Yield (episode id, (states, actions) or DataError) from the parquet files alone: no video is opened."""
        for ep in ids:
            try:
                cols = self.ds.episode_columns(ep, keys=(self.state_key, self.action_key))
                yield ep, (cols[self.state_key], cols[self.action_key])
            except Exception as e:  # noqa: BLE001 - handed to the caller's skip/raise policy
                yield ep, e


class RLDSSource:
    """One group per input tfrecord shard; episode ids are '<shard>#<record>'."""

    def __init__(self, path, emb: Embodiment, tolerance_s: float = 1e-4):
        self.reader = DroidRLDS(path)
        self.path = self.reader.root
        self.camera_keys = [f"observation.images.{c}" for c in LEROBOT_CAMERAS]
        self.state_names = list(emb.state_names)
        self.action_names = list(emb.action_names)
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
    """DROID RLDS holds 8-D joint states and actions; only an embodiment of that shape can read it."""
    if dim != emb.state_dim or dim != emb.action_dim:
        raise ShapeMismatchError(f"source state and action have {dim} dims but --embodiment {emb.label} has "
                                 f"{emb.state_dim} / {emb.action_dim}", path=where, key="observation.state")


def open_source(spec: str, emb: Embodiment, tolerance_s: float = 1e-4):
    kind, path = parse_source(spec)
    return (LeRobotSource if kind == "lerobot" else RLDSSource)(path, emb, tolerance_s)


def write_embodiment_from(spec: str, out, state_key: str = "observation.state", action_key: str = "action"):
    """`molmoact2-data embodiment --from lerobot:DIR --out robot.json`: a starting embodiment file from the dataset's
    meta/info.json (names, dims, cameras, fps, robot_type) and its stats (fixture ranges, the gripper rule). Returns
    (path, Embodiment, notes for the user). Never overwrites: an existing `out` is refused."""
    kind, sep, rest = spec.partition(":")
    if kind != "lerobot" or not sep or not rest:
        raise ValueError(f"--from must look like lerobot:PATH (a LeRobot dataset folder, or a hub repo id in the local "
                         f"cache), got {spec!r}")
    out = Path(out)
    if out.exists():
        raise ValueError(f"--out {out} already exists; an embodiment file is not overwritten: give another --out or "
                         f"remove that file")
    if out.suffix != ".json":
        raise ValueError(f"--out {out}: an embodiment file is JSON; name it <robot>.json")
    root = resolve_lerobot(rest)
    info_path = root / "meta/info.json"
    if not info_path.is_file():
        raise DataError("not a LeRobot dataset (meta/info.json missing)", path=info_path)
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"unreadable info.json: {e}", path=info_path) from None
    stats = None
    try:   # optional: the fixture ranges and the gripper rule come from them when present
        if (root / "meta/stats.json").is_file():
            stats = json.loads((root / "meta/stats.json").read_text())
        elif (root / "meta/episodes_stats.jsonl").is_file():
            stats = aggregate_episode_stats([r["stats"] for r in _read_jsonl(root / "meta/episodes_stats.jsonl")])
    except (ValueError, KeyError, TypeError, DataError):
        stats = None
    folder = rest.rstrip("/").split("/")[-1] if not Path(rest).expanduser().exists() else root.resolve().name
    d, notes = embodiment_from_info(info, folder, stats, state_key=state_key, action_key=action_key, where=info_path)
    emb = load_embodiment_dict(d, out)   # what convert will read back: checked before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "x") as f:
        f.write(dumps_embodiment(d))
    return out, emb, notes
