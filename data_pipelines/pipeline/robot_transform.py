"""Record bytes -> a fixed-shape robot training example (one Grain map step).

Steps: decode record; pick cameras (fixed order, or a per-episode permutation for SO100-style
tags); decode JPEGs, augment (train only), resize to a square; then the shared robot transform
stack (transforms/robot_inputs.py, the same one `Policy` runs on a live observation): normalize
state and action chunk with the tag's stats, discrete state bins, the prompt;
finally pad the chunk to max_action_horizon x max_action_dim with masks.
With `style_probabilities` (MolmoThink training) each example also draws its training style from the example's
rng (so it is a function of seed and index, like the augmentation, and resumes exactly) and carries the
record's depth codes; a depth style on a record without codes is a DataError naming the episode.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from data_pipelines.formats.images import decode_image, resize_square
from data_pipelines.errors import DataError
from data_pipelines.norm_stats import TagInfo
from data_pipelines.record_codec import decode_record
from data_pipelines.transforms import think_styles
from data_pipelines.transforms.image_aug import augment_image
from data_pipelines.transforms.normalize import pad_last
from data_pipelines.transforms.robot_inputs import robot_transforms


@dataclasses.dataclass(frozen=True)
class RobotTransformConfig:
    image_size: int = 378
    max_cameras: int = 3
    max_action_horizon: int = 30
    max_action_dim: int = 32
    num_state_tokens: int = 256
    state_format: str = "discrete"        # "discrete": state bins in the prompt; "continuous": no state clause
    norm_mode: str = "q01_q99"           # used when the tag's metadata comes as a raw dict without its own
    augment: bool = True
    camera_order: str = "auto"            # "auto" (per tag), "fixed", "episode"
    seed: int = 0
    style_probabilities: tuple | None = None   # Think: (robot_action, robot_depth, robot_depth_action) probabilities


class RobotTransform:
    """Callable(record_bytes, rng) -> example dict. Picklable (for Grain worker processes)."""

    def __init__(self, tag: str, tag_id: int, tag_info: TagInfo | dict, camera_keys: list[str],
                 cfg: RobotTransformConfig):
        if not isinstance(tag_info, TagInfo):   # a raw metadata_by_tag entry
            tag_info = TagInfo.from_json(tag, tag_info, cfg.norm_mode, f"norm_stats: metadata_by_tag[{tag!r}]")
        self.tag, self.tag_id, self.cfg, self.info = tag, tag_id, cfg, tag_info
        self.camera_keys = list(camera_keys)
        self.horizon = tag_info.horizon
        if self.horizon > cfg.max_action_horizon:
            raise ValueError(f"tag {tag}: action_horizon {self.horizon} > max_action_horizon {cfg.max_action_horizon}")
        self.transforms = robot_transforms(tag_info, num_state_tokens=cfg.num_state_tokens,
                                           state_format=cfg.state_format)
        order = cfg.camera_order
        if order == "auto":
            order = "fixed" if tag_info.camera_keys else "episode"
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
        return self.from_record(decode_record(data), rng)

    def from_record(self, rec: dict, rng: np.random.Generator) -> dict:
        """A decoded record (record_codec.decode_record) -> the example. A camera's image may also be given decoded,
        as a uint8 [H, W, 3] array: the synthetic tiny-recipe data (training/synthetic_data.py) makes its frames so
        and takes this path from here on, as converted shards do."""
        cfg = self.cfg
        style = think_styles.sample_style(rng, cfg.style_probabilities)
        if style in think_styles.DEPTH_STYLES and "depth_codes" not in rec:
            raise DataError(f"training style {style} needs depth codes, and this record has none (convert with "
                            f"molmoact2-data convert --depth-codes DIR, or set data.style_weights without depth "
                            f"styles)", episode=rec["episode_id"], key="depth_codes")
        cams = self.cameras_for(rec["episode_id"])
        S = cfg.image_size
        images = np.zeros((cfg.max_cameras, S, S, 3), np.uint8)
        for j, key in enumerate(cams):
            img = rec[f"image/{key}"]
            if not isinstance(img, np.ndarray):
                img = decode_image(img, episode=rec["episode_id"], key=key)
            if cfg.augment:
                img = augment_image(img, rng)
            images[j] = resize_square(img, S)
        image_mask = np.arange(cfg.max_cameras) < len(cams)

        x = self.transforms.apply_inputs({"state": rec["state"], "actions": rec["actions"][: self.horizon],
                                          "task": rec["task"], "num_images": len(cams), "style": style})
        state_n, chunk_n, bins = x["state"], x["actions"], x["state_bins"]
        actions = np.zeros((cfg.max_action_horizon, chunk_n.shape[1]), np.float32)
        actions[: self.horizon] = chunk_n
        actions, action_dim_is_pad = pad_last(actions, cfg.max_action_dim)
        action_is_pad = np.ones(cfg.max_action_horizon, bool)
        action_is_pad[: self.horizon] = rec["action_is_pad"][: self.horizon]
        state, state_dim_is_pad = pad_last(state_n, cfg.max_action_dim)
        padded_bins = np.zeros(cfg.max_action_dim, np.int32)
        padded_bins[: len(bins)] = bins
        ex = {
            "images": images, "image_mask": image_mask,
            "state": state, "state_dim_is_pad": state_dim_is_pad, "state_bins": padded_bins,
            "actions": actions, "action_is_pad": action_is_pad, "action_dim_is_pad": action_dim_is_pad,
            "prompt": x["prompt"], "tag_id": np.int32(self.tag_id), "action_horizon": np.int32(self.horizon),
            "episode_id": rec["episode_id"], "frame_index": np.int32(rec["frame_index"]),
            "style": style, "has_actions": np.bool_(style != "robot_depth"),
        }
        if cfg.style_probabilities is not None:
            codes = rec.get("depth_codes")
            ex["depth_codes"] = np.zeros(think_styles.NUM_DEPTH_CODES, np.int32) if codes is None else \
                np.asarray(codes, np.int32)
        return ex
