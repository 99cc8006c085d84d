"""Depth-code companion data for MolmoAct2-Think training: per frame, `depth_buffer_codes` (the 100 VQ-VAE codes
of the first camera's depth map, row-major 10x10) and `depth_updated_mask` (100 bools: the cells that changed
since the previous frame of the episode, by the Think change detector; all True on an episode's first frame).
`molmoact2-depth-codes` (molmoact2_jax/cli/depth_codes.py) is its command line.

Sources: a folder of depth maps (`codes_for_npy_dir`; the change mask is computed on the depth maps themselves,
scaled to 0-255), a LeRobot dataset whose camera frames go through a depth estimator (`codes_for_lerobot`; the
mask on the RGB frames, as at inference), or a `molmoact2-sim record --depth` recording (`codes_for_sim`: MuJoCo's
exact metric depth of the first camera, the mask on that camera's RGB frames).

A depth estimator is a function rgb HxWx3 uint8 -> depth HxW float. The real one is Depth Anything V2, which cannot
be downloaded here; `placeholder_depth_estimator` is NOT a depth model: it returns inverted, smoothed luminance so
the tooling can be exercised end to end; do not train on its output.

Output (OUT/): data/episode_XXXXXX.parquet with columns episode_index, frame_index, depth_buffer_codes
(list<int32>[100]), depth_updated_mask (list<bool>[100]) (+ `file` for a folder of depth maps), and meta/info.json.
"""
from __future__ import annotations

import glob
import importlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipelines.formats.lerobot_reader import LeRobotDataset
from molmoact2_jax.depth import cells
from molmoact2_jax.depth import vqvae as vq


