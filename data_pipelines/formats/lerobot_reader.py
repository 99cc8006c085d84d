"""Read LeRobot v2.0/v2.1/v3.0 datasets without lerobot, torch or pandas.

Accepts the variants of docs/data.md, "Variants the reader accepts": `names` as dict, CHW image shapes,
float fps, list vs fixed_size_list columns, `video_info` vs `info`, missing quantiles, a
tasks.parquet whose task column is `task`, `__index_level_0__` or a pandas index.
"""
from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipelines.errors import (DataError, FrameTimestampError, IncompleteDatasetError, MissingVideoError,
                                   NonFiniteValueError, ShapeMismatchError, TruncatedFileError)
from data_pipelines.formats import video
from data_pipelines.formats.images import decode_image

STAT_PREFIX = "stats/"
FROZEN_TASK = "<ALL FROZEN FRAMES>"


@dataclasses.dataclass
class EpisodeMeta:
    index: int
    length: int
    tasks: list[str]
    from_index: int                           # global `index` of the first frame
    data_path: Path
    videos: dict[str, tuple[Path, float]]     # camera key -> (mp4 path, from_timestamp in that file)


def flatten_names(names) -> list[str] | None:
    """`names` may be a list, a dict of lists ({"motors": [...]}) or null."""
    if names is None:
        return None
    if isinstance(names, dict):
        return [n for v in names.values() for n in (v if isinstance(v, list) else [v])]
    return list(names)


def read_parquet(path, episode=None) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise IncompleteDatasetError("parquet file is missing", path=path, episode=episode)
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise TruncatedFileError(f"unreadable parquet (truncated, or writer never finalized?): {e}",
                                 path=path, episode=episode) from e


def column_to_numpy(table: pa.Table, key: str, width: int | None, *, path=None, episode=None) -> np.ndarray:
    """fixed_size_list / list / scalar column -> [N, width] (or [N] when width is None)."""
    if key not in table.column_names:
        raise ShapeMismatchError(f"column missing; have {table.column_names}", path=path, episode=episode, key=key)
    col = table[key].combine_chunks()
    if width is None:
        return col.to_numpy(zero_copy_only=False)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != width).any():
            bad = int(np.argmax(lengths != width))
            raise ShapeMismatchError(f"row {bad} has {lengths[bad]} values, info.json declares {width}",
                                     path=path, episode=episode, key=key)
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), width)
    if width == 1:
        return col.to_numpy(zero_copy_only=False).reshape(-1, 1)
    raise ShapeMismatchError(f"scalar column but info.json declares shape [{width}]", path=path, episode=episode,
                             key=key)


