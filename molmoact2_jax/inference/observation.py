"""Observation in, robot actions out: the numpy side of a policy, shared by the JAX `Policy` (inference/policy.py)
and the ONNX runtime's `OnnxPolicy` (molmoact2_jax/runtime/), so both check and encode a request the same way.

    codec = ObservationCodec(model_cfg, "norm_stats.json", tokenizer)
    tag = codec.tag("franka_droid")
    req = codec.check_request(images, state, "franka_droid", mode, n_action_steps)   # tag, images, state, n_steps
    inp = codec.build_inputs(req.images, task, req.state, req.tag)    # prompt ids, mask, image patches, pooled idx
    ... the model turns inp (+ noise) into a normalized chunk [horizon, action_dim] ...
    result = codec.finish(result, normalized, req.tag, req.state, req.n_steps)   # un-normalized, checked finite

Input side: the tag, the camera images (count, names, order, dtype, size), the state, the prompt (language
normalization, state bins, tokens with image blocks, left-padded to a bucket or to a fixed length), the image
patches, the flow noise's shape and the real-time chunking arguments. Output side: the n_action_steps slice, the
un-normalization of training's transforms, the real-time chunking delay and the refusal of NaN/inf actions.

No JAX here (nor flax, optax, orbax or torch): numpy, ml_collections, the data pipelines' transforms, the text
tokenizer and the image preprocessing only.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from data_pipelines.norm_stats import NormStats, TagInfo
from data_pipelines.transforms.model_inputs import ModelInputs
from data_pipelines.transforms.robot_inputs import Group, actions_to_model_space, robot_transforms
from molmoact2_jax.inference.errors import NonFiniteActionError
from molmoact2_jax.preprocessing.image import to_uint8_rgb

__all__ = ["MODES", "MAX_IMAGES", "ActionResult", "CheckedRequest", "ObservationCodec", "PromptTooLongError"]

MODES = ("continuous", "discrete")
MAX_IMAGES = 5
# tokenizer layout field -> model config tokens field: the two must agree
_LAYOUT_FIELDS = {"image_start": "image_start", "image_end": "image_end", "image_patch": "image_patch",
                  "image_col": "image_col", "eos": "eos_token_id", "state_token_start": "state_token_start",
                  "action_output": "action_output", "action_start": "action_start", "action_end": "action_end",
                  "action_token_start": "action_token_start", "depth_output": "depth_output",
                  "depth_start": "depth_start", "depth_end": "depth_end", "depth_token_start": "depth_token_start",
                  "setup_start": "setup_start", "control_start": "control_start", "state_start": "state_start"}


def _short_camera_name(key: str) -> str:
    """"observation.images.wrist" -> "wrist": the part a client usually names."""
    return str(key).rsplit(".", 1)[-1]


class PromptTooLongError(ValueError):
    """The prompt does not fit: over model.max_sequence_length, or over a fixed padded length (`pad_to`).
    `tokens`: the prompt's length; `limit`: the length it had to fit in."""

    def __init__(self, message: str, tokens: int = 0, limit: int = 0):
        super().__init__(message)
        self.tokens, self.limit = tokens, limit


@dataclasses.dataclass
class ActionResult:
    actions: np.ndarray                      # float32 [n_action_steps, action_dim], robot units
    normalized_actions: np.ndarray           # float32 [horizon, action_dim], model space (before un-normalizing)
    mode: str
    norm_tag: str
    valid: bool = True                       # discrete: False when the tokens did not decode to a chunk
    generated_token_ids: np.ndarray | None = None   # discrete / Think: the generated ids (EOS included)
    depth_bins: np.ndarray | None = None     # Think: int32 [100] depth codes
    depth_cache: dict | None = None          # Think: {"image": first camera image, "depth_bins": [100]}
    think_stats: object | None = None        # Think: think.ThinkStats (which cells were re-predicted)
    prompt_tokens: int = 0


@dataclasses.dataclass
class CheckedRequest:
    """What `ObservationCodec.check_request` returns: the request's checked parts."""
    tag: TagInfo
    images: list            # uint8 HxWx3 arrays in the tag's camera order
    state: np.ndarray       # float64 [state_dim], raw units
    n_steps: int            # the actions returned: n_action_steps, in [1, horizon]


