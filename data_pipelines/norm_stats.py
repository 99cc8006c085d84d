"""norm_stats.json, typed: schema, loading, validation, per-tag info and the gripper pass-through rule
(docs/model_notes.md, "Normalization and state bins").

The one reader of the file. Training (the Grain robot transform), serving (`Policy`), the closed-loop baselines and
the demo all call `NormStats.load`, so a field means the same thing everywhere:

    stats = NormStats.load("norm_stats.json")        # a path, a parsed dict or a JSON string
    tag = stats.tag("franka_droid")                  # TagInfo: FeatureStats for state/action + the tag metadata

Schema (format molmoact2_norm_stats.v1): {"format", "norm_mode", "metadata_by_tag": {tag: {action_stats,
state_stats, action_horizon, n_action_steps, normalize_gripper, camera_keys, setup_type, control_mode, ...}}};
each *_stats holds min, max, mean, std, q01, q99 [, q10, q90], mask, names, count. Every value must be finite,
with q01 <= q99, min <= max, q10 <= q90 and std >= 0: anything else is refused at load (NormStatsError naming the
tag, key, stat and dim), so neither training nor serving ever normalizes with NaN. Pure numpy.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from molmoact2_jax import storage

NORM_STATS_FORMAT = "molmoact2_norm_stats.v1"
NORM_STATS_FILE = "norm_stats.json"
NORM_MODES = ("q01_q99", "mean_std", "min_max", "q10_q90", "none")
REQUIRED_STATS = ("min", "max", "mean", "std", "q01", "q99")


class NormStatsError(ValueError):
    """A norm_stats.json (or dict) that does not follow the schema; the message names the file and the field."""


def gripper_mask(names, normalize_gripper: bool) -> list[bool]:
    """With normalize_gripper=False every dim whose name contains "gripper" passes through
    un-normalized (mask False); all other dims are normalized (mask True)."""
    return [bool(normalize_gripper) or "gripper" not in str(n).lower() for n in names]


RECOMPUTE_HINT = "recompute them with `molmoact2-data stats`"


def _check_values(values: dict, names, where: str) -> None:
    """Refuses stats that would put NaN/inf or a flipped range into (un-)normalization: every value finite,
    q01 <= q99, min <= max, q10 <= q90, std >= 0. Done at load, so training and serving both stop here instead of
    training on `loss nan` or serving NaN actions. The message names the tag, the key, the stat and the dim."""
    def dim(i):
        return f"[{i}]" + (f" ({names[i]})" if names else "")

    for k, v in values.items():
        if v is None:
            continue
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            i = int(bad[0])
            more = f" and {bad.size - 1} more dim(s)" if bad.size > 1 else ""
            raise NormStatsError(f"{where}.{k}{dim(i)} is {v[i]}{more}: norm stats must be finite; {RECOMPUTE_HINT} "
                                 f"(a NaN there usually means NaN/inf values in that key of the source data)")
    for lo, hi in (("q01", "q99"), ("min", "max"), ("q10", "q90")):
        a, b = values[lo], values[hi]
        if a is None or b is None:
            continue
        bad = np.flatnonzero(a > b)
        if bad.size:
            i = int(bad[0])
            raise NormStatsError(f"{where}.{lo}{dim(i)} = {a[i]:g} > {hi}{dim(i)} = {b[i]:g}: the range is "
                                 f"flipped; {RECOMPUTE_HINT}")
    bad = np.flatnonzero(values["std"] < 0)
    if bad.size:
        i = int(bad[0])
        raise NormStatsError(f"{where}.std{dim(i)} = {values['std'][i]:g} is negative; {RECOMPUTE_HINT}")


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """One feature's stats as stored under action_stats / state_stats."""
    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray            # False: pass through un-normalized (gripper with normalize_gripper=False)
    names: tuple[str, ...] = ()
    q10: np.ndarray | None = None
    q90: np.ndarray | None = None

    @classmethod
    def from_json(cls, d: dict, where: str = "stats", normalize_gripper: bool = True) -> "FeatureStats":
        """`d` without a `mask` field gets the gripper rule over its `names` (no names: every dim normalized);
        `normalize_gripper` is the tag's flag (the schema's default for a tag is False, see TagInfo)."""
        if not isinstance(d, dict):
            raise NormStatsError(f"{where}: expected an object with {list(REQUIRED_STATS)}, got "
                                 f"{type(d).__name__}")
        missing = [k for k in REQUIRED_STATS if d.get(k) is None]
        if missing:
            raise NormStatsError(f"{where}: missing {missing} (quantile stats are required for q01_q99)")

        def arr(k):
            if d.get(k) is None:
                return None
            try:
                return np.asarray(d[k], np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise NormStatsError(f"{where}.{k}: expected a list of numbers") from None

        dim = len(arr("min"))
        names = tuple(str(n) for n in (d.get("names") or ()))
        if names and len(names) != dim:
            raise NormStatsError(f"{where}.names has {len(names)} entries, {where}.min has {dim}")
        if "mask" in d:
            mask = np.asarray(d["mask"], bool).reshape(-1)
        else:
            mask = np.asarray(gripper_mask(names, normalize_gripper) if names else [True] * dim, bool)
        for k in ("max", "mean", "std", "q01", "q99", "q10", "q90"):
            if arr(k) is not None and len(arr(k)) != dim:
                raise NormStatsError(f"{where}.{k} has {len(arr(k))} values, {where}.min has {dim}")
        if len(mask) != dim:
            raise NormStatsError(f"{where}.mask has {len(mask)} values, {where}.min has {dim}")
        values = {k: arr(k) for k in ("min", "max", "mean", "std", "q01", "q99", "q10", "q90")}
        _check_values(values, names, where)
        return cls(values["min"], values["max"], values["mean"], values["std"], values["q01"], values["q99"], mask,
                   names, values["q10"], values["q90"])

    @property
    def dim(self) -> int:
        return len(self.min)

    @property
    def zero_mask(self) -> np.ndarray:
        """Dims that never vary (min == max) normalize to 0."""
        return self.min == self.max

    def bounds(self, mode: str) -> tuple[np.ndarray, np.ndarray]:
        if mode == "q01_q99":
            return self.q01, self.q99
        if mode == "min_max":
            return self.min, self.max
        if mode == "q10_q90":
            if self.q10 is None or self.q90 is None:
                raise NormStatsError("norm_mode q10_q90 needs q10/q90 in the stats")
            return self.q10, self.q90
        raise NormStatsError(f"no bounds for norm_mode {mode!r}")


@dataclasses.dataclass(frozen=True)
class TagInfo:
    """One norm tag of norm_stats.json."""
    name: str
    action_stats: FeatureStats
    state_stats: FeatureStats
    norm_mode: str
    horizon: int
    n_action_steps: int
    setup_type: str
    control_mode: str
    camera_keys: tuple          # fixed camera order; empty: any order (per-episode permutation in training)
    normalize_gripper: bool
    metadata: dict              # the tag's raw entry (repos, name_variants, action_key, ...)
    delta_action_dims: tuple = ()   # action dims trained as a[t+k] - s[t] of the same state dim (openpi DeltaActions)

    @property
    def action_dim(self) -> int:   # the length of the stats vector, not metadata.action_dim
        return self.action_stats.dim

    @property
    def state_dim(self) -> int:
        return self.state_stats.dim

    @classmethod
    def from_json(cls, tag: str, meta: dict, norm_mode: str, where: str) -> "TagInfo":
        if not isinstance(meta, dict):
            raise NormStatsError(f"{where}: expected an object, got {type(meta).__name__}")
        for key in ("action_stats", "state_stats", "action_horizon"):
            if key not in meta:
                raise NormStatsError(f"{where}: missing {key!r}")
        mode = meta.get("norm_mode", norm_mode)
        if mode not in NORM_MODES:
            raise NormStatsError(f"{where}: norm_mode {mode!r} not in {NORM_MODES}")
        try:
            horizon = int(meta["action_horizon"])
            n_steps = int(meta.get("n_action_steps") or horizon)
        except (TypeError, ValueError):
            raise NormStatsError(f"{where}: action_horizon / n_action_steps must be integers") from None
        if horizon < 1 or not 1 <= n_steps <= horizon:
            raise NormStatsError(f"{where}: action_horizon={horizon}, n_action_steps={n_steps}: expected "
                                 f"1 <= n_action_steps <= action_horizon")
        grip = bool(meta.get("normalize_gripper", False))
        action_stats = FeatureStats.from_json(meta["action_stats"], where + ".action_stats", grip)
        state_stats = FeatureStats.from_json(meta["state_stats"], where + ".state_stats", grip)
        try:
            delta = tuple(int(d) for d in meta.get("delta_action_dims") or ())
        except (TypeError, ValueError):
            raise NormStatsError(f"{where}.delta_action_dims: expected a list of action dims") from None
        limit = min(action_stats.dim, state_stats.dim)
        if any(not 0 <= d < limit for d in delta) or len(set(delta)) != len(delta):
            raise NormStatsError(f"{where}.delta_action_dims {list(delta)}: expected distinct dims in [0, {limit}) "
                                 f"(each delta is taken w.r.t. the same state dim)")
        return cls(name=tag,
                   action_stats=action_stats, state_stats=state_stats, norm_mode=mode, horizon=horizon, n_action_steps=n_steps,
                   setup_type=str(meta.get("setup_type", "")), control_mode=str(meta.get("control_mode", "")),
                   camera_keys=tuple(meta.get("camera_keys") or ()), normalize_gripper=grip, metadata=dict(meta),
                   delta_action_dims=delta)


@dataclasses.dataclass(frozen=True)
class NormStats:
    """A parsed, validated norm_stats.json."""
    tags: dict[str, TagInfo]
    norm_mode: str
    source: str                 # the file it came from, or "<dict>" / "<json>"
    raw: dict

    @classmethod
    def load(cls, src) -> "NormStats":
        """`src`: a path to norm_stats.json (local or `gs://`), its parsed dict, a JSON string, or a NormStats
        (returned as is)."""
        if isinstance(src, NormStats):
            return src
        where = "norm_stats"
        if isinstance(src, (str, os.PathLike)) and (isinstance(src, os.PathLike) or not str(src).lstrip()
                                                     .startswith("{")):
            path = storage.as_path(src)
            if not path.is_file():
                raise FileNotFoundError(f"norm stats file not found: {path}")
            where = str(path)
            try:
                src = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise NormStatsError(f"{path} is not valid JSON: {e}") from None
        elif isinstance(src, str):
            where = "<json>"
            try:
                src = json.loads(src)
            except json.JSONDecodeError as e:
                raise NormStatsError(f"norm_stats JSON string is not valid JSON: {e}") from None
        if not isinstance(src, dict) or not isinstance(src.get("metadata_by_tag"), dict):
            raise NormStatsError(f"{where}: has no metadata_by_tag; expected {{'format': '{NORM_STATS_FORMAT}', "
                                 f"'norm_mode', 'metadata_by_tag': {{tag: {{...}}}}}}")
        fmt = src.get("format", NORM_STATS_FORMAT)
        if fmt != NORM_STATS_FORMAT:
            raise NormStatsError(f"{where}: format must be {NORM_STATS_FORMAT}, got {fmt!r}")
        mode = src.get("norm_mode", "q01_q99")
        if mode not in NORM_MODES:
            raise NormStatsError(f"{where}: norm_mode {mode!r} not in {NORM_MODES}")
        tags = {tag: TagInfo.from_json(tag, meta, mode, f"{where}: metadata_by_tag[{tag!r}]")
                for tag, meta in src["metadata_by_tag"].items()}
        if not tags:
            raise NormStatsError(f"{where}: metadata_by_tag is empty")
        return cls(tags=tags, norm_mode=mode, source=where if where != "norm_stats" else "<dict>", raw=src)

    def tag(self, name) -> TagInfo:
        if not isinstance(name, str) or name not in self.tags:
            raise NormStatsError(f"unknown norm_tag {name!r}; {self.source} has {sorted(self.tags)}")
        return self.tags[name]

    def select(self, name: str | None = None) -> TagInfo:
        """`name` if given, else the only tag of the file."""
        if name is None and len(self.tags) == 1:
            return next(iter(self.tags.values()))
        if name is None:
            raise NormStatsError(f"{self.source} has several norm tags {sorted(self.tags)}; name one")
        return self.tag(name)


def parse_norm_stats(src) -> dict[str, TagInfo]:
    """{tag: TagInfo} of a norm_stats.json (path, dict or JSON string)."""
    return NormStats.load(src).tags
