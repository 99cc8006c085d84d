"""Per-embodiment facts: feature names, cameras, rates, and the MolmoAct2 tag metadata, read from embodiment files.

A robot is data, not code: an embodiment file (JSON, format `molmoact2_embodiment.v1`, schema in
docs/data.md "Embodiment files") declares it. The built-in robots (droid, so100, yam, metaworld, libero)
are such files shipped in data_pipelines/embodiment_files/; `get_embodiment(x)` takes a built-in name or a path to a
file, and `molmoact2-data embodiment --from lerobot:DIR --out robot.json` writes a starting file from a dataset.
Values of the built-ins follow docs/model_notes.md, "Embodiments" and "Training recipe". Fixture image sizes are
small on purpose (tests run on 2 cores); `real_image_hw` records the real size.

`check_dataset_features` holds a dataset's meta/info.json features against an embodiment, so a dataset of another
robot is refused (naming the key and what the embodiment expects) instead of being converted as this one.
"""
from __future__ import annotations

import dataclasses
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from data_pipelines.errors import DataError

EMBODIMENT_FORMAT = "molmoact2_embodiment.v1"
BUILTIN_DIR = Path(__file__).parent / "embodiment_files"
IMAGE_KEY_PREFIX = "observation.images."
SO100_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
_FROM_HINT = "molmoact2-data embodiment --from lerobot:DIR --out robot.json writes a file for this dataset's robot"


class EmbodimentFileError(ValueError):
    """A malformed embodiment file; the message names the file and the field."""

    def __init__(self, path, field: str | None, message: str):
        where = f"embodiment file {path}" + (f": field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")


class EmbodimentMismatchError(DataError):
    """A dataset's keys, dims, per-dim names or cameras are not the ones its --embodiment declares."""


