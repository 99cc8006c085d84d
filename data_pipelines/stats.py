"""norm_stats.json (format molmoact2_norm_stats.v1) from converted shards, or
straight from raw LeRobot / RLDS datasets without decoding video (`compute_source_norm_stats`).

Per shard directory ("repo") the stats are exact: numpy linear quantiles over every frame's
state and action. Directories sharing a tag are merged as MolmoAct2 does: elementwise min/max,
count-weighted mean, pooled std, count-weighted average of quantiles (an approximation).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_pipelines.embodiments import canonical_state_names, get_embodiment
from data_pipelines.errors import DataError
from data_pipelines.norm_stats import NORM_MODES, NORM_STATS_FILE, NORM_STATS_FORMAT, gripper_mask
from data_pipelines.shards import check_shard, check_writable, load_index, sidecar_path, tag_metadata
from data_pipelines.sources import open_source
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
    index, state, action, _ = load_shard_episodes(shard_dir)
    return index, state, action


def load_shard_episodes(shard_dir) -> tuple[dict, np.ndarray, np.ndarray, list[int]]:
    """(index, states [N, D], actions [N, D], episode lengths) of a converted shard directory. Every shard file is
    checked first (opened, its record count compared with index.json: cheap), so a truncated shard is named here
    rather than in the middle of a training run."""
    index = load_index(shard_dir)
    states, actions, lengths = [], [], []
    for s in index["shards"]:
        check_shard(shard_dir, s)
        path = sidecar_path(shard_dir, s["file"], ".npz")
        if not path.exists():
            raise DataError("shard stats sidecar missing (conversion unfinished?)", path=path)
        with np.load(path) as z:
            states.append(z["state"])
            actions.append(z["action"])
        lengths += [int(e["num_frames"]) for e in json.loads(sidecar_path(shard_dir, s["file"]).read_text())
                    ["episodes"]]
    state, action = np.concatenate(states), np.concatenate(actions)
    if len(state) == 0:
        raise DataError("no frames in shard directory", path=shard_dir)
    for name, arr in (("state", state), ("action", action)):
        if not np.isfinite(arr).all():
            raise DataError("NaN/inf in converted data", path=shard_dir, key=name)
    if sum(lengths) != len(state):
        raise DataError(f"episode lengths sum to {sum(lengths)} but the sidecars hold {len(state)} frames",
                        path=shard_dir)
    return index, state, action, lengths


def delta_chunk_actions(state, action, lengths, horizon: int, dims) -> np.ndarray:
    """Every (frame t, offset k < horizon, t + k inside the episode) value a[t+k, d] - s[t, d] for the delta dims
    `dims`: the training targets of those dims before normalization. [M, len(dims)] float64."""
    out, start = [], 0
    dims = np.asarray(dims, int)
    for n in lengths:
        s, a = state[start:start + n, dims].astype(np.float64), action[start:start + n, dims].astype(np.float64)
        for k in range(min(horizon, n)):
            out.append(a[k:] - s[:n - k])
        start += n
    return np.concatenate(out)


def _action_stats(repo, meta) -> dict:
    """Per-repo action stats; delta dims (tag metadata `delta_action_dims`) over the delta chunk targets."""
    st = array_stats(repo[3])
    dims = meta.get("delta_action_dims") or []
    if dims:
        delta = array_stats(delta_chunk_actions(repo[2], repo[3], repo[4], int(meta["action_horizon"]), dims))
        for k, v in delta.items():
            if k != "count":
                for j, d in enumerate(dims):
                    st[k][d] = v[j]
    return st


def tag_entries(repos: list, norm_mode: str) -> dict:
    """repos: (path, {tag, tag_metadata, state_names, source}, state [N, D], action [N, D], episode lengths) per
    directory or source -> the metadata_by_tag section (exact stats per repo, merged per tag)."""
    if norm_mode not in NORM_MODES:
        raise ValueError(f"norm_mode must be one of {NORM_MODES}, got {norm_mode!r}")
    by_tag: dict[str, list] = {}
    for repo in repos:
        by_tag.setdefault(repo[1]["tag"], []).append(repo)
    metadata = {}
    for tag, repos in by_tag.items():
        names = canonical_state_names(repos[0][1]["state_names"])
        variants = []
        for d, index, *_ in repos[1:]:
            other = canonical_state_names(index["state_names"])
            if len(other) != len(names):
                raise DataError(f"{len(other)} state dims but the other directories of tag {tag} have "
                                f"{len(names)}", path=d, key="state_names")
            if other != names and other not in variants:
                variants.append(other)  # e.g. SO100 main_* (degrees) vs *.pos names under one tag
        meta = dict(repos[0][1]["tag_metadata"])
        # the action's own names (LIBERO: 7 action dims to the state's 8); an index written before they were recorded
        # holds the state's, which were the action's too
        action_names = canonical_state_names(repos[0][1].get("action_names") or repos[0][1]["state_names"])
        entry = dict(meta)
        for key in ("action_stats", "state_stats"):
            knames = action_names if key == "action_stats" else names
            mask = gripper_mask(knames, meta["normalize_gripper"])
            st = merge_stats([_action_stats(r, meta) if key == "action_stats" else array_stats(r[2])
                              for r in repos])
            st.update(mask=mask, names=knames)
            for i, m in enumerate(mask):
                if not m and not (-1.0 <= st["min"][i] and st["max"][i] <= 1.0) and not (
                    key == "action_stats" and i in (meta.get("delta_action_dims") or ())):
                    raise DataError(f"un-normalized gripper dim {knames[i]} must lie in [-1, 1], found "
                                    f"[{st['min'][i]:.4g}, {st['max'][i]:.4g}]", path=repos[0][0], key=key)
            entry[key] = st
        if variants:
            entry["name_variants"] = variants
        entry["repos"] = [{"path": str(r[0]), "source": r[1]["source"], "count": int(len(r[2]))} for r in repos]
        metadata[tag] = entry
    return {"format": NORM_STATS_FORMAT, "norm_mode": norm_mode, "quantile_method": QUANTILE_METHOD,
            "metadata_by_tag": metadata}


def compute_norm_stats(shard_dirs, norm_mode: str = "q01_q99") -> dict:
    """norm_stats.json of converted shard directories (one repo each)."""
    repos = []
    for d in shard_dirs:
        index, state, action, lengths = load_shard_episodes(d)
        repos.append((Path(d), index, state, action, lengths))
    return tag_entries(repos, norm_mode)


def source_arrays(spec: str, embodiment: str, on_error: str = "raise", tolerance_s: float = 1e-4):
    """(states, actions, skipped) of every episode of a `lerobot:PATH` / `rlds:PATH` source, read from the numeric
    columns alone (parquet / TFRecord features: no video or image is decoded), in the converter's episode order."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    emb = get_embodiment(embodiment)
    src = open_source(spec, emb, tolerance_s)
    states, actions, lengths, skipped = [], [], [], []
    for ids in src.groups(episodes_per_shard=50):
        for ep_id, got in src.load_numeric(ids):
            if isinstance(got, Exception):
                if on_error == "raise" or not isinstance(got, DataError):
                    raise got
                skipped.append({"episode": str(ep_id), "error": str(got), "type": type(got).__name__})
                continue
            states.append(got[0])
            actions.append(got[1])
            lengths.append(len(got[0]))
    if not states:
        raise DataError("no readable episodes", path=spec)
    return src, np.concatenate(states), np.concatenate(actions), lengths, skipped


