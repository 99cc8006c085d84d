"""norm_stats.json (format molmoact2_norm_stats.v1, molmoact2_spec.md section 13) from converted shards.

Per shard directory ("repo") the stats are exact: numpy linear quantiles over every frame's
state and action. Directories sharing a tag are merged as MolmoAct2 does: elementwise min/max,
count-weighted mean, pooled std, count-weighted average of quantiles (an approximation).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_pipelines.convert import load_index, sidecar_path
from data_pipelines.embodiments import canonical_state_names
from data_pipelines.errors import DataError
from data_pipelines.norm_stats import NORM_MODES, NORM_STATS_FORMAT, gripper_mask
QUANTILES = {"q01": 0.01, "q10": 0.10, "q90": 0.90, "q99": 0.99}
QUANTILE_METHOD = ("exact numpy 'linear' quantiles per shard directory; count-weighted mean of per-directory "
                   "quantiles across directories of one tag (MolmoAct2 merge rule)")


def array_stats(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
    for k, q in QUANTILES.items():
        out[k] = np.quantile(x, q, axis=0)
    out = {k: v.tolist() for k, v in out.items()}
    out["count"] = int(len(x))
    return out


def merge_stats(parts: list[dict]) -> dict:
    if len(parts) == 1:
        return dict(parts[0])
    counts = np.array([p["count"] for p in parts], np.float64)
    w = counts / counts.sum()
    get = lambda k: np.array([p[k] for p in parts], np.float64)
    mean = w @ get("mean")
    var = w @ (get("std") ** 2 + (get("mean") - mean) ** 2)
    out = {"min": get("min").min(0), "max": get("max").max(0), "mean": mean, "std": np.sqrt(var)}
    for k in QUANTILES:
        out[k] = w @ get(k)
    out = {k: v.tolist() for k, v in out.items()}
    out["count"] = int(counts.sum())
    return out


def load_shard_arrays(shard_dir) -> tuple[dict, np.ndarray, np.ndarray]:
    index = load_index(shard_dir)
    states, actions = [], []
    for s in index["shards"]:
        path = sidecar_path(shard_dir, s["file"], ".npz")
        if not path.exists():
            raise DataError("shard stats sidecar missing (conversion unfinished?)", path=path)
        with np.load(path) as z:
            states.append(z["state"])
            actions.append(z["action"])
    state, action = np.concatenate(states), np.concatenate(actions)
    if len(state) == 0:
        raise DataError("no frames in shard directory", path=shard_dir)
    for name, arr in (("state", state), ("action", action)):
        if not np.isfinite(arr).all():
            raise DataError("NaN/inf in converted data", path=shard_dir, key=name)
    return index, state, action


def compute_norm_stats(shard_dirs, norm_mode: str = "q01_q99") -> dict:
    if norm_mode not in NORM_MODES:
        raise ValueError(f"norm_mode must be one of {NORM_MODES}, got {norm_mode!r}")
    by_tag: dict[str, list] = {}
    for d in shard_dirs:
        index, state, action = load_shard_arrays(d)
        by_tag.setdefault(index["tag"], []).append((Path(d), index, state, action))
    metadata = {}
    for tag, repos in by_tag.items():
        names = canonical_state_names(repos[0][1]["state_names"])
        variants = []
        for d, index, _, _ in repos[1:]:
            other = canonical_state_names(index["state_names"])
            if len(other) != len(names):
                raise DataError(f"{len(other)} state dims but the other directories of tag {tag} have "
                                f"{len(names)}", path=d, key="state_names")
            if other != names and other not in variants:
                variants.append(other)  # e.g. SO100 main_* (degrees) vs *.pos names under one tag
        meta = dict(repos[0][1]["tag_metadata"])
        mask = gripper_mask(names, meta["normalize_gripper"])
        entry = dict(meta)
        for key, col in (("action_stats", 3), ("state_stats", 2)):
            st = merge_stats([array_stats(r[col]) for r in repos])
            st.update(mask=mask, names=names)
            for i, m in enumerate(mask):
                if not m and not (-1.0 <= st["min"][i] and st["max"][i] <= 1.0):
                    raise DataError(f"un-normalized gripper dim {names[i]} must lie in [-1, 1], found "
                                    f"[{st['min'][i]:.4g}, {st['max'][i]:.4g}]", path=repos[0][0], key=key)
            entry[key] = st
        if variants:
            entry["name_variants"] = variants
        entry["repos"] = [{"path": str(r[0]), "source": r[1]["source"], "count": int(len(r[2]))} for r in repos]
        metadata[tag] = entry
    return {"format": NORM_STATS_FORMAT, "norm_mode": norm_mode, "quantile_method": QUANTILE_METHOD,
            "metadata_by_tag": metadata}


def write_norm_stats(shard_dirs, out, norm_mode: str = "q01_q99") -> dict:
    stats = compute_norm_stats(shard_dirs, norm_mode)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(stats, indent=2))
    return stats