@dataclasses.dataclass(frozen=True)
class Embodiment:
    name: str                     # CLI name (built-in) or the file's `name`
    tag: str                      # MolmoAct2 norm tag
    robot_type: str
    fps: float
    state_names: tuple[str, ...]
    cameras: tuple[str, ...]      # short names; LeRobot key is observation.images.<cam> (see camera_keys)
    real_image_hw: tuple[int, int]
    fixture_image_hw: tuple[int, int]
    low: tuple[float, ...]        # per state dim physical range used by the fixture simulator
    high: tuple[float, ...]
    setup_type: str
    control_mode: str
    normalize_gripper: bool
    action_horizon: int
    fixed_camera_order: bool      # False: per-episode random camera order (SO100)
    # Action dims that are trained as deltas w.r.t. the same state dim (openpi's DeltaActions): off for the
    # released tags (absolute joints); `molmoact2-data convert --delta-action-dims` turns it on for a dataset.
    delta_action_dims: tuple[int, ...] = ()
    action_names: tuple[str, ...] | None = None    # None: the state's names (state and action are alike)
    action_low: tuple[float, ...] | None = None    # None: each action dim takes the range of its same-named state
    action_high: tuple[float, ...] | None = None
    state_key: str = "observation.state"
    action_key: str = "action"
    # Other per-dim name lists that datasets use for the same state / action (e.g. SO100's old `main_` names);
    # a dataset must carry the declared names or one of these.
    state_name_aliases: tuple[tuple[str, ...], ...] = ()
    action_name_aliases: tuple[tuple[str, ...], ...] = ()
    # True: a dataset must hold every declared camera; they are converted in the declared order (others ignored).
    # False: the dataset's own cameras (any names, any number) are used in its order; the declared ones are only what
    # the fixture writer writes (SO100's community cameras, MetaWorld recordings from any simulator camera).
    require_camera_keys: bool = False
    source: str = ""              # the file it was read from, absolute ("" for a built-in)

    def __post_init__(self):
        if self.action_names is None:
            object.__setattr__(self, "action_names", tuple(self.state_names))
        if self.action_low is None or self.action_high is None:
            src = self.action_source_dims()
            object.__setattr__(self, "action_low", tuple(float(self.low[i]) for i in src))
            object.__setattr__(self, "action_high", tuple(float(self.high[i]) for i in src))

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def dim(self) -> int:
        """The action dim (what the model predicts; equal to the state dim for every joint-space robot)."""
        return self.action_dim

    @property
    def camera_keys(self) -> tuple[str, ...]:
        return tuple(c if c.startswith("observation.") else IMAGE_KEY_PREFIX + c for c in self.cameras)

    @property
    def label(self) -> str:
        """How messages name it: the built-in name, or the name and the file it came from."""
        return f"{self.name} ({self.source})" if self.source else self.name

    def gripper_dims(self, names=None) -> np.ndarray:
        names = self.state_names if names is None else names
        return np.array(["gripper" in n for n in names])

    def action_source_dims(self) -> list[int]:
        """For each action dim, the state dim of the same name (the fixture simulator's action for it); a name the
        state does not have takes state dim j mod state_dim."""
        first = {}
        for i, n in enumerate(self.state_names):
            first.setdefault(n, i)
        return [first.get(n, j % len(self.state_names)) for j, n in enumerate(self.action_names)]

    def tag_metadata(self) -> dict:
        """The per-tag keys of norm_stats.json, minus the stats themselves."""
        return {
            "action_key": self.action_key,
            "state_keys": [self.state_key],
            "camera_keys": list(self.camera_keys) if self.fixed_camera_order else [],
            "normalize_gripper": self.normalize_gripper,
            "action_dim": self.action_dim,
            "action_horizon": self.action_horizon,
            "n_action_steps": self.action_horizon,
            "setup_type": self.setup_type,
            "control_mode": self.control_mode,
            **({"delta_action_dims": list(self.delta_action_dims)} if self.delta_action_dims else {}),
        }

    def to_dict(self) -> dict:
        """The embodiment as an embodiment file holds it (load_embodiment_dict(to_dict()) gives it back)."""
        return {
            "format": EMBODIMENT_FORMAT, "name": self.name, "tag": self.tag, "robot_type": self.robot_type,
            "fps": self.fps, "state_key": self.state_key, "action_key": self.action_key,
            "state_dim": self.state_dim, "state_names": list(self.state_names),
            "action_dim": self.action_dim, "action_names": list(self.action_names),
            "state_name_aliases": [list(a) for a in self.state_name_aliases],
            "action_name_aliases": [list(a) for a in self.action_name_aliases],
            "state_gripper_dims": [int(i) for i in np.flatnonzero(self.gripper_dims())],
            "action_gripper_dims": [int(i) for i in np.flatnonzero(self.gripper_dims(self.action_names))],
            "normalize_gripper": self.normalize_gripper, "delta_action_dims": list(self.delta_action_dims),
            "camera_keys": list(self.camera_keys), "fixed_camera_order": self.fixed_camera_order,
            "require_camera_keys": self.require_camera_keys,
            "setup_type": self.setup_type, "control_mode": self.control_mode,
            "action_horizon": self.action_horizon,
            "real_image_hw": list(self.real_image_hw), "fixture_image_hw": list(self.fixture_image_hw),
            "fixture_state_low": list(self.low), "fixture_state_high": list(self.high),
            "fixture_action_low": list(self.action_low), "fixture_action_high": list(self.action_high),
        }


# --- embodiment files --------------------------------------------------------------------------------------------

