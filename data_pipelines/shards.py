"""A converted shard folder: how its files are named, what index.json holds, and how readers load and check it.

    OUT/shard-00003-of-00010.array_record   one record per frame (record_codec.py)
    OUT/shard-00003.json                    sidecar: the shard's episodes (first record, frames, task) and skips
    OUT/shard-00003.npz                     the shard's raw states and actions (stats without decoding records)
    OUT/convert_options.json                the options the shards were written with (written first)
    OUT/index.json                          the finished conversion (written last): format, tag, tag_metadata,
                                            cameras, horizon, shards [{file, num_records, num_episodes}], ...

The writer (convert.py, beam_convert.py) and the readers (pipeline/robot_dataset.py, stats.py, inspect_data.py,
shard_tokenizers.py, the trainer's set-up) share this module; readers never import the writer.
"""
from __future__ import annotations

import json
from pathlib import Path

from array_record.python.array_record_module import ArrayRecordReader

from data_pipelines.errors import DataError
from molmoact2_jax import storage

INDEX_FORMAT = "molmoact2_frames.v1"
OPTIONS_FILE = "convert_options.json"
REWRITE_HINT = "re-run the same molmoact2-data convert command to rewrite it (or add --overwrite to redo them all)"


def shard_name(k: int, n: int) -> str:
    """The records file of shard k of n."""
    return f"shard-{k:05d}-of-{n:05d}.array_record"


def sidecar_name(k: int, suffix: str = ".json") -> str:
    """Shard k's sidecar: .json (episodes, skips; written last) or .npz (raw states and actions)."""
    return f"shard-{k:05d}{suffix}"


def sidecar_path(shard_dir, shard_file: str, suffix: str = ".json") -> Path:
    """shard-00003-of-00010.array_record -> shard-00003.json (or .npz)."""
    return Path(shard_dir) / (shard_file.split("-of-")[0] + suffix)


def load_index(shard_dir) -> dict:
    """index.json of a finished conversion; a DataError naming the folder when it is unfinished or not one."""
    path = Path(shard_dir) / "index.json"
    if not path.exists():
        if (Path(shard_dir) / OPTIONS_FILE).exists():  # index.json is written last
            raise DataError("conversion unfinished (index.json is written last); run the same molmoact2-data convert "
                            "command again to finish it", path=path)
        raise DataError("not a converted shard directory (index.json missing)", path=path)
    index = json.loads(path.read_text())
    if index.get("format") != INDEX_FORMAT:
        raise DataError(f"unknown index format {index.get('format')!r}", path=path, key="format")
    return index


def load_episodes(shard_dir) -> list[dict]:
    """Per-episode index across shards: episode_id, shard, first_record, num_frames, task."""
    out = []
    for s in load_index(shard_dir)["shards"]:
        meta = json.loads(sidecar_path(shard_dir, s["file"]).read_text())
        out += [dict(e, shard=s["file"]) for e in meta["episodes"]]
    return out


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


def shard_problem(path: Path, expected: int) -> str | None:
    """Why the ArrayRecord file `path` is not a whole shard of `expected` records, or None when it is. Cheap: opening
    reads the file's footer and index, not its records (a truncated file opens with 0 records and ok() False), so a
    bit flip inside a record is only found when that record is read (pipeline/robot_dataset.py names the file)."""
    if not path.is_file():
        return "shard file missing"
    try:
        reader = ArrayRecordReader(str(path))
    except Exception as e:  # noqa: BLE001 - array_record raises bare RuntimeErrors (Riegeli messages)
        return f"corrupt or truncated shard ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
    ok, found = reader.ok(), reader.num_records()
    try:
        reader.close()
    except Exception:  # noqa: BLE001 - a reader that hit a damaged file reports it again on close
        ok = False
    if not ok or found != expected:
        return f"corrupt or truncated shard ({found} readable records, {expected} written)"
    return None


def check_shard(shard_dir, entry: dict) -> None:
    """DataError naming the shard file of index.json's `entry` ({file, num_records}) when it is missing, unreadable or
    short; what `stats`, `inspect` and training check before they read a shard directory."""
    path = Path(shard_dir) / entry["file"]
    problem = shard_problem(path, int(entry["num_records"]))
    if problem is not None:
        raise DataError(f"{problem}; {REWRITE_HINT}", path=path)


def corrupt_record_message(path: Path, err: BaseException, record: int | None = None) -> str:
    """A record of shard `path` did not read back (a Riegeli hash mismatch: the file's bytes changed after it was
    written). Its record count is intact, so a resume would keep it: the fix removes its sidecar first."""
    first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    at = f" at record {record}" if record is not None else ""
    sidecar = sidecar_path(path.parent, path.name)
    return (f"{path}: corrupt shard{at} ({first}); delete {sidecar.name} and re-run the same molmoact2-data convert "
            f"command to rewrite it (or add --overwrite to redo them all)")


def check_writable(folder, flag: str, given=None) -> None:
    """Refuses, before any work, a folder that cannot be written (storage.local_write_problem): a conversion's OUT,
    or where a reader writes what it made from shards (norm_stats.json, tokenizer.json, openfast/). Messages name
    `flag` and `given` (what the user typed: the file to be written in `folder`, or `folder` itself)."""
    shown = folder if given is None else given
    where, problem = storage.local_write_problem(folder)
    if problem == "a file, not a folder":
        raise ValueError(f"{flag} {shown}: {where} is a file, not a folder; choose another {flag}")
    if problem is not None:
        raise ValueError(f"{flag} {shown}: cannot write in {where} ({problem}); choose a writable folder")
