"""Convert a LeRobot or RLDS source into ArrayRecord shards of training frames.

One record per frame (random access + global shuffle in Grain), holding the resized JPEG (4:4:4) or PNG
of every camera, the state, and the action chunk t..t+H-1 (clamped at the episode end, with
`action_is_pad`). Frames are decoded once here so training never touches video.

Output (named and read by shards.py, which readers use instead of this module): shard-XXXXX-of-YYYYY.array_record,
a shard-XXXXX.json sidecar (episodes, skips), a shard-XXXXX.npz with raw states/actions (for fast stats), and
index.json. A shard is written under a temporary name and renamed; its sidecar is written last, so a re-run skips
exactly the finished shards (and rewrites a finished shard whose file no longer reads back whole).

Every option that shapes the output (source, embodiment with a digest of its definition, horizon, image size,
format and quality, episodes per shard, delta action dims, tolerance, depth codes, on_error) is recorded in
OUT/convert_options.json before the first shard is written (and copied into index.json at the end), so a
re-run into a folder holding shards of another source or other options is refused before anything is written,
naming the options that differ: mixing e.g. 378 px and 112 px shards in one folder is never silent.
`overwrite=True` (`--overwrite`) first removes what this converter wrote there (shards, sidecars, index.json,
convert_options.json, norm_stats.json, and the tokenizer.json / openfast/ that molmoact2-data tokenizer / openfast
write there by default) and nothing else. The one change a resume accepts is on_error raise ->
skip: a shard finished under raise holds no bad episode, so it is what skip would have written.
Interrupted (Ctrl-C): no temporary or unfinished shard file is left behind, finished shards are kept, and
`ConversionInterrupted` (a KeyboardInterrupt) says how to resume; the CLI prints it as one line, exit 130.
With `depth_codes` (a MolmoThink companion dataset, formats/depth_codes.py) each record also holds the frame's
`depth_codes` (int16 [100]) and `depth_updated_mask` (bool [100]), and index.json says `depth_codes: true`.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from data_pipelines.embodiments import get_embodiment
from data_pipelines.errors import DataError
from data_pipelines.formats import images
from data_pipelines.formats.depth_codes import DepthCodes
from data_pipelines.record_codec import encode_record
from data_pipelines.shards import (INDEX_FORMAT, OPTIONS_FILE, check_writable, shard_name, shard_problem,
                                   sidecar_name, tag_metadata)
from data_pipelines.sources import open_source, parse_source
from molmoact2_jax.progress import progress_bar

# Every file this converter writes into OUT (beam_convert.py adds norm_stats.json): what --overwrite removes.
_OUTPUT_FILE = re.compile(r"shard-\d{5}(-of-\d{5}\.array_record(\.tmp)?|\.json(\.tmp)?|\.npz|\.tmp\.npz)|"
                          r"(index|convert_options|norm_stats)\.json(\.tmp)?")
_TEMPORARY_FILE = re.compile(r"shard-\d{5}(-of-\d{5}\.array_record\.tmp|\.json\.tmp|\.tmp\.npz)")
# recorded option -> how the user sets it, for the one line that refuses a folder converted otherwise
OPTION_FLAGS = {"source": "--source", "source_episodes": "the source's episodes", "embodiment": "--embodiment",
                "embodiment_sha256": "the embodiment's definition", "horizon": "--horizon",
                "image_size": "--image-size", "max_image_side": "--max-image-side", "image_format": "--image-format",
                "jpeg_quality": "jpeg_quality", "episodes_per_shard": "--episodes-per-shard",
                "delta_action_dims": "--delta-action-dims", "tolerance_s": "--tolerance-s",
                "depth_codes": "--depth-codes", "on_error": "--on-error"}


class ConversionConflict(ValueError):
    """OUT holds shards of another source or other options (one line: the folder, what differs, the fix)."""


class ConversionInterrupted(KeyboardInterrupt):
    """Ctrl-C during a conversion, after the temporary files were removed; the message says how to resume."""


@dataclasses.dataclass
class ConvertOptions:
    source: str
    embodiment: str
    out: str
    horizon: int | None = None          # default: the embodiment's action_horizon
    image_size: int | None = 378        # squash to SxS with the model's resize; None: keep aspect
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
    overwrite: bool = False             # remove what an earlier conversion wrote in OUT instead of refusing it

    def __post_init__(self):
        if self.image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', got {self.image_format!r}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.delta_action_dims is not None:
            dims = tuple(int(d) for d in self.delta_action_dims)
            emb = get_embodiment(self.embodiment)
            dim = min(emb.state_dim, emb.action_dim)   # a delta dim pairs an action dim with the same state dim
            if any(not 0 <= d < dim for d in dims) or len(set(dims)) != len(dims):
                raise ValueError(f"delta_action_dims {list(dims)}: expected distinct action dims in [0, {dim}) of "
                                 f"embodiment {self.embodiment}")
            self.delta_action_dims = dims


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
    """The resume rule: a shard is done once its sidecar (written last) and its renamed shard file exist, and the
    file still holds the records the sidecar counts (a shard truncated since, e.g. by a full disk, is rewritten)."""
    sidecar = out / sidecar_name(k)
    if not (sidecar.exists() and (out / shard_name(k, n)).exists()):
        return False
    try:
        expected = json.loads(sidecar.read_text())["num_records"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return shard_problem(out / shard_name(k, n), expected) is None


def resumed_summary(out: Path, k: int) -> dict:
    return json.loads((out / sidecar_name(k)).read_text()) | {"resumed": True}


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
    under a temporary name then renamed, the .npz, and the .json sidecar last. Returns the sidecar's summary.
    If anything stops it (an error, Ctrl-C), the shard's temporary and unfinished files are removed: no shard is
    left half-written, and none looks finished that is not."""
    (out / sidecar_name(k)).unlink(missing_ok=True)  # a rewrite (corrupt shard): unfinished until the end
    try:
        return _write_shard(out, k, n, dim, parts)
    except BaseException:
        remove_unfinished(out, [k])
        raise