# field -> (required, what it holds); the order is the order `to_dict` writes and docs/data.md documents.
FIELDS = {
    "format": (True, f'"{EMBODIMENT_FORMAT}"'),
    "name": (True, "short name of the robot (letters, digits, _ . -)"),
    "tag": (True, "MolmoAct2 norm tag: the key of this robot's stats in norm_stats.json"),
    "robot_type": (True, "LeRobot robot_type (may be empty)"),
    "fps": (True, "control frequency in Hz"),
    "state_key": (False, 'LeRobot feature of the state (default "observation.state")'),
    "action_key": (False, 'LeRobot feature of the action (default "action")'),
    "state_dim": (False, "number of state dims (checked against state_names)"),
    "state_names": (True, "per-dim names of the state"),
    "action_dim": (False, "number of action dims (checked against action_names)"),
    "action_names": (False, "per-dim names of the action (default: state_names)"),
    "state_name_aliases": (False, "other state name lists datasets use for the same dims (default [])"),
    "action_name_aliases": (False, "other action name lists datasets use for the same dims (default [])"),
    "state_gripper_dims": (False, 'state dims that are grippers (checked: the dims whose name contains "gripper")'),
    "action_gripper_dims": (False, 'action dims that are grippers (checked like state_gripper_dims)'),
    "normalize_gripper": (True, "true: gripper dims are normalized like the others; false: passed through"),
    "delta_action_dims": (False, "action dims trained as deltas w.r.t. the same state dim (default [])"),
    "camera_keys": (True, "LeRobot camera keys in the order the model sees them"),
    "fixed_camera_order": (True, "true: that order is fixed and recorded; false: random order per episode"),
    "require_camera_keys": (False, "true (default): a dataset must hold these cameras; false: any cameras"),
    "setup_type": (True, "prompt piece: <setup_start>...<setup_end>"),
    "control_mode": (True, "prompt piece: <control_start>...<control_end>"),
    "action_horizon": (True, "action chunk length (= n_action_steps)"),
    "real_image_hw": (True, "[H, W] of the real cameras"),
    "fixture_image_hw": (False, "[H, W] of synthetic fixture frames (default: width 64, real aspect)"),
    "fixture_state_low": (False, "per state dim low end of the synthetic fixture (default -1, gripper 0)"),
    "fixture_state_high": (False, "per state dim high end of the synthetic fixture (default 1)"),
    "fixture_action_low": (False, "per action dim low end (default: the same-named state dim's)"),
    "fixture_action_high": (False, "per action dim high end (default: the same-named state dim's)"),
    "description": (False, "free text"),
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _bad(path, field, message):
    return EmbodimentFileError(path, field, message)


def _str(d, path, field, default=None, *, allow_empty=False) -> str:
    v = d.get(field, default)
    if not isinstance(v, str) or (not allow_empty and not v.strip()):
        raise _bad(path, field, f"expected a {'' if allow_empty else 'non-empty '}string, got {v!r}")
    return v


def _bool(d, path, field, default=None) -> bool:
    v = d.get(field, default)
    if not isinstance(v, bool):
        raise _bad(path, field, f"expected true or false, got {v!r}")
    return v


def _int(d, path, field, lo=1) -> int:
    v = d.get(field)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _bad(path, field, f"expected an integer >= {lo}, got {v!r}")
    return v


def _names(d, path, field, default=None) -> tuple[str, ...]:
    v = d.get(field, default)
    if not isinstance(v, list) or not v or not all(isinstance(n, str) and n for n in v):
        raise _bad(path, field, f"expected a non-empty list of non-empty strings, got {v!r}")
    return tuple(v)


def _numbers(d, path, field, n, default) -> tuple[float, ...]:
    v = d.get(field, default)
    if (not isinstance(v, list) or len(v) != n
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)):
        raise _bad(path, field, f"expected a list of {n} finite numbers (one per dim), got {v!r}")
    return tuple(float(x) for x in v)


def _hw(d, path, field, default=None) -> tuple[int, int]:
    v = d.get(field, default)
    if (not isinstance(v, list) or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)):
        raise _bad(path, field, f"expected [H, W] with positive integers, got {v!r}")
    return int(v[0]), int(v[1])


def _dims(d, path, field, n) -> tuple[int, ...]:
    v = d.get(field, [])
    if (not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v)
            or any(not 0 <= i < n for i in v) or len(set(v)) != len(v)):
        raise _bad(path, field, f"expected distinct dim indices in [0, {n}), got {v!r}")
    return tuple(v)


def default_fixture_hw(real_hw) -> tuple[int, int]:
    """Width 64 at the real aspect ratio, height even and >= 16 (480x640 -> 48x64, 180x320 -> 36x64)."""
    h, w = real_hw
    return max(16, 2 * round(32 * h / w)), 64


