"""`molmoact2-data inspect PATH`: what a dataset holds and the first errors found in it."""
from __future__ import annotations

from pathlib import Path

from array_record.python.array_record_module import ArrayRecordReader

from data_pipelines.errors import DataError
from data_pipelines.formats.droid_rlds import DroidRLDS
from data_pipelines.formats.lerobot_reader import LeRobotDataset
from data_pipelines.record_codec import decode_record
from data_pipelines.shards import check_shard, corrupt_record_message, load_index


def detect(path: Path) -> str:
    if (path / "index.json").exists():
        return "shards"
    if (path / "meta/info.json").exists():
        return "lerobot"
    if (path / "dataset_info.json").exists() or any(path.rglob("dataset_info.json")):
        return "rlds"
    raise DataError("not a LeRobot dataset, RLDS dataset or shard directory", path=path)


def inspect_path(path, max_errors: int = 5, deep: bool = False) -> tuple[list[str], list[str]]:
    """Returns (report lines, error messages). deep=True decodes every video frame."""
    path = Path(path)
    kind = detect(path)
    lines, errors = [f"path: {path}", f"kind: {kind}"], []
    if kind == "lerobot":
        ds = LeRobotDataset(path)
        lines += [f"codebase_version: {ds.version}", f"robot_type: {ds.info.get('robot_type')}",
                  f"fps: {ds.info['fps']}", f"episodes: {len(ds.episodes)}",
                  f"frames: {sum(e.length for e in ds.episodes)} (info.json total_frames "
                  f"{ds.info.get('total_frames')})", f"tasks: {len(ds.tasks)}", "features:"]
        lines += [f"  {k}: {f['dtype']} {f.get('shape')}" for k, f in ds.features.items()]
        for e in ds.episodes:
            if len(errors) >= max_errors:
                break
            try:
                ds.episode_columns(e.index)
                ds.check_timestamps(e.index)
                for key in ds.camera_keys:
                    if deep:
                        ds.episode_video(e.index, key)
                    else:
                        ds.frames(e.index, key, [0, e.length - 1])
            except DataError as err:
                errors.append(f"{type(err).__name__}: {err}")
    elif kind == "rlds":
        reader = DroidRLDS(path)
        lines += [f"version_dir: {reader.root}", f"shards: {len(reader.shards)}"]
        n_eps = n_steps = 0
        try:
            for shard, n, feats in reader.iter_raw():
                ep = DroidRLDS.to_episode(shard, n, feats)
                n_eps, n_steps = n_eps + 1, n_steps + ep.length
                if n_eps == 1:
                    lines.append("features:")
                    lines += [f"  {k}: {len(v)} values" for k, v in sorted(feats.items())]
        except DataError as err:
            errors.append(f"{type(err).__name__}: {err}")
        lines[2:2] = [f"episodes: {n_eps}", f"frames: {n_steps}"]
    else:
        index = load_index(path)
        lines += [f"embodiment: {index['embodiment']} (tag {index['tag']})", f"source: {index['source']}",
                  f"episodes: {index['total_episodes']}", f"frames: {index['total_frames']}",
                  f"shards: {len(index['shards'])}", f"cameras: {index['camera_keys']}",
                  f"state_names: {index['state_names']}", f"horizon: {index['horizon']}",
                  f"skipped episodes: {len(index['skipped'])}"]
        errors += [f"skipped {s['episode']}: {s['error']}" for s in index["skipped"][:max_errors]]
        fields_shown = False
        for s in index["shards"]:
            try:
                check_shard(path, s)   # missing, truncated or short: named, with the fix
                if not s["num_records"]:
                    continue
                reader = ArrayRecordReader(str(path / s["file"]))
                try:  # the first and last record decode (a bit flip elsewhere is found when training reads it)
                    first, last = reader.read([0, s["num_records"] - 1])
                finally:
                    reader.close()
                rec = decode_record(first)
                decode_record(last)
                if not fields_shown:
                    lines.append("record fields:")
                    lines += [f"  {k}: {getattr(v, 'shape', type(v).__name__)}" for k, v in rec.items()]
                    fields_shown = True
            except DataError as err:
                errors.append(f"{type(err).__name__}: {err}")
            except Exception as err:  # noqa: BLE001 - a Riegeli error reading a record: report it with the file
                errors.append(corrupt_record_message(path / s["file"], err))
    return lines, errors[:max_errors]