def placeholder_depth_estimator(rgb) -> np.ndarray:
    """NOT a depth model (see module doc): inverted luminance, box-smoothed. HxWx3 uint8 -> HxW float32."""
    img = np.asarray(rgb, np.float32)
    lum = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    k = max(1, min(lum.shape) // 16)
    pad = np.pad(lum, k, mode="edge")
    c = np.cumsum(np.cumsum(pad, 0), 1)
    c = np.pad(c, ((1, 0), (1, 0)))
    h, w = lum.shape
    s = c[2 * k + 1:2 * k + 1 + h, 2 * k + 1:2 * k + 1 + w] - c[:h, 2 * k + 1:2 * k + 1 + w] \
        - c[2 * k + 1:2 * k + 1 + h, :w] + c[:h, :w]
    return (255.0 - s / (2 * k + 1) ** 2).astype(np.float32)


def load_estimator(spec: str | None):
    if spec in (None, "placeholder"):
        return placeholder_depth_estimator
    mod, _, fn = spec.partition(":")
    if not fn:
        raise ValueError(f"--estimator must be 'placeholder' or 'module:function', got {spec!r}")
    return getattr(importlib.import_module(mod), fn)


def depth_as_image(depth) -> np.ndarray:
    """Depth map -> HxWx3 uint8 (min-max scaled), for the change detector on depth-only input."""
    d = np.asarray(depth, np.float32)
    d = d[..., 0] if d.ndim == 3 else d
    lo, hi = float(np.nanmin(d)), float(np.nanmax(d))
    u = np.zeros(d.shape, np.uint8) if hi - lo < 1e-12 else np.clip((d - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
    return np.repeat(u[..., None], 3, axis=-1)


def updated_masks(frames, threshold: float = cells.CHANGE_THRESHOLD) -> np.ndarray:
    """bool [N, 100]: cells changed vs the previous frame; the first frame is all True."""
    out = np.ones((len(frames), cells.NUM_CELLS), bool)
    for i in range(1, len(frames)):
        out[i] = cells.changed_cells(frames[i], frames[i - 1], threshold)
    return out


def _write_episode(out_dir: str, ep: int, codes: np.ndarray, masks: np.ndarray, files=None) -> str:
    cols = {"episode_index": pa.array(np.full(len(codes), ep, np.int64)),
            "frame_index": pa.array(np.arange(len(codes), dtype=np.int64)),
            "depth_buffer_codes": pa.array([c.tolist() for c in codes.astype(np.int32)], pa.list_(pa.int32())),
            "depth_updated_mask": pa.array([m.tolist() for m in masks.astype(bool)], pa.list_(pa.bool_()))}
    if files is not None:
        cols["file"] = pa.array([os.path.basename(f) for f in files])
    path = os.path.join(out_dir, "data", f"episode_{ep:06d}.parquet")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return path


def _write_info(out_dir: str, source: str, episodes: int, frames: int, estimator: str | None):
    os.makedirs(os.path.join(out_dir, "meta"), exist_ok=True)
    info = {"source": source, "total_episodes": episodes, "total_frames": frames, "estimator": estimator,
            "features": {"depth_buffer_codes": {"dtype": "int32", "shape": [cells.NUM_CELLS]},
                         "depth_updated_mask": {"dtype": "bool", "shape": [cells.NUM_CELLS]}}}
    with open(os.path.join(out_dir, "meta", "info.json"), "w") as f:
        json.dump(info, f, indent=2)


def codes_for_npy_dir(in_dir: str, out_dir: str, params, cfg: vq.VQVAEConfig) -> dict:
    files = sorted(glob.glob(os.path.join(in_dir, "*.npy")))
    if not files:
        raise FileNotFoundError(f"{in_dir}: no .npy depth maps")
    depths = [np.load(f, allow_pickle=False) for f in files]
    codes = vq.encode_depth(params, depths, cfg)
    masks = updated_masks([depth_as_image(d) for d in depths])
    _write_episode(out_dir, 0, codes, masks, files)
    _write_info(out_dir, os.path.abspath(in_dir), 1, len(files), None)
    return {"episodes": 1, "frames": len(files)}


def codes_for_lerobot(root: str, out_dir: str, params, cfg: vq.VQVAEConfig, camera: str | None = None,
                      estimator=placeholder_depth_estimator, estimator_name: str = "placeholder",
                      episodes=None) -> dict:
    ds = LeRobotDataset(root)
    if not ds.camera_keys:
        raise ValueError(f"{root}: the dataset has no cameras")
    camera = camera or ds.camera_keys[0]
    if camera not in ds.camera_keys:
        raise ValueError(f"{root}: no camera {camera!r}; cameras are {ds.camera_keys}")
    eps = range(len(ds.episodes)) if episodes is None else episodes
    total = 0
    for ep in eps:
        frames = ds.episode_video(ep, camera)
        depths = [estimator(f) for f in frames]
        codes = vq.encode_depth(params, depths, cfg)
        _write_episode(out_dir, ep, codes, updated_masks(list(frames)))
        total += len(frames)
    _write_info(out_dir, os.path.abspath(root), len(eps), total, estimator_name)
    return {"episodes": len(eps), "frames": total, "camera": camera}


def sim_depth_maps(root: str):
    """A `molmoact2-sim record --depth` recording -> (LeRobotDataset, first camera's LeRobot key, depth loader):
    load(ep) gives the episode's metric depth float32 [T, H, W]."""
    info_path = os.path.join(root, "meta", "sim_recording.json")
    if not os.path.exists(info_path):
        raise FileNotFoundError(f"{root}: no meta/sim_recording.json (not a molmoact2-sim recording)")
    with open(info_path) as f:
        depth = json.load(f).get("depth")
    if not depth:
        raise ValueError(f"{info_path}: recorded without depth; re-record with molmoact2-sim record --depth")
    ds = LeRobotDataset(root)
    key = next((k for k in ds.camera_keys if k.rsplit(".", 1)[-1] == depth["camera"]), None)
    if key is None:
        raise ValueError(f"{root}: depth camera {depth['camera']!r} is not among the dataset cameras {ds.camera_keys}")

    def load(ep: int) -> np.ndarray:
        path = os.path.join(root, depth["dir"], f"episode_{ep:06d}.npy")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: missing depth of episode {ep}")
        d = np.load(path, allow_pickle=False).astype(np.float32)
        if len(d) != ds.episodes[ep].length:
            raise ValueError(f"{path}: {len(d)} depth frames, episode {ep} has {ds.episodes[ep].length}")
        return d

    return ds, key, load


def sim_training_maps(root: str, max_maps: int = 2000, seed: int = 0) -> list[np.ndarray]:
    """Up to `max_maps` depth maps spread over a sim recording's episodes (VQ-VAE training data)."""
    ds, _, load = sim_depth_maps(root)
    maps = [m for ep in range(len(ds.episodes)) for m in load(ep)]
    if len(maps) > max_maps:
        pick = np.sort(np.random.default_rng(seed).choice(len(maps), max_maps, replace=False))
        maps = [maps[i] for i in pick]
    return maps


def codes_for_sim(root: str, out_dir: str, params, cfg: vq.VQVAEConfig) -> dict:
    ds, key, load = sim_depth_maps(root)
    total = 0
    for ep in range(len(ds.episodes)):
        codes = vq.encode_depth(params, list(load(ep)), cfg)
        _write_episode(out_dir, ep, codes, updated_masks(list(ds.episode_video(ep, key))))
        total += len(codes)
    _write_info(out_dir, os.path.abspath(root), len(ds.episodes), total, "mujoco depth buffer (exact)")
    return {"episodes": len(ds.episodes), "frames": total, "camera": key}


def vqvae_training_maps(*, npy_dir: str | None = None, lerobot: str | None = None, sim_depth: str | None = None,
                        camera: str | None = None, estimator: str | None = None) -> list[np.ndarray]:
    """Depth maps to fit the VQ-VAE on, from the one source given: every map of a folder, the first episode of a
    LeRobot dataset through `estimator` (`module:function` or 'placeholder'), or maps spread over a sim recording."""
    if npy_dir:
        return [np.load(f, allow_pickle=False) for f in sorted(glob.glob(os.path.join(npy_dir, "*.npy")))]
    if sim_depth:
        return sim_training_maps(sim_depth)
    ds = LeRobotDataset(lerobot)
    est = load_estimator(estimator)
    return [est(f) for f in ds.episode_video(0, camera or ds.camera_keys[0])]