def load_embodiment_dict(d, path="<dict>") -> Embodiment:
    """Validate an embodiment file's content; EmbodimentFileError names the file and the first bad field."""
    if not isinstance(d, dict):
        raise _bad(path, None, f"expected a JSON object with the fields {list(FIELDS)}, got {type(d).__name__}")
    unknown = [k for k in d if k not in FIELDS]
    if unknown:
        raise _bad(path, unknown[0], f"unknown field; known fields are {list(FIELDS)}")
    missing = [k for k, (req, _) in FIELDS.items() if req and k not in d]
    if missing:
        raise _bad(path, missing[0], f"missing ({FIELDS[missing[0]][1]})")
    if d["format"] != EMBODIMENT_FORMAT:
        raise _bad(path, "format", f"expected {EMBODIMENT_FORMAT!r}, got {d['format']!r}")
    name = _str(d, path, "name")
    if not _NAME_RE.match(name):
        raise _bad(path, "name", f"{name!r}: use letters, digits, '_', '.' or '-', starting with a letter or digit")
    fps = d["fps"]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not np.isfinite(fps) or fps <= 0:
        raise _bad(path, "fps", f"expected a positive number (Hz), got {fps!r}")
    state_key = _str(d, path, "state_key", "observation.state")
    action_key = _str(d, path, "action_key", "action")
    if state_key == action_key:
        raise _bad(path, "action_key", f"the state and the action are the same feature {state_key!r}")
    state_names = _names(d, path, "state_names")
    action_names = _names(d, path, "action_names", list(state_names))
    for field, names in (("state_dim", state_names), ("action_dim", action_names)):
        if field in d and _int(d, path, field) != len(names):
            raise _bad(path, field, f"{d[field]} but {field.replace('dim', 'names')} lists {len(names)} names")
    normalize_gripper = _bool(d, path, "normalize_gripper")
    aliases = {}
    for role, names in (("state", state_names), ("action", action_names)):
        field = f"{role}_name_aliases"
        v = d.get(field, [])
        if not isinstance(v, list):
            raise _bad(path, field, f"expected a list of name lists, got {v!r}")
        out = []
        for i, alias in enumerate(v):
            alias = _names({field: alias}, path, field)
            if len(alias) != len(names):
                raise _bad(path, f"{field}[{i}]", f"{len(alias)} names but {role}_names has {len(names)}")
            # the gripper pass-through mask is taken from the dataset's own names: an alias that moves a
            # gripper would silently normalize it, or pass a joint through un-normalized
            if not normalize_gripper and ["gripper" in n for n in alias] != ["gripper" in n for n in names]:
                raise _bad(path, f"{field}[{i}]", f"its gripper dims (names containing 'gripper') differ from "
                                                   f"{role}_names', and normalize_gripper is false")
            out.append(alias)
        aliases[role] = tuple(out)
        field = f"{role}_gripper_dims"
        by_name = [i for i, n in enumerate(names) if "gripper" in n]
        if field in d and sorted(_dims(d, path, field, len(names))) != by_name:
            raise _bad(path, field, f"{d[field]} but the dims whose name contains 'gripper' are {by_name}: the "
                                    f"gripper rule goes by name, so name each gripper dim '...gripper...'")
    delta = _dims(d, path, "delta_action_dims", min(len(state_names), len(action_names)))
    keys = _names(d, path, "camera_keys")
    if len(set(keys)) != len(keys):
        raise _bad(path, "camera_keys", f"lists a camera twice: {list(keys)}")
    cameras = tuple(k[len(IMAGE_KEY_PREFIX):] if k.startswith(IMAGE_KEY_PREFIX) else k for k in keys)
    bad_key = next((k for k, c in zip(keys, cameras) if not c or (c == k and not k.startswith("observation."))),
                   None)
    if bad_key is not None:
        raise _bad(path, "camera_keys", f"{bad_key!r} is not a LeRobot camera key (observation.images.<name>)")
    real_hw = _hw(d, path, "real_image_hw")
    fixture_hw = _hw(d, path, "fixture_image_hw", list(default_fixture_hw(real_hw)))
    grip = [("gripper" in n) for n in state_names]
    low = _numbers(d, path, "fixture_state_low", len(state_names), [0.0 if g else -1.0 for g in grip])
    high = _numbers(d, path, "fixture_state_high", len(state_names), [1.0] * len(state_names))
    bad = next((i for i in range(len(low)) if not low[i] < high[i]), None)
    if bad is not None:
        raise _bad(path, "fixture_state_high", f"dim {bad} ({state_names[bad]}): high {high[bad]} is not above "
                                               f"low {low[bad]}")
    emb = Embodiment(
        name=name, tag=_str(d, path, "tag"), robot_type=_str(d, path, "robot_type", allow_empty=True),
        fps=int(fps) if float(fps).is_integer() else float(fps), state_names=state_names, cameras=cameras,
        real_image_hw=real_hw, fixture_image_hw=fixture_hw, low=low, high=high,
        setup_type=_str(d, path, "setup_type"), control_mode=_str(d, path, "control_mode"),
        normalize_gripper=normalize_gripper, action_horizon=_int(d, path, "action_horizon"),
        fixed_camera_order=_bool(d, path, "fixed_camera_order"), delta_action_dims=delta,
        action_names=action_names, state_key=state_key, action_key=action_key,
        state_name_aliases=aliases["state"], action_name_aliases=aliases["action"],
        require_camera_keys=_bool(d, path, "require_camera_keys", True), source=str(path))
    a_low = _numbers(d, path, "fixture_action_low", emb.action_dim, list(emb.action_low))
    a_high = _numbers(d, path, "fixture_action_high", emb.action_dim, list(emb.action_high))
    bad = next((i for i in range(len(a_low)) if not a_low[i] < a_high[i]), None)
    if bad is not None:
        raise _bad(path, "fixture_action_high", f"dim {bad} ({action_names[bad]}): high {a_high[bad]} is not "
                                                f"above low {a_low[bad]}")
    return dataclasses.replace(emb, action_low=a_low, action_high=a_high)


