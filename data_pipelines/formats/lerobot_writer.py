"""Write LeRobot v2.1 / v3.0 datasets exactly as LeRobot 0.3.3 / 0.4.4 lay them out.

Layout, column types and metadata follow docs/data.md, "LeRobot datasets". `dirty` switches on
variants seen in the wild so readers are tested against them:
  names_dict        feature `names` as {"motors": [...]} ({"axes": [...]} for Franka, as the DROID port writes)
  chw_shape         video shape [3,H,W] with names [channels,height,width]
  float_fps         info.json fps written as a float
  list_columns      state/action as variable list<float> instead of fixed_size_list
  video_info        video features carry "video_info" instead of "info"
  no_quantiles      stats without q01..q99
  named_task_column tasks.parquet with a `task` column (0.4.4 writes an unnamed index)
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipelines.embodiments import Embodiment
from data_pipelines.episode import Episode
from data_pipelines.formats import lerobot_stats, video
from data_pipelines.formats.images import encode_image

DIRTY_VARIANTS = ("names_dict", "chw_shape", "float_fps", "list_columns", "video_info", "no_quantiles",
                  "named_task_column")
V21_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V30_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V30_EPISODES = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"


@dataclasses.dataclass
class WriteOptions:
    version: str = "v3.0"                 # "v2.1" | "v3.0"
    codec: str = "av1"                    # "av1" | "h264"
    dirty: tuple[str, ...] = ()
    chunks_size: int = 1000               # v2.1: episodes per chunk dir; v3.0: files per chunk dir
    data_files_size_in_mb: float = 100.0
    video_files_size_in_mb: float = 200.0
    # Fixture override: max episodes per video file per camera index (cameras then roll over at
    # different episodes, as they do in real data where their byte sizes differ).
    episodes_per_video_file: tuple[int, ...] | None = None
    episodes_per_data_file: int | None = None
    tasks_annotated: bool = False         # MolmoAct2 meta/tasks_annotated.parquet + task_to_episode.parquet
    frozen_episodes: tuple[int, ...] = () # annotated as "<ALL FROZEN FRAMES>"
    finalize: bool = True                 # False: last data parquet left without footer (v3)
    image_storage: str = "video"          # "image": PNG bytes inside the parquet (dtype image), no mp4

    def __post_init__(self):
        if self.version not in ("v2.1", "v3.0"):
            raise ValueError(f"WriteOptions.version must be v2.1 or v3.0, got {self.version!r}")
        if self.image_storage not in ("video", "image"):
            raise ValueError(f"WriteOptions.image_storage must be video or image, got {self.image_storage!r}")
        bad = set(self.dirty) - set(DIRTY_VARIANTS)
        if bad:
            raise ValueError(f"WriteOptions.dirty has unknown variants {sorted(bad)}; known: {DIRTY_VARIANTS}")


def write_lerobot(root: str | Path, emb: Embodiment, episodes: list[Episode], opts: WriteOptions) -> Path:
    root = Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    tasks = list(dict.fromkeys(e.task for e in episodes))
    task_index = {t: i for i, t in enumerate(tasks)}
    fps = emb.fps
    quant = "no_quantiles" not in opts.dirty
    tables, ep_stats, from_index = [], [], 0
    for i, ep in enumerate(episodes):
        tables.append(_episode_table(emb, ep, i, from_index, task_index[ep.task], fps, opts))
        ep_stats.append(_episode_stats(emb, ep, tables[-1], quant))
        from_index += ep.length
    features = _features(emb, episodes, opts)
    info = {
        "codebase_version": opts.version, "robot_type": emb.robot_type,
        "total_episodes": len(episodes), "total_frames": from_index, "total_tasks": len(tasks),
        "chunks_size": opts.chunks_size,
        "fps": float(fps) if "float_fps" in opts.dirty else fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "features": features,
    }
    if opts.version == "v2.1":
        _write_v21(root, emb, episodes, tables, ep_stats, tasks, info, opts)
    else:
        _write_v30(root, emb, episodes, tables, ep_stats, tasks, info, opts)
    if opts.tasks_annotated:
        ann = ["<ALL FROZEN FRAMES>" if i in opts.frozen_episodes else e.annotated_task
               for i, e in enumerate(episodes)]
        pq.write_table(pa.table({"episode_index": pa.array(range(len(episodes)), pa.int64()), "task": ann}),
                       root / "meta/tasks_annotated.parquet")
        pq.write_table(pa.table({"task_index": pa.array([task_index[e.task] for e in episodes], pa.int64()),
                                 "episode_index": pa.array(range(len(episodes)), pa.int64())}),
                       root / "meta/task_to_episode.parquet")
    return root


def _names(names, opts, robot_type=""):
    if "names_dict" not in opts.dirty:
        return list(names)
    return {"axes" if robot_type == "Franka" else "motors": list(names)}


def _features(emb, episodes, opts) -> dict:
    feats = {
        emb.state_key: {"dtype": "float32", "shape": [emb.state_dim],
                        "names": _names(emb.state_names, opts, emb.robot_type)},
        emb.action_key: {"dtype": "float32", "shape": [emb.action_dim],
                         "names": _names(emb.action_names, opts, emb.robot_type)},
    }
    for cam, key in zip(emb.cameras, emb.camera_keys):
        H, W = episodes[0].images[cam].shape[1:3]
        if opts.image_storage == "image":
            feats[key] = {"dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channel"]}
            continue
        chw = "chw_shape" in opts.dirty
        vinfo = {"video.height": H, "video.width": W, "video.codec": opts.codec, "video.pix_fmt": "yuv420p",
                 "video.is_depth_map": False, "video.fps": emb.fps, "video.channels": 3, "has_audio": False}
        feats[key] = {"dtype": "video", "shape": [3, H, W] if chw else [H, W, 3],
                      "names": ["channels", "height", "width"] if chw else ["height", "width", "channels"],
                      ("video_info" if "video_info" in opts.dirty else "info"): vinfo}
    feats["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        feats[k] = {"dtype": "int64", "shape": [1], "names": None}
    if opts.version == "v3.0":
        for f in feats.values():
            if f["dtype"] != "video":
                f["fps"] = emb.fps
    return feats


def _episode_table(emb, ep, ep_index, from_index, task_index, fps, opts) -> pa.Table:
    T = len(ep.states)
    if "list_columns" in opts.dirty:
        vec = lambda x: pa.array(list(x.astype(np.float32)), pa.list_(pa.float32()))
    else:
        vec = lambda x: pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])
    cols = {}
    if opts.image_storage == "image":  # HF `Image` feature: struct{bytes, path}, PNG bytes
        for cam, key in zip(emb.cameras, emb.camera_keys):
            cols[key] = pa.array([{"bytes": encode_image(f, "png"), "path": None} for f in ep.images[cam]],
                                 pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    return pa.table({
        **cols,
        emb.state_key: vec(ep.states), emb.action_key: vec(ep.actions),
        "timestamp": pa.array(np.arange(T, dtype=np.float32) / np.float32(fps), pa.float32()),
        "frame_index": pa.array(np.arange(T), pa.int64()),
        "episode_index": pa.array(np.full(T, ep_index), pa.int64()),
        "index": pa.array(from_index + np.arange(T), pa.int64()),
        "task_index": pa.array(np.full(T, task_index), pa.int64()),
    })


def _episode_stats(emb, ep, table, quant) -> dict:
    stats = {emb.state_key: lerobot_stats.vector_stats(ep.states, quant),
             emb.action_key: lerobot_stats.vector_stats(ep.actions, quant)}
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        stats[k] = lerobot_stats.vector_stats(table[k].to_numpy(), quant)
    for cam, key in zip(emb.cameras, emb.camera_keys):
        stats[key] = lerobot_stats.image_stats(ep.images[cam], quant)
    return stats


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _write_v21(root, emb, episodes, tables, ep_stats, tasks, info, opts):
    n_chunks = (len(episodes) + opts.chunks_size - 1) // opts.chunks_size
    videos = opts.image_storage == "video"
    info.update(total_videos=len(episodes) * len(emb.cameras) * videos, total_chunks=n_chunks,
                data_path=V21_DATA, video_path=V21_VIDEO if videos else None)
    for i, (ep, table) in enumerate(zip(episodes, tables)):
        chunk = i // opts.chunks_size
        path = root / V21_DATA.format(episode_chunk=chunk, episode_index=i)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for cam, key in zip(emb.cameras, emb.camera_keys) if videos else ():
            video.write_video(ep.images[cam], root / V21_VIDEO.format(episode_chunk=chunk, video_key=key,
                                                                      episode_index=i), emb.fps, opts.codec)
    _write_jsonl(root / "meta/episodes.jsonl",
                 [{"episode_index": i, "tasks": [e.task], "length": e.length} for i, e in enumerate(episodes)])
    _write_jsonl(root / "meta/tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(tasks)])
    _write_jsonl(root / "meta/episodes_stats.jsonl",
                 [{"episode_index": i, "stats": s} for i, s in enumerate(ep_stats)])
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))


class _Roller:
    """LeRobot v3 file rollover: next file when the size limit (or fixture episode cap) is hit."""

    def __init__(self, limit_bytes, chunks_size, max_episodes=None):
        self.limit, self.chunks_size, self.max_episodes = limit_bytes, chunks_size, max_episodes
        self.chunk = self.file = 0
        self.size = self.count = 0

    def place(self, nbytes) -> tuple[int, int, bool]:
        """Returns (chunk_index, file_index, starts_new_file) for an item of nbytes."""
        full = self.count > 0 and (self.size + nbytes > self.limit
                                   or (self.max_episodes is not None and self.count >= self.max_episodes))
        if full:
            self.file += 1
            if self.file >= self.chunks_size:
                self.chunk, self.file = self.chunk + 1, 0
            self.size = self.count = 0
        self.size += nbytes
        self.count += 1
        return self.chunk, self.file, self.count == 1


def _write_v30(root, emb, episodes, tables, ep_stats, tasks, info, opts):
    videos = opts.image_storage == "video"
    info.update(data_files_size_in_mb=opts.data_files_size_in_mb,
                video_files_size_in_mb=opts.video_files_size_in_mb, data_path=V30_DATA,
                video_path=V30_VIDEO if videos else None)
    rows = {"episode_index": [], "tasks": [], "length": [], "data/chunk_index": [], "data/file_index": [],
            "dataset_from_index": [], "dataset_to_index": []}
    # Data parquet: several episodes per file, one row group per episode.
    data_roll = _Roller(opts.data_files_size_in_mb * 2**20, opts.chunks_size, opts.episodes_per_data_file)
    writer, writer_path, from_index = None, None, 0
    for i, (ep, table) in enumerate(zip(episodes, tables)):
        chunk, file, new = data_roll.place(table.nbytes)
        if new:
            if writer is not None:
                writer.close()
            writer_path = root / V30_DATA.format(chunk_index=chunk, file_index=file)
            writer_path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(writer_path, table.schema)
        writer.write_table(table, row_group_size=len(table))
        for k, v in (("episode_index", i), ("tasks", [ep.task]), ("length", ep.length),
                     ("data/chunk_index", chunk), ("data/file_index", file),
                     ("dataset_from_index", from_index), ("dataset_to_index", from_index + ep.length)):
            rows[k].append(v)
        from_index += ep.length
    writer.close()
    if not opts.finalize:  # a writer that never called finalize(): no parquet footer
        data = writer_path.read_bytes()
        writer_path.write_bytes(data[: len(data) // 2])
    # Videos: per camera, clips concatenated into shared files; each camera rolls over on its own.
    for cam_i, (cam, key) in enumerate(zip(emb.cameras, emb.camera_keys) if videos else ()):
        cap = opts.episodes_per_video_file[cam_i % len(opts.episodes_per_video_file)] \
            if opts.episodes_per_video_file else None
        roll = _Roller(opts.video_files_size_in_mb * 2**20, opts.chunks_size, cap)
        groups: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
        for i, ep in enumerate(episodes):
            clip = video.encode_clip(ep.images[cam], emb.fps, opts.codec)
            groups.setdefault(roll.place(len(clip))[:2], []).append((i, clip))
        cols = {f"videos/{key}/{c}": [None] * len(episodes)
                for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")}
        for (chunk, file), items in groups.items():
            spans = video.concat_clips([c for _, c in items],
                                       root / V30_VIDEO.format(video_key=key, chunk_index=chunk, file_index=file))
            for (i, _), (t0, t1) in zip(items, spans):
                cols[f"videos/{key}/chunk_index"][i] = chunk
                cols[f"videos/{key}/file_index"][i] = file
                cols[f"videos/{key}/from_timestamp"][i] = t0
                cols[f"videos/{key}/to_timestamp"][i] = t1
        rows.update(cols)
    rows["meta/episodes/chunk_index"] = [0] * len(episodes)
    rows["meta/episodes/file_index"] = [0] * len(episodes)
    for feat in (emb.state_key, emb.action_key):
        for stat in ep_stats[0][feat]:
            rows[f"stats/{feat}/{stat}"] = [s[feat][stat] for s in ep_stats]
    ep_path = root / V30_EPISODES.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), ep_path)
    # Tasks: 0.4.4 writes the task strings as an unnamed pandas index (__index_level_0__).
    task_col = "task" if "named_task_column" in opts.dirty else "__index_level_0__"
    tasks_table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), task_col: tasks})
    if task_col == "__index_level_0__":
        pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None}], "creator": {"library": "pyarrow", "version": pa.__version__}}
        tasks_table = tasks_table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    pq.write_table(tasks_table, root / "meta/tasks.parquet")
    quant = "no_quantiles" not in opts.dirty
    stats = {emb.state_key: lerobot_stats.vector_stats(np.concatenate([e.states for e in episodes]), quant),
             emb.action_key: lerobot_stats.vector_stats(np.concatenate([e.actions for e in episodes]), quant)}
    for cam, key in zip(emb.cameras, emb.camera_keys):
        stats[key] = lerobot_stats.image_stats(np.concatenate([e.images[cam] for e in episodes]), quant)
    (root / "meta/stats.json").write_text(json.dumps(stats, indent=4))
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
