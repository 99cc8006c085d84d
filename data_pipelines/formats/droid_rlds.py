"""DROID 1.0.1 in RLDS/TFDS form: writer and reader, no TensorFlow.

On disk (docs/data.md, "DROID RLDS"): <root>/droid/1.0.1/{dataset_info.json, features.json,
droid-train.tfrecord-XXXXX-of-YYYYY}. One tf.train.Example per episode; per-step features are
flattened with '/' and concatenated over steps; floats (float64 too) are float32 on disk, bools
are int64, images are JPEG bytes, text is one UTF-8 entry per step. TFDS hashes episode order
into shards, so the reader never assumes write order.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from data_pipelines.episode import Episode
from data_pipelines.errors import IncompleteDatasetError, ShapeMismatchError
from data_pipelines.formats import images, tf_example, tfrecord

VERSION = "1.0.1"
CAMERAS = ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left")
LEROBOT_CAMERAS = ("exterior_1_left", "exterior_2_left", "wrist_left")  # names in the LeRobot port
STEP_SHAPES = {  # per-step shapes of the numeric step features
    "steps/observation/cartesian_position": (6,), "steps/observation/joint_position": (7,),
    "steps/observation/gripper_position": (1,),
    "steps/action_dict/cartesian_position": (6,), "steps/action_dict/cartesian_velocity": (6,),
    "steps/action_dict/joint_position": (7,), "steps/action_dict/joint_velocity": (7,),
    "steps/action_dict/gripper_position": (1,), "steps/action_dict/gripper_velocity": (1,),
    "steps/action": (7,), "steps/reward": (), "steps/discount": (),
    "steps/is_first": (), "steps/is_last": (), "steps/is_terminal": (),
}


def _fake_fk(joints: np.ndarray) -> np.ndarray:
    """A smooth stand-in for Franka forward kinematics (xyz + rpy)."""
    c = np.cumsum(joints[:, :7], axis=1)
    return np.stack([0.4 + 0.2 * np.cos(c[:, 1]), 0.2 * np.sin(c[:, 0]), 0.3 + 0.2 * np.sin(c[:, 3]),
                     c[:, 4], c[:, 5], c[:, 6]], 1)


def episode_example(ep: Episode, index: int, fps: int) -> bytes:
    T = ep.length
    s, a = ep.states.astype(np.float64), ep.actions.astype(np.float64)
    cart, cart_next = _fake_fk(s), _fake_fk(a)
    lang2 = "" if index % 2 else ep.annotated_task  # real data has empty alternates
    feats = {
        "steps/is_first": (np.arange(T) == 0).astype(np.int64),
        "steps/is_last": (np.arange(T) == T - 1).astype(np.int64),
        "steps/is_terminal": (np.arange(T) == T - 1).astype(np.int64),
        "steps/language_instruction": [ep.task] * T,
        "steps/language_instruction_2": [lang2] * T,
        "steps/language_instruction_3": [""] * T,
        "steps/observation/joint_position": s[:, :7], "steps/observation/gripper_position": s[:, 7:],
        "steps/observation/cartesian_position": cart,
        "steps/action_dict/joint_position": a[:, :7], "steps/action_dict/gripper_position": a[:, 7:],
        "steps/action_dict/joint_velocity": (a[:, :7] - s[:, :7]) * fps,
        "steps/action_dict/gripper_velocity": (a[:, 7:] - s[:, 7:]) * fps,
        "steps/action_dict/cartesian_position": cart_next,
        "steps/action_dict/cartesian_velocity": (cart_next - cart) * fps,
        "steps/action": np.concatenate([(cart_next - cart) * fps, a[:, 7:]], 1),
        "steps/reward": (np.arange(T) == T - 1).astype(np.float32),
        "steps/discount": np.ones(T, np.float32),
        "episode_metadata/file_path": f"gs://droid/success/2026-01-01/ep_{index:06d}/trajectory.h5",
        "episode_metadata/recording_folderpath": f"gs://droid/success/2026-01-01/ep_{index:06d}/recordings/MP4",
        "episode_metadata/building": "SIM", "episode_metadata/collector_id": "synthetic",
        "episode_metadata/date": "2026-01-01", "episode_metadata/task_category": "pick",
        "episode_metadata/scene_id": np.array([index], np.int64),
    }
    for cam in ("exterior_cam_1", "exterior_cam_2", "wrist_cam"):
        feats[f"episode_metadata/extrinsics_{cam}"] = np.linspace(0, 1, 6)
    for rlds_cam, cam in zip(CAMERAS, LEROBOT_CAMERAS):
        feats[f"steps/observation/{rlds_cam}"] = [images.encode_image(f, "jpeg") for f in ep.images[cam]]
    return tf_example.encode_example(feats)


def _features_json(hw) -> dict:
    tensor = lambda shape, dtype: {"tensor": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": dtype,
                                              "encoding": "none"}}
    obs = {k.split("/")[-1]: tensor(v, "float64") for k, v in STEP_SHAPES.items() if "/observation/" in k}
    for cam in CAMERAS:
        obs[cam] = {"image": {"shape": {"dimensions": [str(hw[0]), str(hw[1]), "3"]}, "dtype": "uint8",
                              "encodingFormat": "jpeg"}}
    return {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
            "featuresDict": {"features": {
                "steps": {"pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
                          "sequence": {"length": "-1", "feature": {"observation": obs}}},
                "episode_metadata": {"file_path": {"text": {}}}}}}


def write_droid_rlds(root: str | Path, episodes: list[Episode], *, fps: int = 15, num_shards: int = 2) -> Path:
    """Write <root>/droid/1.0.1/. Episodes go to shards in hashed order (as TFDS does)."""
    out = Path(root) / "droid" / VERSION
    out.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(episodes)), key=lambda i: hashlib.sha1(f"droid-{i}".encode()).hexdigest())
    shards = [order[k::num_shards] for k in range(num_shards)]
    lengths = []
    for k, idx in enumerate(shards):
        tfrecord.write_records(out / f"droid-train.tfrecord-{k:05d}-of-{num_shards:05d}",
                               (episode_example(episodes[i], i, fps) for i in idx))
        lengths.append(str(len(idx)))
    info = {"name": "droid", "version": VERSION, "fileFormat": "tfrecord", "moduleName": "droid.droid",
            "splits": [{"name": "train", "shardLengths": lengths, "numBytes": "0",
                        "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}]}
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2))
    (out / "features.json").write_text(json.dumps(_features_json(episodes[0].images[LEROBOT_CAMERAS[0]].shape[1:3]),
                                                  indent=2))
    return out


@dataclasses.dataclass
class RLDSEpisode:
    key: str                         # "<shard file>#<record>"
    file_path: str                   # episode_metadata/file_path
    states: np.ndarray               # [T, 8] joint_position(7) + gripper_position(1)
    actions: np.ndarray              # [T, 8] action_dict joint_position(7) + gripper_position(1)
    images: dict[str, np.ndarray]    # LeRobot-port camera name -> [T, H, W, 3]
    instructions: list[str]          # language_instruction, _2, _3 (first step), empty ones kept

    @property
    def length(self) -> int:
        return len(self.states)

    @property
    def success(self) -> bool:
        return "/success/" in self.file_path


def find_version_dir(path: str | Path) -> Path:
    """Accept .../droid/1.0.1 or any parent holding exactly one dataset version folder."""
    path = Path(path)
    if (path / "dataset_info.json").exists():
        return path
    found = sorted(p.parent for p in path.rglob("dataset_info.json"))
    if len(found) != 1:
        raise IncompleteDatasetError(f"expected exactly one RLDS version folder with dataset_info.json, found "
                                     f"{[str(f) for f in found]}", path=path)
    return found[0]


class DroidRLDS:
    def __init__(self, path: str | Path, *, check_crc: bool = True):
        self.root = find_version_dir(path)
        self.info = json.loads((self.root / "dataset_info.json").read_text())
        self.shards = sorted(self.root.glob("*.tfrecord-*"))
        if not self.shards:
            raise IncompleteDatasetError("no *.tfrecord-* shards", path=self.root)
        self.check_crc = check_crc

    def iter_raw(self):
        """Yield (shard path, record index, parsed feature dict)."""
        for shard in self.shards:
            for n, rec in enumerate(tfrecord.read_records(shard, check_crc=self.check_crc)):
                yield shard, n, tf_example.parse_example(rec, path=shard, record=n)

    def __iter__(self):
        for shard, n, feats in self.iter_raw():
            yield self.to_episode(shard, n, feats)

    @staticmethod
    def numeric_steps(shard, n, feats) -> tuple[np.ndarray, np.ndarray]:
        """(states [T, 8], actions [T, 8]) float32 of one parsed episode, without touching its images."""
        if "steps/is_first" not in feats:
            raise ShapeMismatchError("episode has no steps/is_first", path=shard, episode=n, key="steps/is_first")
        T = len(feats["steps/is_first"])

        def steps(key):
            if key not in feats:
                raise ShapeMismatchError("feature missing", path=shard, episode=n, key=key)
            v = np.asarray(feats[key], np.float32)
            shape = STEP_SHAPES[key]
            if v.size != T * int(np.prod(shape)):
                raise ShapeMismatchError(f"{v.size} values for {T} steps of shape {shape}", path=shard, episode=n,
                                         key=key)
            return v.reshape(T, *shape)

        states = np.concatenate([steps("steps/observation/joint_position"),
                                 steps("steps/observation/gripper_position")], 1)
        actions = np.concatenate([steps("steps/action_dict/joint_position"),
                                  steps("steps/action_dict/gripper_position")], 1)
        return states, actions

    @staticmethod
    def to_episode(shard, n, feats) -> RLDSEpisode:
        states, actions = DroidRLDS.numeric_steps(shard, n, feats)
        T = len(states)
        imgs = {}
        for rlds_cam, cam in zip(CAMERAS, LEROBOT_CAMERAS):
            key = f"steps/observation/{rlds_cam}"
            raw = feats.get(key)
            if raw is None or len(raw) != T:
                raise ShapeMismatchError(f"expected {T} encoded images, got {0 if raw is None else len(raw)}",
                                         path=shard, episode=n, key=key)
            imgs[cam] = np.stack([images.decode_image(b, path=shard, episode=n, key=key) for b in raw])
        instr = []
        for k in ("steps/language_instruction", "steps/language_instruction_2", "steps/language_instruction_3"):
            v = feats.get(k) or [b""]
            instr.append(v[0].decode() if isinstance(v, list) and v and isinstance(v[0], bytes) else "")
        fp = feats.get("episode_metadata/file_path") or [b""]
        return RLDSEpisode(f"{shard.name}#{n}", fp[0].decode(), states, actions, imgs, instr)