def load_embodiment_file(path) -> Embodiment:
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise EmbodimentFileError(path, None, f"does not exist; {_FROM_HINT}") from None
    return _load_cached(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=64)
def _load_cached(path: str, mtime_ns: int, size: int) -> Embodiment:
    """Parsed once per file version: the converter asks for the embodiment once per shard."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise EmbodimentFileError(path, None, f"unreadable: {e}") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # lazy: optional dependency (pyyaml), needed only for a .yaml file
        except ImportError:
            raise EmbodimentFileError(path, None, "YAML needs pyyaml (pip install pyyaml); or write the file as "
                                                  "JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise EmbodimentFileError(path, None, f"not valid YAML: {' '.join(str(e).split())}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise EmbodimentFileError(path, None, f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") \
                from None
    # source: the absolute path, so the same file given as robot.json or ./robot.json is one definition
    return dataclasses.replace(load_embodiment_dict(data, path), source=str(Path(path).resolve()))


def dumps_embodiment(d: dict) -> str:
    """An embodiment file's text: one field per line, lists on their line (readable and diff-friendly)."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


def _load_builtins() -> dict[str, Embodiment]:
    out = {}
    for n in _builtin_names():
        emb = load_embodiment_file(BUILTIN_DIR / f"{n}.json")
        if emb.name != n:
            raise EmbodimentFileError(emb.source, "name", f"{emb.name!r} must equal the file name {n!r}")
        # source "": a built-in, named by its name alone (and the same wherever the package is installed)
        out[n] = dataclasses.replace(emb, source="")
    return out


EMBODIMENTS: dict[str, Embodiment] = _load_builtins()

# Old SO100 generation (lerobot <= 0.1, v2.x): `main_` prefix, degrees, cameras laptop/phone. A fixture variant of
# so100 (its names are an alias in so100.json); the ranges are the old convention's degrees.
_OLD_NAMES = tuple(f"main_{j}" for j in SO100_JOINTS)
SO100_OLD = dataclasses.replace(
    EMBODIMENTS["so100"], robot_type="so100", state_names=_OLD_NAMES, action_names=_OLD_NAMES,
    cameras=("laptop", "phone"), low=(-90.0, 0.0, 0.0, -90.0, -90.0, 0.0), high=(90.0, 180.0, 180.0, 90.0, 90.0, 100.0),
    action_low=(-90.0, 0.0, 0.0, -90.0, -90.0, 0.0), action_high=(90.0, 180.0, 180.0, 90.0, 90.0, 100.0))


def get_embodiment(spec) -> Embodiment:
    """A built-in name (droid, libero, metaworld, so100, yam), a path to an embodiment file, or an Embodiment."""
    if isinstance(spec, Embodiment):
        return spec
    text = str(spec)
    if text in EMBODIMENTS:
        return EMBODIMENTS[text]
    if text.endswith((".json", ".yaml", ".yml")) or Path(text).is_file():
        return load_embodiment_file(text)
    raise ValueError(f"unknown embodiment {text!r}: give a built-in name ({', '.join(sorted(EMBODIMENTS))}) or the "
                     f"path of an embodiment .json file ({_FROM_HINT})")


def canonical_state_names(names) -> list[str]:
    """MolmoAct2 stats rule: strip main_/left_/right_ only if that yields exactly the 6 SO100 joints."""
    names = list(names)
    for prefix in ("main_", "left_", "right_"):
        stripped = [n[len(prefix):] if n.startswith(prefix) else n for n in names]
        if tuple(stripped) == SO100_JOINTS:
            return stripped
    return names