def remove_unfinished(out: Path, shards=None) -> None:
    """Removes the temporary files of shards `shards` (all when None) and their renamed shard / .npz files when their
    sidecar (written last) is missing, i.e. the files of shards that did not finish."""
    for f in Path(out).glob("shard-*"):
        m = re.match(r"shard-(\d{5})", f.name)
        if not m or (shards is not None and int(m.group(1)) not in shards):
            continue
        if _TEMPORARY_FILE.fullmatch(f.name) or (
                _OUTPUT_FILE.fullmatch(f.name) and not f.name.endswith(".json")
                and not (Path(out) / sidecar_name(int(m.group(1)))).exists()):
            f.unlink(missing_ok=True)


def _write_shard(out: Path, k: int, n: int, dim: int, parts) -> dict:
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
    state_dim, action_dim = dim if isinstance(dim, tuple) else (dim, dim)   # (state, action): LIBERO's 8 / 7
    np.savez(out / sidecar_name(k, ".tmp.npz"),
             state=np.concatenate(states) if states else np.zeros((0, state_dim), np.float32),
             action=np.concatenate(actions) if actions else np.zeros((0, action_dim), np.float32))
    os.replace(out / sidecar_name(k, ".tmp.npz"), out / sidecar_name(k, ".npz"))
    summary = {"shard": shard_name(k, n), "num_records": n_records, "episodes": episodes, "skipped": skipped}
    (out / sidecar_name(k, ".json.tmp")).write_text(json.dumps(summary))
    os.replace(out / sidecar_name(k, ".json.tmp"), out / sidecar_name(k))
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
    return write_shard(out, k, n, (emb.state_dim, emb.action_dim), parts())


def open_conversion(opts: ConvertOptions):
    """(embodiment, OUT, opened source, episode groups per shard) of a conversion, OUT created; what both
    converters (this one and beam_convert.py) start from, so they assign episodes to shards alike. Nothing is
    written until every check passed: OUT writable, the source and depth codes readable, OUT free of shards of
    another source or other options (or `overwrite`); then OUT/convert_options.json records the options."""
    emb = get_embodiment(opts.embodiment)
    out = Path(opts.out)
    check_writable(out, "--out")   # a read-only OUT fails before the source is read
    src = open_source(opts.source, emb, opts.tolerance_s)   # a source that is not this robot: refused, OUT untouched
    if opts.depth_codes:
        DepthCodes(opts.depth_codes)   # a missing or unreadable companion fails before any shard is written
    groups = src.groups(opts.episodes_per_shard)
    prepare_output(out, conversion_record(opts, emb, groups), opts.overwrite)
    return emb, out, src, groups


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def conversion_record(opts: ConvertOptions, emb, groups) -> dict:
    """What convert_options.json holds: every option that shapes the output, resolved (defaults filled in, paths
    absolute), plus digests of the embodiment's definition (a file may change under the same name) and of the
    source's episode -> shard assignment (a dataset that gained episodes). Never OUT itself, so the same conversion
    into two folders records the same thing."""
    kind, path = parse_source(opts.source)
    delta = opts.delta_action_dims if opts.delta_action_dims is not None else emb.tag_metadata().get(
        "delta_action_dims")
    embodiment_file = getattr(emb, "source", "") or None   # an embodiment .json: where it was read from
    return {
        "format": INDEX_FORMAT,
        "source": f"{kind}:{Path(path).resolve()}",
        "source_episodes": _digest([[str(i) for i in g] for g in groups]),
        "num_shards": len(groups),
        "embodiment": emb.name,
        "embodiment_file": embodiment_file,
        "embodiment_sha256": _digest(_definition(emb)),
        "horizon": int(opts.horizon or emb.action_horizon),
        "image_size": opts.image_size or None,
        "max_image_side": int(opts.max_image_side),
        "image_format": opts.image_format,
        "jpeg_quality": int(opts.jpeg_quality),
        "episodes_per_shard": int(opts.episodes_per_shard),
        "delta_action_dims": [int(d) for d in delta] if delta else [],
        "tolerance_s": float(opts.tolerance_s),
        "depth_codes": str(Path(opts.depth_codes).resolve()) if opts.depth_codes else None,
        "on_error": opts.on_error,
    }