class LeRobotDataset:
    def __init__(self, root: str | Path, *, tolerance_s: float = 1e-4):
        self.root = Path(root)
        info_path = self.root / "meta/info.json"
        if not info_path.exists():
            raise IncompleteDatasetError("not a LeRobot dataset (meta/info.json missing)", path=info_path)
        self.info = json.loads(info_path.read_text())
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in ("v2.0", "v2.1", "v3.0"):
            raise IncompleteDatasetError(f"unsupported codebase_version {self.version!r}", path=info_path,
                                         key="codebase_version")
        self.fps = float(self.info["fps"])
        self.features = self.info["features"]
        self.camera_keys = [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]
        self.image_keys = {k for k in self.camera_keys if self.features[k]["dtype"] == "image"}  # PNG in parquet
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes()
        self.annotated_tasks = self._load_annotated_tasks()
        self.videos = video.VideoReader(tolerance_s)
        self.tolerance_s = tolerance_s

    # --- metadata -------------------------------------------------------------------------
    def names(self, key: str) -> list[str] | None:
        return flatten_names(self.features[key].get("names"))

    def width(self, key: str) -> int:
        shape = self.features[key].get("shape") or [1]
        return int(np.prod(shape))

    def image_hw(self, key: str) -> tuple[int, int]:
        """(H, W) of a camera; layout decided by names[2] (or names[0]) being channel(s)."""
        f = self.features[key]
        shape, names = list(f["shape"]), f.get("names") or []
        vinfo = f.get("info") or f.get("video_info") or {}
        if "video.height" in vinfo:
            return int(vinfo["video.height"]), int(vinfo["video.width"])
        if len(names) == 3 and str(names[0]).startswith("channel"):
            return shape[1], shape[2]
        return shape[0], shape[1]

    def _load_tasks(self) -> dict[int, str]:
        if self.version == "v3.0":
            path = self.root / "meta/tasks.parquet"
            t = read_parquet(path)
            col = None
            for name in ("task", "__index_level_0__"):
                if name in t.column_names:
                    col = name
            meta = t.schema.metadata or {}
            if col is None and b"pandas" in meta:
                idx = json.loads(meta[b"pandas"]).get("index_columns", [])
                col = next((c for c in idx if isinstance(c, str) and c in t.column_names), None)
            if col is None or "task_index" not in t.column_names:
                raise IncompleteDatasetError(f"no task/task_index column in {t.column_names}", path=path)
            return dict(zip(t["task_index"].to_pylist(), t[col].to_pylist()))
        rows = _read_jsonl(self.root / "meta/tasks.jsonl")
        return {r["task_index"]: r["task"] for r in rows}

    def _load_episodes(self) -> list[EpisodeMeta]:
        if self.version == "v3.0":
            return self._load_episodes_v3()
        rows = sorted(_read_jsonl(self.root / "meta/episodes.jsonl"), key=lambda r: r["episode_index"])
        chunks_size = int(self.info.get("chunks_size", 1000))
        out, start = [], 0
        for r in rows:
            i = r["episode_index"]
            chunk = i // chunks_size
            vids = {k: (self.root / self.info["video_path"].format(episode_chunk=chunk, video_key=k,
                                                                   episode_index=i), 0.0)
                    for k in self.camera_keys if k not in self.image_keys}
            out.append(EpisodeMeta(i, r["length"], r.get("tasks", []), start,
                                   self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=i),
                                   vids))
            start += r["length"]
        return out

    def _load_episodes_v3(self) -> list[EpisodeMeta]:
        files = sorted((self.root / "meta/episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise IncompleteDatasetError("no meta/episodes/chunk-*/file-*.parquet (never finalized?)",
                                         path=self.root / "meta/episodes")
        tables = []
        for f in files:
            t = read_parquet(f)
            tables.append(t.select([c for c in t.column_names if not c.startswith(STAT_PREFIX)]))
        rows = pa.concat_tables(tables, promote_options="default").to_pylist()
        out = []
        for r in sorted(rows, key=lambda r: r["episode_index"]):
            vids = {}
            for k in self.camera_keys:
                if k in self.image_keys:
                    continue
                vids[k] = (self.root / self.info["video_path"].format(
                    video_key=k, chunk_index=r[f"videos/{k}/chunk_index"], file_index=r[f"videos/{k}/file_index"]),
                    float(r[f"videos/{k}/from_timestamp"]))
            data = self.root / self.info["data_path"].format(chunk_index=r["data/chunk_index"],
                                                             file_index=r["data/file_index"])
            out.append(EpisodeMeta(r["episode_index"], r["length"], list(r["tasks"] or []),
                                   r["dataset_from_index"], data, vids))
        return out

    def _load_annotated_tasks(self) -> dict[int, str]:
        path = self.root / "meta/tasks_annotated.parquet"
        if not path.exists():
            return {}
        t = read_parquet(path)
        return dict(zip(t["episode_index"].to_pylist(), t["task"].to_pylist()))

    def stats(self) -> dict:
        """Global stats: meta/stats.json if present, else aggregated from episodes_stats.jsonl."""
        path = self.root / "meta/stats.json"
        if path.exists():
            return json.loads(path.read_text())
        rows = _read_jsonl(self.root / "meta/episodes_stats.jsonl")
        return aggregate_episode_stats([r["stats"] for r in rows])

    # --- frames ---------------------------------------------------------------------------
    def episode(self, ep: int) -> EpisodeMeta:
        if not 0 <= ep < len(self.episodes) or self.episodes[ep].index != ep:
            raise DataError(f"no episode {ep} (dataset has {len(self.episodes)})", path=self.root, episode=ep)
        return self.episodes[ep]

    def episode_table(self, ep: int) -> pa.Table:
        meta = self.episode(ep)
        table = _cached_parquet(str(meta.data_path), ep)
        if self.version == "v3.0":
            table = table.filter(pc.equal(table["episode_index"], ep))
        return table

    def _embedded_images(self, ep: int, key: str, frame_indices) -> np.ndarray:
        meta = self.episode(ep)
        table = self.episode_table(ep)
        if key not in table.column_names:
            raise MissingVideoError("image column missing from the parquet", path=meta.data_path, episode=ep, key=key)
        order = np.argsort(table["frame_index"].to_numpy(), kind="stable")
        col = table[key].combine_chunks()
        return np.stack([decode_image(col[int(order[i])]["bytes"].as_py(), path=meta.data_path, episode=ep, key=key)
                         for i in np.asarray(frame_indices)])

    def episode_columns(self, ep: int, keys=("observation.state", "action"), *, check_finite=True) -> dict:
        """Per-frame columns of one episode, sorted by frame_index; vectors as [T, D] float32."""
        meta = self.episode(ep)
        table = self.episode_table(ep)
        out = {"timestamp": column_to_numpy(table, "timestamp", None, path=meta.data_path, episode=ep)
               .astype(np.float64).reshape(-1),
               "frame_index": column_to_numpy(table, "frame_index", None, path=meta.data_path, episode=ep),
               "task_index": column_to_numpy(table, "task_index", None, path=meta.data_path, episode=ep)}
        order = np.argsort(out["frame_index"], kind="stable")
        if len(order) != meta.length:
            raise ShapeMismatchError(f"{len(order)} rows but metadata length {meta.length}",
                                     path=meta.data_path, episode=ep)
        for k in keys:
            arr = column_to_numpy(table, k, self.width(k), path=meta.data_path, episode=ep).astype(np.float32)
            if check_finite and not np.isfinite(arr).all():
                row = int(np.argwhere(~np.isfinite(arr))[0, 0])
                raise NonFiniteValueError(f"NaN/inf at frame {row}", path=meta.data_path, episode=ep, key=k)
            out[k] = arr
        return {k: v[order] for k, v in out.items()}

    def check_timestamps(self, ep: int) -> None:
        """v2.x load-time rule: consecutive timestamps are 1/fps apart within tolerance_s."""
        meta = self.episode(ep)
        ts = self.episode_columns(ep, keys=())["timestamp"]
        bad = np.abs(np.diff(ts) - 1.0 / self.fps) > self.tolerance_s
        if bad.any():
            k = int(np.argmax(bad))
            raise FrameTimestampError(f"timestamps {ts[k]:.6f}s -> {ts[k + 1]:.6f}s are not 1/fps apart "
                                      f"(tolerance_s={self.tolerance_s})", path=meta.data_path, episode=ep,
                                      key="timestamp")

    def task(self, ep: int, task_index: int | None = None, *, annotated: bool = True) -> str:
        """Annotated task (MolmoAct2) if present and not frozen, else tasks[task_index]."""
        if annotated and ep in self.annotated_tasks and self.annotated_tasks[ep] not in (None, FROZEN_TASK):
            return self.annotated_tasks[ep]
        if task_index is None:
            task_index = int(self.episode_columns(ep, keys=())["task_index"][0])
        return self.tasks[task_index]

    def frames(self, ep: int, key: str, frame_indices) -> np.ndarray:
        """Decode frames of one camera by frame index via timestamp lookup (tolerance rule)."""
        if key in self.image_keys:
            return self._embedded_images(ep, key, frame_indices)
        meta = self.episode(ep)
        path, from_ts = self._video(meta, key)
        ts = self.episode_columns(ep, keys=())["timestamp"][np.asarray(frame_indices)]
        return self.videos.frames_at(path, from_ts + ts, episode=ep, key=key)

    def episode_video(self, ep: int, key: str, timestamps: np.ndarray | None = None) -> np.ndarray:
        """Decode a whole episode of one camera sequentially; every frame must be present and on time."""
        meta = self.episode(ep)
        if key in self.image_keys:
            return self._embedded_images(ep, key, np.arange(meta.length))
        path, from_ts = self._video(meta, key)
        if timestamps is None:
            timestamps = self.episode_columns(ep, keys=())["timestamp"]
        frame_s = 1.0 / self.fps
        times, frames = video.decode_span(path, from_ts, from_ts + meta.length * frame_s - frame_s / 2,
                                          episode=ep, key=key)
        if len(times) < meta.length:
            raise FrameTimestampError(f"decoded {len(times)} of {meta.length} frames (truncated or damaged mp4)",
                                      path=path, episode=ep, key=key)
        dist = np.abs(times[: meta.length] - (from_ts + timestamps))
        if (dist > self.tolerance_s).any():
            i = int(np.argmax(dist))
            raise FrameTimestampError(f"frame {i} is {dist[i]:.6f}s off (tolerance_s={self.tolerance_s})",
                                      path=path, episode=ep, key=key)
        return frames[: meta.length]

    def _video(self, meta: EpisodeMeta, key: str):
        if key not in meta.videos:
            raise MissingVideoError(f"no camera {key!r}; cameras are {self.camera_keys}", path=self.root,
                                    episode=meta.index, key=key)
        path, from_ts = meta.videos[key]
        if not path.exists():
            raise MissingVideoError("video file listed in metadata does not exist", path=path,
                                    episode=meta.index, key=key)
        return path, from_ts


@lru_cache(maxsize=4)
def _cached_parquet(path: str, episode) -> pa.Table:
    return read_parquet(path, episode)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise IncompleteDatasetError("metadata file missing", path=path)
    out = []
    for n, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise IncompleteDatasetError(f"bad JSON on line {n + 1}: {e}", path=path) from e
    return out


def aggregate_episode_stats(per_episode: list[dict]) -> dict:
    """Count-weighted mean, pooled std, elementwise min/max; quantiles by the envelope rule."""
    out = {}
    for feat in per_episode[0]:
        ss = [s[feat] for s in per_episode if feat in s]
        counts = np.array([np.asarray(s["count"]).reshape(-1)[0] for s in ss], np.float64)
        w = counts / counts.sum()
        shape = lambda k: np.array([np.asarray(s[k], np.float64) for s in ss])
        mean = np.tensordot(w, shape("mean"), 1)
        var = np.tensordot(w, shape("std") ** 2 + (shape("mean") - mean) ** 2, 1)
        agg = {"min": shape("min").min(0), "max": shape("max").max(0), "mean": mean, "std": np.sqrt(var),
               "count": np.array([counts.sum()])}
        for q in [k for k in ss[0] if k.startswith("q")]:
            agg[q] = shape(q).min(0) if int(q[1:]) <= 50 else shape(q).max(0)
        out[feat] = {k: v.tolist() for k, v in agg.items()}
    return out