# --- datasets against an embodiment ------------------------------------------------------------------------------

def _flatten(names):
    if names is None:
        return None
    if isinstance(names, dict):
        return [n for v in names.values() for n in (v if isinstance(v, list) else [v])]
    return list(names)


def _width(feature) -> int:
    return int(np.prod(feature.get("shape") or [1]))


def _check_names(emb: Embodiment, role: str, key: str, feature: dict, where) -> list[str]:
    """The dataset's per-dim names of `key` (the embodiment's when the dataset has none), refused unless they are
    the declared names or one of the declared aliases."""
    want = emb.state_names if role == "state" else emb.action_names
    aliases = emb.state_name_aliases if role == "state" else emb.action_name_aliases
    width = _width(feature)
    if width != len(want):
        raise EmbodimentMismatchError(
            f"{key} has {width} dims but embodiment {emb.label} expects {len(want)} ({', '.join(want)}); {_FROM_HINT}",
            path=where, key=key)
    got = _flatten(feature.get("names"))
    if got is None:   # names: null (some third-party writers): the dims match, the embodiment names them
        return list(want)
    got = [str(n) for n in got]
    if len(got) != width:
        raise EmbodimentMismatchError(f"{key} declares shape [{width}] but {len(got)} names", path=where, key=key)
    if tuple(got) == tuple(want) or tuple(got) in aliases:
        return got
    i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
    also = f" (or the alias names {[list(a) for a in aliases]})" if aliases else ""
    raise EmbodimentMismatchError(
        f"{key} names[{i}] is {got[i]!r} but embodiment {emb.label} expects {want[i]!r}{also}: this dataset is not "
        f"that robot; {_FROM_HINT}", path=where, key=key)


def check_dataset_features(emb: Embodiment, features: dict, where) -> tuple[list[str], list[str], list[str]]:
    """(state names, action names, camera keys to convert, in order) of a dataset's meta/info.json `features`, or
    EmbodimentMismatchError naming the first key that is not what the embodiment declares."""
    for role, key in (("state", emb.state_key), ("action", emb.action_key)):
        if key not in features:
            vectors = [k for k, f in features.items() if f.get("dtype") not in ("video", "image", "string")
                       and _width(f) > 1]
            raise EmbodimentMismatchError(
                f"the dataset has no feature {key!r}, the {role} of embodiment {emb.label} (its vector features are "
                f"{vectors}); set {role}_key in an embodiment file, or {_FROM_HINT}", path=where, key=key)
    state_names = _check_names(emb, "state", emb.state_key, features[emb.state_key], where)
    action_names = _check_names(emb, "action", emb.action_key, features[emb.action_key], where)
    cams = [k for k, f in features.items() if f.get("dtype") in ("video", "image")]
    if not emb.require_camera_keys:
        return state_names, action_names, cams
    missing = [k for k in emb.camera_keys if k not in cams]
    if missing:
        raise EmbodimentMismatchError(
            f"the dataset has no camera {missing[0]!r}; embodiment {emb.label} expects the cameras "
            f"{list(emb.camera_keys)} and the dataset has {cams}; {_FROM_HINT}", path=where, key=missing[0])
    return state_names, action_names, list(emb.camera_keys)


# --- a starting file from a dataset ------------------------------------------------------------------------------

def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s or "robot"


