"""Record bytes -> a fixed-shape robot training example (one Grain map step).

Steps: decode record; pick cameras (fixed order, or a per-episode permutation for SO100-style
tags); decode JPEGs, augment (train only), resize to a square; normalize state and action chunk
with the tag's stats (spec 13); pad the chunk to max_action_horizon x max_action_dim with masks;
discrete state bins; build the prompt string (spec 4.1).
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
from PIL import Image

from data_pipelines.formats.images import decode_image
from data_pipelines.record_codec import decode_record
from data_pipelines.transforms.image_aug import augment_image
from data_pipelines.transforms.normalize import FeatureStats, normalize, pad_last, state_bins
from data_pipelines.transforms.prompt import build_robot_prompt

try:  # bit-exact with the model's resize when the model package is present
    from molmoact2_jax.preprocessing.image import resize_uint8
except ImportError:  # pragma: no cover - data pipelines stay usable on their own
    resize_uint8 = None


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[:2] == (size, size):
        return rgb
    if resize_uint8 is not None:
        return resize_uint8(rgb, size, size)
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


@dataclasses.dataclass(frozen=True)
class RobotTransformConfig:
    image_size: int = 378
    max_cameras: int = 3
    max_action_horizon: int = 30
    max_action_dim: int = 32
    num_state_tokens: int = 256
    state_format: str = "discrete"        # "discrete": state bins in the prompt; "continuous": no state clause
    norm_mode: str = "q01_q99"
    augment: bool = True
    camera_order: str = "auto"            # "auto" (per tag), "fixed", "episode"
    seed: int = 0


class RobotTransform:
    """Callable(record_bytes, rng) -> example dict. Picklable (for Grain worker processes)."""

    def __init__(self, tag: str, tag_id: int, tag_meta: dict, camera_keys: list[str], cfg: RobotTransformConfig):
        self.tag, self.tag_id, self.cfg = tag, tag_id, cfg
        self.meta = tag_meta
        self.camera_keys = list(camera_keys)
        self.horizon = int(tag_meta["action_horizon"])
        if self.horizon > cfg.max_action_horizon:
            raise ValueError(f"tag {tag}: action_horizon {self.horizon} > max_action_horizon {cfg.max_action_horizon}")
        self.action_stats = FeatureStats.from_json(tag_meta["action_stats"], f"{tag}.action_stats")
        self.state_stats = FeatureStats.from_json(tag_meta["state_stats"], f"{tag}.state_stats")
        order = cfg.camera_order
        if order == "auto":
            order = "fixed" if tag_meta.get("camera_keys") else "episode"
        self.per_episode_order = order == "episode"
        if len(self.camera_keys) > cfg.max_cameras:
            self.camera_keys = self.camera_keys[: cfg.max_cameras]

    def cameras_for(self, episode_id: str) -> list[str]:
        if not self.per_episode_order:
            return self.camera_keys
        h = hashlib.blake2b(f"{self.cfg.seed}/{self.tag}/{episode_id}".encode(), digest_size=8).digest()
        perm = np.random.default_rng(int.from_bytes(h, "little")).permutation(len(self.camera_keys))
        return [self.camera_keys[i] for i in perm]

    def __call__(self, data: bytes, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        rec = decode_record(data)
        cams = self.cameras_for(rec["episode_id"])
        S = cfg.image_size
        images = np.zeros((cfg.max_cameras, S, S, 3), np.uint8)
        for j, key in enumerate(cams):
            img = decode_image(rec[f"image/{key}"], episode=rec["episode_id"], key=key)
            if cfg.augment:
                img = augment_image(img, rng)
            images[j] = resize_square(img, S)
        image_mask = np.arange(cfg.max_cameras) < len(cams)

        state_n = normalize(rec["state"], self.state_stats, cfg.norm_mode)
        chunk = rec["actions"][: self.horizon]
        chunk_n = normalize(chunk, self.action_stats, cfg.norm_mode)
        actions = np.zeros((cfg.max_action_horizon, chunk_n.shape[1]), np.float32)
        actions[: self.horizon] = chunk_n
        actions, action_dim_is_pad = pad_last(actions, cfg.max_action_dim)
        action_is_pad = np.ones(cfg.max_action_horizon, bool)
        action_is_pad[: self.horizon] = rec["action_is_pad"][: self.horizon]
        state, state_dim_is_pad = pad_last(state_n, cfg.max_action_dim)

        bins = state_bins(state_n, cfg.num_state_tokens)
        prompt = build_robot_prompt(rec["task"], len(cams), bins if cfg.state_format == "discrete" else None,
                                    self.meta["setup_type"], self.meta["control_mode"])
        padded_bins = np.zeros(cfg.max_action_dim, np.int32)
        padded_bins[: len(bins)] = bins
        return {
            "images": images, "image_mask": image_mask,
            "state": state, "state_dim_is_pad": state_dim_is_pad, "state_bins": padded_bins,
            "actions": actions, "action_is_pad": action_is_pad, "action_dim_is_pad": action_dim_is_pad,
            "prompt": prompt, "tag_id": np.int32(self.tag_id), "action_horizon": np.int32(self.horizon),
            "episode_id": rec["episode_id"], "frame_index": np.int32(rec["frame_index"]),
        }