def _definition(emb) -> dict | str:
    """The embodiment's content: every field but `source` (where its file was read from: a moved file is the same
    robot)."""
    if not dataclasses.is_dataclass(emb):
        return repr(emb)
    d = dataclasses.asdict(emb)
    d.pop("source", None)
    return d


def read_options(out) -> dict | None:
    path = Path(out) / OPTIONS_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConversionConflict(f"{path}: unreadable ({e}); add --overwrite to replace the folder's shards, or "
                                 f"choose another --out") from None


def _shown(key: str, value) -> str:
    if key == "image_size" and value is None:
        return "0 (aspect kept)"
    if key == "delta_action_dims":
        return ",".join(map(str, value)) if value else "none"
    if key in ("source_episodes", "embodiment_sha256"):
        return f"digest {str(value)[:12]}"
    return str(value)


def option_differences(before: dict, now: dict) -> list[str]:
    """`--flag BEFORE there, NOW now` for every recorded option that differs, in OPTION_FLAGS order; on_error raise ->
    skip is no difference (a shard finished under raise holds no bad episode)."""
    diffs = []
    for key, flag in OPTION_FLAGS.items():
        if key not in before and key not in now:
            continue
        old, new = before.get(key), now.get(key)
        if key == "on_error" and (old, new) == ("raise", "skip"):
            continue
        if key == "source_episodes" and before.get("source") != now.get("source"):
            continue  # another source: said once
        if key == "embodiment_sha256" and before.get("embodiment") != now.get("embodiment"):
            continue
        if old != new:
            if key == "source_episodes":
                diffs.append(f"the source's episodes changed ({before.get('num_shards')} shards there, "
                             f"{now.get('num_shards')} now)")
            else:
                diffs.append(f"{flag} {_shown(key, old)} there, {_shown(key, new)} now")
    return diffs


def _legacy_record(index: dict) -> dict:
    """The options an index.json written before convert_options.json existed recorded (the rest is unknown)."""
    kind, _, path = str(index.get("source", "")).partition(":")
    return {"source": f"{kind}:{Path(path).resolve()}", "embodiment": index.get("embodiment"),
            "horizon": index.get("horizon"), "image_size": index.get("image_size"),
            "image_format": index.get("image_format", "jpeg"),
            "depth_codes": index.get("depth_codes_source")}


def output_files(out: Path) -> list[Path]:
    """The files in OUT that a conversion writes (what --overwrite removes); other files are not ours."""
    if not out.is_dir():
        return []
    return sorted(f for f in out.iterdir() if f.is_file() and _OUTPUT_FILE.fullmatch(f.name))


def prepare_output(out: Path, record: dict, overwrite: bool) -> None:
    """Refuses OUT when it holds shards of another source or other options (unless `overwrite`, which removes them
    first), then writes OUT/convert_options.json: before the first shard, so an interrupted first run (no index.json
    yet) is compared on its resume too."""
    before = read_options(out) if not overwrite else None
    ours = output_files(out)
    if before is None and not overwrite and any(f.name.startswith("shard-") or f.name == "index.json" for f in ours):
        index_path = out / "index.json"
        if not index_path.exists():
            raise ConversionConflict(f"{out}: holds shards of a conversion that recorded no options (unfinished, by "
                                     f"an older version); add --overwrite to replace them, or choose another --out")
        try:
            legacy = json.loads(index_path.read_text())
        except ValueError as e:
            raise ConversionConflict(f"{index_path}: unreadable ({e}); add --overwrite to replace the folder's "
                                     f"shards, or choose another --out") from None
        before = {k: v for k, v in record.items() if k not in _legacy_record(legacy)} | _legacy_record(legacy)
    if before is not None:
        if before.get("format") not in (None, INDEX_FORMAT):
            raise ConversionConflict(f"{out}: holds shards in format {before.get('format')!r}, this converter "
                                     f"writes {INDEX_FORMAT}; add --overwrite to replace them, or choose another --out")
        diffs = option_differences(before, record)
        if diffs:
            raise ConversionConflict(f"{out}: holds shards converted with other options ({'; '.join(diffs)}); add "
                                     f"--overwrite to replace them, or choose another --out")
    if overwrite:
        for f in ours:
            f.unlink()
        # What `molmoact2-data tokenizer / openfast SHARD_DIR` made from the old shards by default: kept, a training
        # run would pick them up for data they were not made from.
        for derived in (out / "tokenizer.json", out / "openfast"):
            if derived.is_dir():
                shutil.rmtree(derived)
            elif derived.exists():
                derived.unlink()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (OPTIONS_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out / OPTIONS_FILE)