class ObservationCodec:
    """Request checks and encoding (observation -> model inputs) and result decoding (normalized chunk -> robot
    actions) of one model config, norm_stats.json and tokenizer. Batch size 1. Holds no model.

    `tags`: the norm tags served (default all of norm_stats.json's); `prompt_bucket`: prompts are left-padded to a
    multiple of it (unless `build_inputs` gets a fixed `pad_to`); `max_images`: the most cameras accepted (a trainer
    step's data.max_cameras); `strict_camera_count`: a tag with fixed camera_keys takes exactly that many images;
    `normalize_language`: training's instruction normalization (a request may override it)."""

    def __init__(self, model_cfg, norm_stats, tokenizer, *, prompt_bucket: int = 16, use_col_tokens: bool = False,
                 max_images: int = MAX_IMAGES, strict_camera_count: bool = True, normalize_language: bool = True,
                 tags=None):
        self.cfg = ml_collections.FrozenConfigDict(model_cfg)
        self.norm_stats = NormStats.load(norm_stats)
        if tags is None:
            self.tags = self.norm_stats.tags
        else:
            unknown = [t for t in tags if t not in self.norm_stats.tags]
            if unknown:
                raise ValueError(f"norm tags {unknown} are not in {self.norm_stats.source} (it has "
                                 f"{sorted(self.norm_stats.tags)})")
            self.tags = {t: self.norm_stats.tags[t] for t in tags}
        self.tokenizer = tokenizer
        self.prompt_bucket = int(prompt_bucket)
        self.use_col_tokens = bool(use_col_tokens)
        self.max_images = int(max_images)
        self.strict_camera_count = bool(strict_camera_count)
        self.normalize_language = bool(normalize_language)
        self.check_layout()
        # The training example's transforms: tokens + patches (model_inputs), normalization + prompt (robot_inputs)
        self.model_inputs = ModelInputs.for_model(tokenizer, self.cfg, seq_len=None, use_col_tokens=use_col_tokens)
        self.image_grid = self.model_inputs.grid
        self.pad_id = int(self.cfg.tokens.pad_token_id)
        self.max_action_dim = int(self.cfg.action_expert.max_action_dim)
        self._groups: dict = {}

    def check_layout(self) -> None:
        """The tokenizer's special token ids are the model config's (ValueError naming each disagreement)."""
        lay, t = self.tokenizer.layout, self.cfg.tokens
        bad = [f"{a}: tokenizer {getattr(lay, a)} vs model {t[b]}" for a, b in _LAYOUT_FIELDS.items()
               if b in t and getattr(lay, a) != t[b]]
        if bad:
            raise ValueError("tokenizer and model disagree on special token ids (" + "; ".join(bad) + ")")

    # ------------------------------------------------------------------ validation
    def tag(self, norm_tag) -> TagInfo:
        if not isinstance(norm_tag, str) or norm_tag not in self.tags:
            raise ValueError(f"unknown norm_tag {norm_tag!r}; this checkpoint knows {sorted(self.tags)}")
        return self.tags[norm_tag]

    def transforms(self, tag: TagInfo, think: bool = False) -> Group:
        """The robot transform stack training used for this tag (normalize, state bins, prompt; un-normalize)."""
        key = (tag.name, bool(think))
        if key not in self._groups:
            self._groups[key] = robot_transforms(tag, num_state_tokens=int(self.cfg.tokens.num_state_tokens),
                                                 think=think, normalize_language=self.normalize_language)
        return self._groups[key]

    def expected_cameras(self, tag: TagInfo) -> tuple:
        """The tag's cameras in the order training fed them (its fixed camera_keys, at most max_images of them, as
        the training transform truncates to data.max_cameras); () when the tag has no fixed order."""
        return tuple(tag.camera_keys[:self.max_images])

    def order_cameras(self, images: dict, tag: TagInfo) -> list:
        """{camera name: image} -> images in the tag's camera order. A name is the full key
        ("observation.images.wrist") or its last part ("wrist"). Unknown or missing names are refused, naming the
        expected and the given ones (missing ones only with strict_camera_count)."""
        expected = self.expected_cameras(tag)
        if not expected:   # no fixed order (per-episode permutation in training): any order, as given
            return list(images.values())
        lookup = {}
        for key in expected:
            lookup[key] = key
            lookup.setdefault(_short_camera_name(key), key)
        given = [str(k) for k in images]
        unknown = [k for k in given if k not in lookup]
        chosen = {lookup[k]: images[k] for k in images if str(k) in lookup}
        missing = [k for k in expected if k not in chosen]
        if unknown or (missing and self.strict_camera_count) or len(chosen) != len(given):
            why = "; ".join(x for x in (f"unknown {unknown}" if unknown else "",
                                        f"missing {missing}" if missing else "") if x) or "a camera named twice"
            raise ValueError(f"norm_tag {tag.name!r} was trained with cameras {list(expected)} (short names "
                             f"{[_short_camera_name(k) for k in expected]}); got {given}: {why}")
        return [chosen[k] for k in expected if k in chosen]

    def check_images(self, images, tag: TagInfo) -> list[np.ndarray]:
        """images: a list in camera order, one HxWx3 array, or a {camera name: image} dict (reordered to the
        tag's camera order). The count must be the one the checkpoint was trained with: the tag's fixed
        camera_keys, and never more than max_images (a trainer step's data.max_cameras)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        if isinstance(images, dict):
            images = self.order_cameras(images, tag)
        if not isinstance(images, (list, tuple)):
            raise ValueError(f"images must be a list of HxWx3 arrays in camera order (or a {{camera name: image}} "
                             f"dict), got {type(images).__name__}")
        n = len(images)
        if not 1 <= n <= self.max_images:
            raise ValueError(f"got {n} images; expected between 1 and {self.max_images}"
                             + (" (the run's data.max_cameras)" if self.max_images < MAX_IMAGES else ""))
        expected = self.expected_cameras(tag)
        if self.strict_camera_count and expected and n != len(expected):
            raise ValueError(f"norm_tag {tag.name!r} expects {len(expected)} images ({', '.join(expected)}), "
                             f"got {n}: send one image per camera the checkpoint was trained with, in that order")
        out = []
        for j, im in enumerate(images):
            arr = np.asarray(im)
            if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f"image {j}: dtype {arr.dtype} not supported (expected uint8, or float in [0, 1] "
                                 f"or [0, 255])")
            if arr.ndim != 3 or arr.shape[-1] != 3:
                raise ValueError(f"image {j}: expected an HxWx3 RGB array, got shape {arr.shape}")
            if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[0] * arr.shape[1] > 4096 * 4096:
                raise ValueError(f"image {j}: unsupported size {arr.shape[:2]}")
            out.append(to_uint8_rgb(arr, f"image {j}"))
        return out

    @staticmethod
    def check_state(state, tag: TagInfo) -> np.ndarray:
        try:
            s = np.asarray(state, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"state must be a vector of {tag.state_dim} numbers") from None
        if s.ndim == 2 and s.shape[0] == 1:
            s = s[0]
        if s.ndim != 1 or s.shape[0] != tag.state_dim:
            raise ValueError(f"state has shape {s.shape}; norm_tag {tag.name!r} expects ({tag.state_dim},)")
        if not np.isfinite(s).all():
            raise ValueError("state contains NaN or inf")
        return s

    def check_request(self, images, state, norm_tag, mode: str = "continuous",
                      n_action_steps: int | None = None) -> CheckedRequest:
        """The checks every prediction starts with, in this order: tag, mode, images, state, n_action_steps (in
        [1, horizon], default the tag's) and the tag's action dim (<= the model's max_action_dim)."""
        tag = self.tag(norm_tag)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        imgs = self.check_images(images, tag)
        s = self.check_state(state, tag)
        h, d = tag.horizon, tag.action_dim
        n_steps = tag.n_action_steps if n_action_steps is None else int(n_action_steps)
        if not 1 <= n_steps <= h:
            raise ValueError(f"n_action_steps={n_steps} must be in [1, horizon={h}]")
        if d > self.max_action_dim:
            raise ValueError(f"norm_tag {tag.name!r} has action_dim {d} > max_action_dim {self.max_action_dim}")
        return CheckedRequest(tag=tag, images=imgs, state=s, n_steps=n_steps)

    # ------------------------------------------------------------------ inputs
    def build_inputs(self, images, task: str, state, tag: TagInfo, think: bool = False,
                     normalize_language: bool | None = None, pad_to: int | None = None) -> dict:
        """Prompt ids + image patches, the model inputs of one observation. The prompt is left-padded (masked,
        positions unchanged) to a multiple of `prompt_bucket`, or to exactly `pad_to` tokens when given
        (PromptTooLongError, a ValueError, when it is longer). Returns ids int32 [1, T], attn bool [1, T],
        images float32 [1, N, P, V], pooled int32 [1, N*Nt, pool*pool], prompt_tokens (unpadded length) and the
        transformed state, state_bins and prompt text."""
        if not isinstance(task, str):
            raise ValueError(f"task/instruction must be a string, got {type(task).__name__}")
        x = {"state": state, "task": task, "num_images": len(images)}
        if normalize_language is not None:
            x["normalize_language"] = normalize_language
        x = self.transforms(tag, think).apply_inputs(x)
        ids = self.model_inputs.prompt_ids(x["prompt"], len(images))
        if think:
            ids = ids + [int(self.cfg.tokens.depth_start)]   # forced <depth_start>
        n = len(ids)
        if pad_to is not None:
            length = int(pad_to)
            if n > length:
                raise PromptTooLongError(f"prompt of {n} tokens exceeds the fixed prompt length of {length} tokens",
                                         n, length)
        else:
            length = -(-n // self.prompt_bucket) * self.prompt_bucket
            if length > self.cfg.max_sequence_length:
                raise PromptTooLongError(f"prompt of {n} tokens exceeds model.max_sequence_length="
                                         f"{self.cfg.max_sequence_length}", n, int(self.cfg.max_sequence_length))
        padded = np.full((1, length), self.pad_id, np.int32)
        padded[0, length - n:] = ids
        attn = np.zeros((1, length), bool)
        attn[0, length - n:] = True
        patches, pooled = self.model_inputs.image_inputs(images)
        return dict(ids=padded, attn=attn, images=patches[None], pooled=pooled[None], prompt_tokens=n,
                    state=x["state"], state_bins=x["state_bins"], prompt=x["prompt"])

    def dim_valid(self, tag: TagInfo) -> np.ndarray:
        """bool [1, max_action_dim]: the tag's action dims (the rest are padding)."""
        return (np.arange(self.max_action_dim) < tag.action_dim)[None]

    def check_noise(self, noise, horizon: int) -> np.ndarray:
        """Explicit flow noise, (horizon, max_action_dim) or (1, horizon, max_action_dim) -> float32 [1, H, D]."""
        d = self.max_action_dim
        arr = np.asarray(noise, np.float32)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.shape != (horizon, d):
            raise ValueError(f"noise has shape {arr.shape}; expected (horizon={horizon}, {d})")
        if not np.isfinite(arr).all():
            raise ValueError("noise contains NaN or inf")
        return arr[None]

    def rtc_guidance(self, prev_chunk, inference_delay, execution_horizon, max_guidance_weight, tag: TagInfo,
                     state, n_steps: int):
        """Checks the real-time chunking arguments; returns (`rtc.make_guidance` arguments as host arrays,
        robot-unit prev_chunk [n, action_dim], model-space target [horizon, action_dim], d), or (None, None, None, 0)
        without a previous chunk."""
        if prev_chunk is None:
            if inference_delay or execution_horizon is not None:
                raise ValueError("inference_delay / execution_horizon need prev_chunk (real-time chunking)")
            return None, None, None, 0
        h, dim = tag.horizon, tag.action_dim
        try:
            prev = np.asarray(prev_chunk, np.float64)
        except (TypeError, ValueError):
            raise ValueError("prev_chunk must be an (N, action_dim) array of numbers") from None
        if prev.ndim == 3 and prev.shape[0] == 1:
            prev = prev[0]
        if prev.ndim != 2 or not 1 <= prev.shape[0] <= h or prev.shape[1] != dim:
            raise ValueError(f"prev_chunk has shape {prev.shape}; norm_tag {tag.name!r} expects (N, {dim}) with "
                             f"1 <= N <= horizon={h}")
        if not np.isfinite(prev).all():
            raise ValueError("prev_chunk contains NaN or inf")
        n = prev.shape[0]
        d = int(inference_delay or 0)
        if not 0 <= d <= min(n, n_steps):
            raise ValueError(f"inference_delay={inference_delay} must be in [0, min(len(prev_chunk)={n}, "
                             f"n_action_steps={n_steps})]")
        end = n if execution_horizon is None else int(execution_horizon)
        if not d <= end <= n:
            raise ValueError(f"execution_horizon={execution_horizon} must be in [inference_delay={d}, "
                             f"len(prev_chunk)={n}]")
        beta = float(max_guidance_weight)
        if not (np.isfinite(beta) and beta >= 0):
            raise ValueError(f"max_guidance_weight={max_guidance_weight}: expected a finite number >= 0")
        target = np.zeros((h, dim), np.float32)
        target[:n] = actions_to_model_space(tag, prev, state)
        padded = np.zeros((1, h, self.max_action_dim), np.float32)
        padded[0, :, :dim] = target
        args = (padded, np.int32(d), np.int32(end), np.float32(beta))
        return args, prev.astype(np.float32), target, d

    # ------------------------------------------------------------------ outputs
    def finish(self, result: ActionResult, normalized, tag: TagInfo, state, n_steps: int, think: bool = False,
               delay: int = 0, target=None, prev=None) -> ActionResult:
        """Fills `result` from the model's normalized chunk [horizon, action_dim]: with a real-time chunking
        `delay`, its first `delay` steps are the previous chunk's (`target` in model space, `prev` in robot units);
        `actions` = the first n_steps un-normalized with training's output transforms. Refuses NaN/inf
        (NonFiniteActionError)."""
        norm = np.array(normalized, np.float32)
        if delay:   # executed from the previous chunk while this call ran: returned as they were
            norm[:delay] = target[:delay]
        result.normalized_actions = norm
        # n_obs_steps = 1 in released configs: the executed steps are [0 : n_action_steps]
        out = self.transforms(tag, think).apply_outputs({"actions": norm[:n_steps], "state": state})
        result.actions = np.array(out["actions"], np.float32)
        if delay:
            result.actions[:delay] = prev[:delay]
        self.check_finite(result, tag)
        return result

    @staticmethod
    def check_finite(result: ActionResult, tag: TagInfo) -> None:
        """Nothing non-finite reaches a robot: every caller (server, eval, client code) gets an error instead. The
        inputs and the norm stats were checked, so NaN/inf here comes from the weights (or an overflow in them)."""
        for name, arr in (("actions", result.actions), ("normalized_actions", result.normalized_actions)):
            bad = ~np.isfinite(arr)
            if bad.any():
                raise NonFiniteActionError(
                    f"the model produced non-finite {name} ({int(bad.sum())} of {bad.size} values NaN/inf; "
                    f"norm_tag {tag.name!r}, mode {result.mode}); refusing to return them: the checkpoint's "
                    f"weights hold NaN/inf or overflow (check the training run for a NaN loss)")


class CodecRequests:
    """The request-side methods of a policy that holds an ObservationCodec as `self.codec` (the JAX Policy and the
    export runtimes): callers (the server, the eval loop, user code) check and order inputs through the policy."""
    codec: ObservationCodec

    def tag(self, norm_tag) -> TagInfo:
        return self.codec.tag(norm_tag)

    def transforms(self, tag: TagInfo, think: bool = False) -> Group:
        """The robot transform stack training used for this tag (normalize, state bins, prompt; un-normalize)."""
        return self.codec.transforms(tag, think)

    def expected_cameras(self, tag: TagInfo) -> tuple:
        """The tag's cameras in the order training fed them (ObservationCodec.expected_cameras)."""
        return self.codec.expected_cameras(tag)

    def order_cameras(self, images: dict, tag: TagInfo) -> list:
        """{camera name: image} -> images in the tag's camera order (ObservationCodec.order_cameras)."""
        return self.codec.order_cameras(images, tag)

    def check_images(self, images, tag: TagInfo) -> list[np.ndarray]:
        """A list, one HxWx3 array or a {camera name: image} dict -> uint8 images in camera order
        (ObservationCodec.check_images)."""
        return self.codec.check_images(images, tag)

    check_state = staticmethod(ObservationCodec.check_state)