def compute_source_norm_stats(sources, embodiment: str, norm_mode: str = "q01_q99", horizon: int | None = None,
                              on_error: str = "raise", delta_action_dims=None) -> dict:
    """norm_stats.json straight from raw datasets (`lerobot:PATH` / `rlds:PATH`, one repo each), without
    converting or decoding video: the same numbers `molmoact2-data convert` + `stats` give for the same episodes
    (an episode whose video cannot be decoded is kept here but skipped by a conversion with --on-error skip)."""
    emb = get_embodiment(embodiment)
    repos = []
    for spec in sources:
        src, state, action, lengths, _ = source_arrays(spec, embodiment, on_error)
        tag_meta = tag_metadata(emb, horizon, delta_action_dims, src.camera_keys)
        for name, arr in (("state", state), ("action", action)):
            if not np.isfinite(arr).all():
                raise DataError("NaN/inf in source data", path=spec, key=name)
        info = {"tag": emb.tag, "tag_metadata": tag_meta, "state_names": src.state_names,
                "action_names": src.action_names, "source": spec}
        repos.append((src.path, info, state, action, lengths))
    return tag_entries(repos, norm_mode)


def write_norm_stats(shard_dirs, out=None, norm_mode: str = "q01_q99", embodiment: str | None = None,
                     horizon: int | None = None, on_error: str = "raise", delta_action_dims=None) -> dict:
    """`shard_dirs`: converted shard directories, or raw `lerobot:PATH` / `rlds:PATH` sources (then `embodiment`
    names their embodiment and `horizon` the chunk length the tag metadata records)."""
    specs = [str(d) for d in shard_dirs]
    raw = _raw_sources(specs)
    if any(raw) and not all(raw):
        raise ValueError("give either converted shard directories or lerobot:/rlds: sources, not both")
    out = norm_stats_out(specs, out)
    check_writable(Path(out).parent, "--out", out)   # a read-only destination fails before the work
    if all(raw):
        if not embodiment:
            raise ValueError("stats of lerobot:/rlds: sources need --embodiment")
        stats = compute_source_norm_stats(specs, embodiment, norm_mode, horizon, on_error, delta_action_dims)
    else:
        stats = compute_norm_stats(shard_dirs, norm_mode)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")   # never half a file where training looks
    tmp.write_text(json.dumps(stats, indent=2))
    tmp.replace(out)
    return stats


def _raw_sources(specs) -> list[bool]:
    return [d.split(":", 1)[0] in ("lerobot", "rlds") and not Path(d).exists() for d in specs]


def norm_stats_out(shard_dirs, out=None) -> Path:
    """Where `stats` writes: `out`, else SHARD_DIR/norm_stats.json of the first shard directory (where the training
    recipes look); raw lerobot:/rlds: sources have no such folder, so they need `out`."""
    if out:
        return Path(out)
    specs = [str(d) for d in shard_dirs]
    if any(_raw_sources(specs)):
        raise ValueError("--out is required with lerobot:/rlds: sources (the default, SHARD_DIR/norm_stats.json, "
                         "is for converted shard folders)")
    return Path(specs[0]) / NORM_STATS_FILE