def convert(opts: ConvertOptions) -> dict:
    emb, out, src, groups = open_conversion(opts)
    n = len(groups)
    results = [None] * n
    bar = progress_bar(total=n, unit="shard", desc=f"convert {opts.source}", disable=not opts.progress)
    try:
        if opts.workers <= 1:
            for k, ids in enumerate(groups):
                results[k] = convert_shard(opts, k, n, ids)
                bar.update()
        else:
            _convert_in_processes(opts, groups, results, bar)
    except KeyboardInterrupt:
        bar.close()
        raise interrupted(out, n) from None
    bar.close()
    index = build_index(opts, src.camera_keys, src.state_names, src.fps, results, src.action_names)
    write_index(out, index)
    return index


def write_index(out: Path, index: dict) -> None:
    """index.json, the mark of a finished conversion: written last and atomically (never half a file)."""
    tmp = Path(out) / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, Path(out) / "index.json")


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C goes to the whole process group; only the parent acts on it (it stops the workers
    and cleans up), so no worker prints a KeyboardInterrupt traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _convert_in_processes(opts: ConvertOptions, groups, results: list, bar) -> None:
    n = len(groups)
    # spawn, not fork: the caller may already run JAX (threads), and a forked child can deadlock
    pool = cf.ProcessPoolExecutor(max_workers=opts.workers, mp_context=mp.get_context("spawn"),
                                  initializer=_ignore_sigint)
    try:
        # the workers are started by submit(); started with SIGINT ignored they inherit that through exec, so a
        # Ctrl-C during their start-up (before the initializer runs) prints no traceback from them either
        main = threading.current_thread() is threading.main_thread()   # only the main thread may set handlers
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            futures = {pool.submit(convert_shard, opts, k, n, ids): k for k, ids in enumerate(groups)}
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        for f in cf.as_completed(futures):
            results[futures[f]] = f.result()
            bar.update()
    except KeyboardInterrupt:
        # the workers are mid-write: stop them now (waiting would finish their shards, minutes each), then
        # interrupted() removes what they left
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)  # after an error the shards already submitted still finish (a resume keeps them)


def interrupted(out: Path, n: int) -> ConversionInterrupted:
    """Removes the unfinished shards' files and says how to resume."""
    remove_unfinished(out)
    done = sum(shard_complete(out, k, n) for k in range(n))
    return ConversionInterrupted(f"interrupted: {done} of {n} shards finished in {out} (no partial shard left); run "
                                 f"the same command again to resume")


def build_index(opts: ConvertOptions, camera_keys, state_names, fps, results: list, action_names=None) -> dict:
    """index.json of a conversion from the source's description and the shard summaries in shard order."""
    emb = get_embodiment(opts.embodiment)
    first_key = camera_keys[0] if camera_keys else None
    tag_meta = tag_metadata(emb, opts.horizon, opts.delta_action_dims, camera_keys)
    return {
        "format": INDEX_FORMAT, "source": opts.source, "embodiment": emb.name, "tag": emb.tag,
        "tag_metadata": tag_meta, "camera_keys": camera_keys, "state_names": state_names,
        "action_names": list(state_names if action_names is None else action_names),
        "fps": fps, "horizon": opts.horizon or emb.action_horizon, "image_size": opts.image_size,
        "image_format": opts.image_format,
        "shards": [{"file": r["shard"], "num_records": r["num_records"], "num_episodes": len(r["episodes"])}
                   for r in results],
        "total_frames": sum(r["num_records"] for r in results),
        "total_episodes": sum(len(r["episodes"]) for r in results),
        "skipped": [s for r in results for s in r["skipped"]],
        "resumed_shards": sum(bool(r.get("resumed")) for r in results),
        "first_camera": first_key,
        "depth_codes": bool(opts.depth_codes),
        "depth_codes_source": str(Path(opts.depth_codes).resolve()) if opts.depth_codes else None,
        "options": read_options(opts.out),   # convert_options.json: every option the shards were written with
    }


