"""Convert a LeRobot or RLDS source into ArrayRecord shards of training frames.

One record per frame (random access + global shuffle in Grain), holding the resized JPEG (4:4:4) or PNG
of every camera, the state, and the action chunk t..t+H-1 (clamped at the episode end, with
`action_is_pad`). Frames are decoded once here so training never touches video.

Output: shard-XXXXX-of-YYYYY.array_record, a shard-XXXXX.json sidecar (episodes, skips), a
shard-XXXXX.npz with raw states/actions (for fast stats), and index.json. A shard is written
under a temporary name and renamed; its sidecar is written last, so a re-run skips exactly
the finished shards.
With `depth_codes` (a MolmoThink companion dataset, formats/depth_codes.py) each record also holds the frame's
`depth_codes` (int16 [100]) and `depth_updated_mask` (bool [100]), and index.json says `depth_codes: true`.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from data_pipelines.embodiments import get_embodiment
from data_pipelines.errors import DataError
from data_pipelines.formats import images
from data_pipelines.formats.depth_codes import DepthCodes
from data_pipelines.record_codec import encode_record
from data_pipelines.sources import open_source
from molmoact2_jax.progress import progress_bar

INDEX_FORMAT = "molmoact2_frames.v1"


@dataclasses.dataclass
class ConvertOptions:
    source: str
    embodiment: str
    out: str
    horizon: int | None = None          # default: the embodiment's action_horizon
    image_size: int | None = 378        # squash to SxS with the model's resize (spec 5.2); None: keep aspect
    max_image_side: int = 384           # with image_size=None: downscale so the longer side <= this
    # "jpeg" (quality 95, 4:4:4 chroma) or "png" (lossless: the frames the source holds, bit for bit)
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    episodes_per_shard: int = 50
    workers: int = 1
    on_error: str = "raise"             # "raise" | "skip" (skips are counted in index.json)
    tolerance_s: float = 1e-4
    progress: bool = True
    delta_action_dims: tuple[int, ...] | None = None   # None: the embodiment's (released tags: none)
    depth_codes: str | None = None      # MolmoThink: a depth-code companion dataset (matched by episode_index)

    def __post_init__(self):
        if self.image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', got {self.image_format!r}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.delta_action_dims is not None:
            dims = tuple(int(d) for d in self.delta_action_dims)
            dim = get_embodiment(self.embodiment).dim
            if any(not 0 <= d < dim for d in dims) or len(set(dims)) != len(dims):
                raise ValueError(f"delta_action_dims {list(dims)}: expected distinct action dims in [0, {dim}) of "
                                 f"embodiment {self.embodiment}")
            self.delta_action_dims = dims


def shard_name(k: int, n: int) -> str:
    return f"shard-{k:05d}-of-{n:05d}.array_record"


def target_hw(h: int, w: int, max_side: int) -> tuple[int, int]:
    s = min(1.0, max_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def frame_records(ep, emb, horizon, tag, ep_id, opts, depth=None):
    T = ep.length
    jpegs = {}
    for key, frames in ep.images.items():
        if opts.image_size:  # resized once here so training never resizes (unless it augments)
            small = (images.resize_square(f, opts.image_size) for f in frames)
        else:
            hw = target_hw(*frames.shape[1:3], opts.max_image_side)
            small = (images.resize(f, hw) for f in frames)
        jpegs[key] = [images.encode_image(f, opts.image_format, opts.jpeg_quality, full_chroma=True) for f in small]
    for t in range(T):
        idx = np.arange(t, t + horizon)
        rec = {"state": ep.states[t], "actions": ep.actions[np.minimum(idx, T - 1)],
               "action_is_pad": idx >= T, "task": ep.task, "episode_id": str(ep_id), "frame_index": t,
               "episode_length": T, "tag": tag}
        for key, js in jpegs.items():
            rec[f"image/{key}"] = js[t]
        if depth is not None:
            rec["depth_codes"], rec["depth_updated_mask"] = depth[0][t], depth[1][t]
        yield encode_record(rec)


class ShardEpisode(NamedTuple):
    """One episode as a shard holds it: its encoded records (any iterable, consumed once) and raw arrays."""
    episode_id: str
    task: str
    states: np.ndarray
    actions: np.ndarray
    records: Iterable[bytes]


def shard_complete(out: Path, k: int, n: int) -> bool:
    """The resume rule: a shard is done once its sidecar (written last) and its renamed shard file exist."""
    return (out / f"shard-{k:05d}.json").exists() and (out / shard_name(k, n)).exists()


def resumed_summary(out: Path, k: int) -> dict:
    return json.loads((out / f"shard-{k:05d}.json").read_text()) | {"resumed": True}


def skip_entry(ep_id, err: Exception) -> dict:
    return {"episode": str(ep_id), "error": str(err), "type": type(err).__name__}


def check_episode(src, ep_id, ep, depth_codes, on_error: str):
    """(depth, skip) for one loaded episode or the exception loading it: skip is None to write the episode (with
    its depth codes, or None without a companion), else the index entry that names it. Raises what on_error
    'raise' stops on; a missing camera or a non-DataError stops either way."""
    if isinstance(ep, Exception):
        if on_error == "raise" or not isinstance(ep, DataError):
            raise ep
        return None, skip_entry(ep_id, ep)
    for key in src.camera_keys:
        if key not in ep.images:
            raise DataError("camera missing", path=ep.source_key, key=key)
    if depth_codes is None:
        return None, None
    try:
        return depth_codes.episode(ep_id, ep.length), None
    except DataError as e:
        if on_error == "raise":
            raise
        return None, skip_entry(ep_id, e)


def write_shard(out: Path, k: int, n: int, dim: int, parts) -> dict:
    """Write shard k of n from `parts` (in shard order: ShardEpisode, or a skip entry dict): the .array_record
    under a temporary name then renamed, the .npz, and the .json sidecar last. Returns the sidecar's summary."""
    tmp = out / (shard_name(k, n) + ".tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    episodes, skipped, states, actions, n_records = [], [], [], [], 0
    try:
        for part in parts:
            if isinstance(part, dict):
                skipped.append(part)
                continue
            for rec in part.records:
                writer.write(rec)
            length = len(part.states)
            episodes.append({"episode_id": part.episode_id, "first_record": n_records, "num_frames": length,
                             "task": part.task})
            n_records += length
            states.append(part.states)
            actions.append(part.actions)
    finally:
        writer.close()
    os.replace(tmp, out / shard_name(k, n))
    np.savez(out / f"shard-{k:05d}.tmp.npz",
             state=np.concatenate(states) if states else np.zeros((0, dim), np.float32),
             action=np.concatenate(actions) if actions else np.zeros((0, dim), np.float32))
    os.replace(out / f"shard-{k:05d}.tmp.npz", out / f"shard-{k:05d}.npz")
    summary = {"shard": shard_name(k, n), "num_records": n_records, "episodes": episodes, "skipped": skipped}
    (out / f"shard-{k:05d}.json.tmp").write_text(json.dumps(summary))
    os.replace(out / f"shard-{k:05d}.json.tmp", out / f"shard-{k:05d}.json")
    return summary


def convert_shard(opts: ConvertOptions, k: int, n: int, ids: list) -> dict:
    out = Path(opts.out)
    if shard_complete(out, k, n):
        return resumed_summary(out, k)
    emb = get_embodiment(opts.embodiment)
    horizon = opts.horizon or emb.action_horizon
    src = open_source(opts.source, emb, opts.tolerance_s)
    depth_codes = DepthCodes(opts.depth_codes) if opts.depth_codes else None

    def parts():
        for ep_id, ep in src.load_group(ids):
            depth, skip = check_episode(src, ep_id, ep, depth_codes, opts.on_error)
            if skip is not None:
                yield skip
            else:
                yield ShardEpisode(str(ep_id), ep.task, ep.states, ep.actions,
                                   frame_records(ep, emb, horizon, emb.tag, ep_id, opts, depth))
    return write_shard(out, k, n, emb.dim, parts())


def open_conversion(opts: ConvertOptions):
    """(embodiment, OUT, opened source, episode groups per shard) of a conversion, OUT created; what both
    converters (this one and beam_convert.py) start from, so they assign episodes to shards alike."""
    emb = get_embodiment(opts.embodiment)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    src = open_source(opts.source, emb, opts.tolerance_s)
    if opts.depth_codes:
        DepthCodes(opts.depth_codes)   # a missing or unreadable companion fails before any shard is written
    return emb, out, src, src.groups(opts.episodes_per_shard)


def convert(opts: ConvertOptions) -> dict:
    emb, out, src, groups = open_conversion(opts)
    n = len(groups)
    results = [None] * n
    bar = progress_bar(total=n, unit="shard", desc=f"convert {opts.source}", disable=not opts.progress)
    if opts.workers <= 1:
        for k, ids in enumerate(groups):
            results[k] = convert_shard(opts, k, n, ids)
            bar.update()
    else:
        # spawn, not fork: the caller may already run JAX (threads), and a forked child can deadlock
        with cf.ProcessPoolExecutor(max_workers=opts.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(convert_shard, opts, k, n, ids): k for k, ids in enumerate(groups)}
            for f in cf.as_completed(futures):
                results[futures[f]] = f.result()
                bar.update()
    bar.close()
    index = build_index(opts, src.camera_keys, src.state_names, src.fps, results)
    (out / "index.json").write_text(json.dumps(index, indent=2))
    return index


def build_index(opts: ConvertOptions, camera_keys, state_names, fps, results: list) -> dict:
    """index.json of a conversion from the source's description and the shard summaries in shard order."""
    emb = get_embodiment(opts.embodiment)
    first_key = camera_keys[0] if camera_keys else None
    tag_meta = tag_metadata(emb, opts.horizon, opts.delta_action_dims, camera_keys)
    return {
        "format": INDEX_FORMAT, "source": opts.source, "embodiment": emb.name, "tag": emb.tag,
        "tag_metadata": tag_meta, "camera_keys": camera_keys, "state_names": state_names,
        "fps": fps, "horizon": opts.horizon or emb.action_horizon, "image_size": opts.image_size, "image_format": opts.image_format,
        "shards": [{"file": r["shard"], "num_records": r["num_records"], "num_episodes": len(r["episodes"])}
                   for r in results],
        "total_frames": sum(r["num_records"] for r in results),
        "total_episodes": sum(len(r["episodes"]) for r in results),
        "skipped": [s for r in results for s in r["skipped"]],
        "resumed_shards": sum(bool(r.get("resumed")) for r in results),
        "first_camera": first_key,
        "depth_codes": bool(opts.depth_codes),
        "depth_codes_source": str(Path(opts.depth_codes).resolve()) if opts.depth_codes else None,
    }


def tag_metadata(emb, horizon: int | None = None, delta_action_dims=None, camera_keys=None) -> dict:
    """The embodiment's tag metadata as a conversion records it: the chunk length the records hold, the action
    dims stored as deltas (the records keep absolute actions; training applies the delta), and, for a fixed camera
    order, the source's cameras in the order the records hold them (training feeds them in that order, so a policy
    must be given them in it too; the embodiment's declared names are only the usual ones)."""
    meta = emb.tag_metadata()
    if camera_keys and meta["camera_keys"]:
        meta["camera_keys"] = list(camera_keys)
    if horizon:  # the records hold chunks of this length: norm_stats.json must say so
        meta.update(action_horizon=int(horizon), n_action_steps=int(horizon))
    if delta_action_dims is not None:
        meta.pop("delta_action_dims", None)
        if delta_action_dims:
            meta["delta_action_dims"] = [int(d) for d in delta_action_dims]
    return meta


def load_index(shard_dir) -> dict:
    path = Path(shard_dir) / "index.json"
    if not path.exists():
        raise DataError("not a converted shard directory (index.json missing)", path=path)
    index = json.loads(path.read_text())
    if index.get("format") != INDEX_FORMAT:
        raise DataError(f"unknown index format {index.get('format')!r}", path=path, key="format")
    return index


def sidecar_path(shard_dir, shard_file: str, suffix: str = ".json") -> Path:
    """shard-00003-of-00010.array_record -> shard-00003.json (or .npz)."""
    return Path(shard_dir) / (shard_file.split("-of-")[0] + suffix)


def load_episodes(shard_dir) -> list[dict]:
    """Per-episode index across shards: episode_id, shard, first_record, num_frames, task."""
    out = []
    for s in load_index(shard_dir)["shards"]:
        meta = json.loads(sidecar_path(shard_dir, s["file"]).read_text())
        out += [dict(e, shard=s["file"]) for e in meta["episodes"]]
    return out