def embodiment_from_info(info: dict, folder_name: str, stats: dict | None = None, *, state_key="observation.state",
                         action_key="action", where="meta/info.json") -> tuple[dict, list[str]]:
    """A starting embodiment file (as a dict) from a LeRobot dataset's meta/info.json (and its stats, for the fixture
    ranges and the gripper rule), plus the notes on what the user must review. Raises DataError when the dataset
    lacks what a file needs."""
    feats = info.get("features")
    if not isinstance(feats, dict):
        raise DataError("no 'features' in info.json", path=where, key="features")
    names, notes = {}, []
    for role, key in (("state", state_key), ("action", action_key)):
        f = feats.get(key)
        if f is None:
            vectors = [k for k, v in feats.items() if v.get("dtype") not in ("video", "image", "string")
                       and _width(v) > 1]
            raise DataError(f"no feature {key!r} for the {role} (vector features: {vectors}); pick one with "
                            f"--{role}-key", path=where, key=key)
        got = _flatten(f.get("names"))
        if got is None:
            got = [f"{role}_{i}" for i in range(_width(f))]
            notes.append(f"{key} has no per-dim names: {role}_names were written as {got[0]}..{got[-1]}; rename "
                         f"them (a gripper dim's name must contain 'gripper')")
        elif len(got) != _width(f):
            raise DataError(f"declares shape {f.get('shape')} but {len(got)} names", path=where, key=key)
        names[role] = [str(n) for n in got]
    cams = [k for k, f in feats.items() if f.get("dtype") in ("video", "image")]
    if not cams:
        raise DataError("the dataset has no camera (no video or image feature)", path=where, key="features")
    f0 = feats[cams[0]]
    vinfo = f0.get("info") or f0.get("video_info") or {}
    if "video.height" in vinfo:
        hw = [int(vinfo["video.height"]), int(vinfo["video.width"])]
    else:
        shape, fnames = list(f0.get("shape") or [0, 0, 0]), f0.get("names") or []
        chw = len(fnames) == 3 and str(fnames[0]).startswith("channel")
        hw = [int(shape[1]), int(shape[2])] if chw else [int(shape[0]), int(shape[1])]
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0:
        raise DataError(f"fps {fps!r} is not a positive number", path=where, key="fps")
    robot_type = str(info.get("robot_type") or "")
    slug = _slug(robot_type or folder_name)
    grip = {r: [i for i, n in enumerate(names[r]) if "gripper" in n] for r in ("state", "action")}
    d = {"format": EMBODIMENT_FORMAT, "name": slug, "tag": slug, "robot_type": robot_type,
         "fps": int(fps) if float(fps).is_integer() else float(fps), "state_key": state_key, "action_key": action_key,
         "state_dim": len(names["state"]), "state_names": names["state"],
         "action_dim": len(names["action"]), "action_names": names["action"],
         "state_gripper_dims": grip["state"], "action_gripper_dims": grip["action"]}
    # MolmoAct2 passes grippers through un-normalized unless a tag says otherwise; a gripper recorded outside [-1, 1]
    # (SO100's 0..100) cannot pass through, so the dataset's own stats decide
    out_of_range = []
    ranges = {}
    for role, key in (("state", state_key), ("action", action_key)):
        s = (stats or {}).get(key) or {}
        lo, hi = s.get("min"), s.get("max")
        ok = isinstance(lo, list) and isinstance(hi, list) and len(lo) == len(hi) == len(names[role])
        if ok:
            lo, hi = np.asarray(lo, float).reshape(-1), np.asarray(hi, float).reshape(-1)
            ok = bool(np.isfinite(lo).all() and np.isfinite(hi).all())
        if ok:
            hi = np.where(hi > lo, hi, lo + 1.0)   # a constant dim still needs a range for the fixture simulator
            ranges[role] = ([round(float(x), 6) for x in lo], [round(float(x), 6) for x in hi])
            out_of_range += [names[role][i] for i in grip[role] if lo[i] < -1.0 or hi[i] > 1.0]
    d["normalize_gripper"] = bool(out_of_range)
    d["delta_action_dims"] = []
    d.update(camera_keys=cams, fixed_camera_order=True, require_camera_keys=True,
             setup_type=f"single {robot_type or folder_name} robotic arm",
             control_mode="absolute joint pose",
             # MolmoAct2's tags predict one second of actions (DROID 15 @ 15 Hz, YAM/SO 30 @ 30 Hz, LIBERO 10 @ 10 Hz);
             # the released action expert holds at most 30 steps
             action_horizon=max(1, min(30, int(round(float(fps))))),
             real_image_hw=hw, fixture_image_hw=list(default_fixture_hw(hw)))
    for role in ("state", "action"):
        if role in ranges:
            d[f"fixture_{role}_low"], d[f"fixture_{role}_high"] = ranges[role]
    notes.append(f"review tag {slug!r} (the norm_stats.json key: datasets of one robot share it), setup_type and "
                 f"control_mode (prompt text), action_horizon ({d['action_horizon']}), normalize_gripper "
                 f"({d['normalize_gripper']}{': ' + ', '.join(out_of_range) + ' outside [-1, 1]' if out_of_range else ''})"
                 f" and fixed_camera_order")
    return d, notes
