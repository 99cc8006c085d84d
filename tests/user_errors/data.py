"""User-error cases: data (see tests/user_errors/__init__.py)."""
from __future__ import annotations

import json
from pathlib import Path

from user_errors import Case

CASES: list[Case] = []


# --- embodiment files (data_pipelines/embodiments.py, `molmoact2-data embodiment`) ---------------------------------

_SO = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
_ARM7 = Path(__file__).resolve().parents[1] / "fixtures" / "arm7.json"
_HF_HERE = {"HF_HOME": "hf", "HF_LEROBOT_HOME": "hf/lerobot", "HF_HUB_CACHE": "hf/hub"}  # caches in the case's folder


def _dataset(root: Path, names, cameras=("top", "wrist"), action_names=None) -> str:
    """A LeRobot v2.1 dataset's metadata alone (info.json, episodes, tasks): the embodiment check reads nothing
    else, and refuses before any parquet or video is opened."""
    (root / "meta").mkdir(parents=True)
    vec = lambda n: {"dtype": "float32", "shape": [len(n)], "names": list(n)}  # noqa: E731
    feats = {"observation.state": vec(names), "action": vec(action_names or names)}
    for c in cameras:
        feats[f"observation.images.{c}"] = {"dtype": "video", "shape": [48, 64, 3],
                                            "names": ["height", "width", "channels"]}
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        feats[k] = {"dtype": "int64" if k != "timestamp" else "float32", "shape": [1], "names": None}
    info = {"codebase_version": "v2.1", "robot_type": "koch", "fps": 30, "total_episodes": 1, "total_frames": 5,
            "chunks_size": 1000, "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": feats}
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/episodes.jsonl").write_text(json.dumps({"episode_index": 0, "tasks": ["t"], "length": 5}) + "\n")
    (root / "meta/tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "t"}) + "\n")
    return f"lerobot:{root.name}"


def _robot(d: Path, **changes) -> str:
    """tests/fixtures/arm7.json with `changes` (None removes a field), written as robot.json."""
    data = json.loads(_ARM7.read_text())
    for k, v in changes.items():
        data.pop(k) if v is None else data.__setitem__(k, v)
    (d / "robot.json").write_text(json.dumps(data))
    return "robot.json"


def _convert(source: str, embodiment: str) -> list[str]:
    return ["molmoact2-data", "convert", "--source", source, "--embodiment", embodiment, "--out", "shards"]


CASES += [
    Case("embodiment-unknown-name", lambda d: _convert(_dataset(d / "ds", [f"{j}.pos" for j in _SO]), "koch"),
         "unknown embodiment 'koch': give a built-in name (droid, libero, metaworld, so100, yam) or the path of an "
         "embodiment .json file"),
    Case("embodiment-file-missing", lambda d: _convert("lerobot:ds", "robot.json"),
         "embodiment file robot.json: does not exist; molmoact2-data embodiment --from lerobot:DIR --out robot.json"),
    Case("embodiment-file-not-json",
         lambda d: (d / "robot.json").write_text('{"name": "arm7",\n') and _convert("lerobot:ds", "robot.json"),
         "embodiment file robot.json: not valid JSON (line 2 column 1"),
    Case("embodiment-file-bad-field", lambda d: _convert("lerobot:ds", _robot(d, fps="fast")),
         "embodiment file robot.json: field 'fps': expected a positive number (Hz), got 'fast'"),
    Case("embodiment-file-missing-field", lambda d: _convert("lerobot:ds", _robot(d, tag=None)),
         "embodiment file robot.json: field 'tag': missing"),
    Case("embodiment-file-unknown-field", lambda d: _convert("lerobot:ds", _robot(d, action_horizen=20)),
         "embodiment file robot.json: field 'action_horizen': unknown field"),
    Case("embodiment-fixture-gripper-not-named",
         lambda d: ["molmoact2-data", "fixture", "--format", "lerobot-v3.0", "--out", "ds",
                    "--embodiment", _robot(d, state_gripper_dims=[5])],
         "field 'state_gripper_dims': [5] but the dims whose name contains 'gripper' are [6]"),
    Case("embodiment-renamed-joints",
         lambda d: _convert(_dataset(d / "koch", [f"koch_{j}" for j in _SO]), "so100"),
         "observation.state names[0] is 'koch_shoulder_pan' but embodiment so100 expects 'shoulder_pan.pos'"),
    Case("embodiment-wrong-dims",
         lambda d: ["molmoact2-data", "stats", _dataset(d / "arm", [f"j{i}" for i in range(6)] + ["gripper"]),
                    "--embodiment", "so100", "--out", "norm_stats.json"],
         "observation.state has 7 dims but embodiment so100 expects 6"),
    Case("embodiment-action-names-differ",
         lambda d: _convert(_dataset(d / "ds", [f"{j}.pos" for j in _SO], ("front", "hand"),
                                     action_names=[f"{j}.vel" for j in _SO]), "so100"),
         "action names[0] is 'shoulder_pan.vel' but embodiment so100 expects 'shoulder_pan.pos'"),
    Case("embodiment-missing-camera",
         lambda d: _convert(_dataset(d / "yam", [f"{s}_{n}" for s in ("left", "right") for n in
                                             [f"joint_{i}.pos" for i in range(6)] + ["gripper.pos"]],
                                     ("top", "left", "wrist")), "yam"),
         "the dataset has no camera 'observation.images.right'; embodiment yam expects the cameras"),
    Case("embodiment-from-exists",
         lambda d: (d / "robot.json").write_text("{}") and ["molmoact2-data", "embodiment", "--from", "lerobot:ds",
                                                            "--out", "robot.json"],
         "--out robot.json already exists; an embodiment file is not overwritten"),
    Case("embodiment-from-not-lerobot",
         lambda d: ["molmoact2-data", "embodiment", "--from", "rlds:ds", "--out", "robot.json"],
         "--from must look like lerobot:PATH"),
    Case("embodiment-from-no-dataset",
         lambda d: ["molmoact2-data", "embodiment", "--from", "lerobot:nothing", "--out", "robot.json"],
         "not a LeRobot dataset (meta/info.json missing)"),
    Case("embodiment-hub-not-cached", lambda d: _convert("lerobot:someone/not_cached", "so100"),
         "lerobot:someone/not_cached is neither a local folder nor a dataset in the local Hugging Face cache (looked "
         "for hf/lerobot/someone/not_cached/meta/info.json and hf/hub/datasets--someone--not_cached/snapshots/"
         "<revision>/meta/info.json); nothing is downloaded here: fetch it first with `huggingface-cli download "
         "--repo-type dataset someone/not_cached`", env=_HF_HERE),
    Case("embodiment-from-hub-not-cached",
         lambda d: ["molmoact2-data", "embodiment", "--from", "lerobot:someone/not_cached", "--out", "robot.json"],
         "`huggingface-cli download --repo-type dataset someone/not_cached`", env=_HF_HERE),
]


# --- conversion safety, stats, OpenFAST from shards (data_pipelines/convert.py, stats.py, shard_tokenizers.py) -----

_SHARED: dict = {}


def _source_and_shards() -> tuple[Path, Path]:
    """One so100 LeRobot fixture and its conversion (32 px, 2 episodes per shard: 2 shards), made once per test
    process outside every case's folder; cases copy the shards they change."""
    if not _SHARED:
        import atexit
        import shutil
        import tempfile

        from data_pipelines.convert import ConvertOptions, convert
        from data_pipelines.fixtures import make_fixture
        root = Path(tempfile.mkdtemp(prefix="user-errors-data-"))
        atexit.register(shutil.rmtree, root, True)
        src = make_fixture("lerobot-v2.1", "so100", root / "so100", episodes=3)
        convert(ConvertOptions(f"lerobot:{src}", "so100", str(root / "shards"), episodes_per_shard=2, image_size=32,
                               progress=False))
        _SHARED.update(src=Path(src), shards=root / "shards")
    return _SHARED["src"], _SHARED["shards"]


def _shards_in(d: Path, truncate: str | None = None) -> str:
    """A copy of the shared shards as d/s (`truncate`: a shard file cut to half its size); returns "s"."""
    import shutil
    shutil.copytree(_source_and_shards()[1], d / "s")
    if truncate:
        f = d / "s" / truncate
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return "s"


def _unwritable(d: Path) -> str:
    """A folder no file can be created in: /sys for root (permission bits do not stop root), else a 0555 folder."""
    import os
    if os.geteuid() == 0:
        return "/sys/molmoact2-user-errors"
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    return "ro/out"


def _convert_so100(out: str, *more: str) -> list[str]:
    return ["molmoact2-data", "convert", "--source", f"lerobot:{_source_and_shards()[0]}", "--embodiment", "so100",
            "--out", out, *more]


CASES += [
    Case("convert-other-options",
         lambda d: _convert_so100(_shards_in(d), "--image-size", "48", "--episodes-per-shard", "2"),
         "s: holds shards converted with other options (--image-size 32 there, 48 now); add --overwrite to replace "
         "them, or choose another --out"),
    Case("convert-other-source",
         lambda d: ["molmoact2-data", "convert", "--source", _dataset(d / "ds", [f"{j}.pos" for j in _SO]),
                    "--embodiment", "so100", "--out", _shards_in(d), "--image-size", "32", "--episodes-per-shard", "2"],
         "s: holds shards converted with other options (--source lerobot:"),
    Case("convert-read-only-out", lambda d: _convert_so100(_unwritable(d)), ": cannot write in "),
    Case("convert-out-is-a-file",
         lambda d: (d / "notes.txt").write_text("x") and _convert_so100("notes.txt/shards"),
         "--out notes.txt/shards: "),
    Case("stats-truncated-shard",
         lambda d: ["molmoact2-data", "stats", _shards_in(d, "shard-00001-of-00002.array_record")],
         "corrupt or truncated shard (0 readable records, 23 written); re-run the same molmoact2-data convert "
         "command to rewrite it"),
    Case("stats-read-only-out",
         lambda d: ["molmoact2-data", "stats", _shards_in(d), "--out", f"{_unwritable(d)}/norm_stats.json"],
         "norm_stats.json: cannot write in "),
    Case("stats-raw-source-needs-out",
         lambda d: ["molmoact2-data", "stats", f"lerobot:{_source_and_shards()[0]}", "--embodiment", "so100"],
         "--out is required with lerobot:/rlds: sources"),
    Case("stats-unfinished-conversion",
         lambda d: (Path(d / _shards_in(d)) / "index.json").unlink() or ["molmoact2-data", "stats", "s"],
         "conversion unfinished (index.json is written last); run the same molmoact2-data convert command again"),
    Case("openfast-shard-sidecar-as-chunks",
         lambda d: ["molmoact2-openfast", "fit", "--chunks", f"{_shards_in(d)}/shard-00000.npz", "--out", "tok"],
         "s/shard-00000.npz: a converted shard's sidecar (raw per-frame state and action, not action chunks); fit "
         "on the shards with: molmoact2-data openfast SHARD_DIR"),
    Case("openfast-shard-folder-as-chunks",
         lambda d: ["molmoact2-openfast", "fit", "--chunks", _shards_in(d), "--out", "tok"],
         "s: a converted shard folder, not action chunks; fit on it with: molmoact2-data openfast SHARD_DIR"),
    Case("openfast-from-shards-without-norm-stats", lambda d: ["molmoact2-data", "openfast", _shards_in(d)],
         "norm stats file not found: s/norm_stats.json; run molmoact2-data stats s first, or pass --norm-stats FILE"),
    Case("openfast-from-shards-vocab-too-large",
         lambda d: ["molmoact2-data", "openfast", _shards_in(d), "--vocab-size", "4096"],
         "--vocab-size 4096: expected 1..2048 (the model has 2048 action tokens for the BPE ids)"),
]
