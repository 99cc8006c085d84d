"""Inference policy: raw robot observation -> robot-unit action chunk (docs/model_notes.md, "Inference steps").

    policy = Policy.load(CKPT_DIR)                      # params + assets (norm_stats.json, tokenizer files)
    out = policy.predict_action(images, task, state, norm_tag, mode="continuous")
    out.actions                                         # float32 [n_action_steps, action_dim], robot units

Steps: language normalization -> state normalization and bins -> prompt -> image patches and token expansion
with BOS -> prefill (bidirectional image attention) -> encoder mask -> [Think depth prefix and gate] -> 10-step
Euler flow over H = tag horizon, or greedy OpenFAST decoding -> slice to the tag's action dim and n_action_steps
-> un-normalize (gripper dims pass through).

Real-time chunking (models/rtc.py): with `prev_chunk` (the previous chunk's actions not yet executed when this
observation was taken, robot units, as returned), the flow is guided to continue it: the first `inference_delay`
returned actions are the previous chunk's (the robot executes them while this call runs) and the overlap up to
`execution_horizon` is pulled towards it with the paper's soft mask, in the same jitted Euler loop.

Compilation: one jitted function per mode; prompts are left-padded (masked, positions unchanged) to a multiple of
`prompt_bucket` tokens so different task strings reuse one compilation per (cameras, bucket, horizon, mode).
"""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import jax
import jax.numpy as jnp
import ml_collections

from data_pipelines.norm_stats import NormStats, TagInfo
from data_pipelines.transforms.model_inputs import ModelInputs
from data_pipelines.transforms.robot_inputs import Group, actions_to_model_space, robot_transforms
from molmoact2_jax.inference import loading
from molmoact2_jax.inference.errors import NonFiniteActionError
from molmoact2_jax.inference import think as think_lib
from molmoact2_jax.models import rtc
from molmoact2_jax.models.molmoact2 import MolmoAct2
from molmoact2_jax.preprocessing.image import to_uint8_rgb
from molmoact2_jax.tokenizers.openfast import MAX_ACTION_DIM, from_llm_ids

MODES = ("continuous", "discrete")
MAX_IMAGES = 5
_LAYOUT_FIELDS = {"image_start": "image_start", "image_end": "image_end", "image_patch": "image_patch",
                  "image_col": "image_col", "eos": "eos_token_id", "state_token_start": "state_token_start",
                  "action_output": "action_output", "action_start": "action_start", "action_end": "action_end",
                  "action_token_start": "action_token_start", "depth_output": "depth_output",
                  "depth_start": "depth_start", "depth_end": "depth_end", "depth_token_start": "depth_token_start",
                  "setup_start": "setup_start", "control_start": "control_start", "state_start": "state_start"}


def _short_camera_name(key: str) -> str:
    """"observation.images.wrist" -> "wrist": the part a client usually names."""
    return str(key).rsplit(".", 1)[-1]


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


class Policy:
    """MolmoAct2 inference policy (batch size 1). Thread-safe: calls are serialized by a lock."""

    def __init__(self, model_cfg, params, norm_stats, tokenizer, action_tokenizer=None, *, prompt_bucket: int = 16,
                 use_col_tokens: bool = False, max_images: int = MAX_IMAGES, strict_camera_count: bool = True,
                 normalize_language: bool = True, change_threshold: float = think_lib.CHANGE_THRESHOLD):
        self.cfg = ml_collections.FrozenConfigDict(model_cfg)
        self.model = MolmoAct2(self.cfg)
        self.params = jax.device_put(params)
        self.norm_stats = NormStats.load(norm_stats)
        self.tags = self.norm_stats.tags
        self.tokenizer = tokenizer
        self.action_tokenizer = action_tokenizer
        self.prompt_bucket = int(prompt_bucket)
        self.use_col_tokens = bool(use_col_tokens)
        self.max_images = int(max_images)
        self.strict_camera_count = bool(strict_camera_count)
        self.normalize_language = bool(normalize_language)
        self._check_layout()
        # The training example's transforms: tokens + patches (model_inputs), normalization + prompt (robot_inputs)
        self.model_inputs = ModelInputs.for_model(tokenizer, self.cfg, seq_len=None, use_col_tokens=use_col_tokens)
        self.image_grid = self.model_inputs.grid
        self._groups: dict = {}
        self.pad_id = int(self.cfg.tokens.pad_token_id)
        self._continuous = jax.jit(self._continuous_fn, static_argnames=("num_steps",))
        self._generate = jax.jit(self._generate_fn, static_argnames=("max_new",))
        self._noise = jax.jit(lambda key, h: jax.random.normal(key, (1, h, self.cfg.action_expert.max_action_dim),
                                                               jnp.float32), static_argnums=1)
        self.think = think_lib.ThinkDecoder(self.model, change_threshold)
        self.compiled_shapes: set = set()   # (mode, think, n_images, prompt bucket, horizon, ...) seen so far
        self._lock = threading.Lock()
        self._calls = 0

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, ckpt_dir: str, norm_stats=None, tokenizer=None, action_tokenizer=None, weights: str = "auto",
             **kwargs) -> "Policy":
        """Loads a params checkpoint (`params/` + `model_config.json`), a trainer step dir, or an HF MolmoAct2
        folder (converted in memory), local or `gs://`. Assets are looked up in DIR/assets/ then DIR/: norm_stats.json,
        tokenizer.json (or tokenizer.model), optional config.json (token-id overrides) and the OpenFAST folder
        (assets/action_tokenizer/). Arguments override the assets (objects or paths). `weights` ("auto", "ema",
        "raw"): a trainer step directory serves its EMA weights when the run kept them. See inference/loading.py."""
        parts = loading.load_checkpoint(ckpt_dir, norm_stats=norm_stats, tokenizer=tokenizer,
                                        action_tokenizer=action_tokenizer, weights=weights)
        if parts.max_cameras:   # a trainer step: its run never fed the model more images than data.max_cameras
            kwargs.setdefault("max_images", min(MAX_IMAGES, parts.max_cameras))
        return cls(parts.model_cfg, parts.params, parts.norm_stats, parts.tokenizer, parts.action_tokenizer,
                   **kwargs)

    def _check_layout(self):
        lay, t = self.tokenizer.layout, self.cfg.tokens
        bad = [f"{a}: tokenizer {getattr(lay, a)} vs model {t[b]}" for a, b in _LAYOUT_FIELDS.items()
               if b in t and getattr(lay, a) != t[b]]
        if bad:
            raise ValueError("tokenizer and model disagree on special token ids (" + "; ".join(bad) + ")")

    # ------------------------------------------------------------------ jitted bodies
    def _batch(self, ids, images, pooled, attn):
        return dict(input_ids=ids, images=images, pooled_idx=pooled, attention_mask=attn)

    def _continuous_fn(self, params, ids, images, pooled, attn, noise, dim_valid, rtc_args, num_steps):
        batch = self._batch(ids, images, pooled, attn)
        batch["action_dim_valid"] = dim_valid
        guidance = None if rtc_args is None else rtc.make_guidance(*rtc_args)   # built in the jit: no host work
        return self.model.sample_actions(params, batch, noise=noise, num_steps=num_steps, guidance=guidance)

    def _generate_fn(self, params, ids, images, pooled, attn, max_new):
        return self.model.generate(params, self._batch(ids, images, pooled, attn), max_new)

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

    # ------------------------------------------------------------------ inputs
    def build_inputs(self, images, task: str, state, tag: TagInfo, think: bool = False,
                     normalize_language: bool | None = None) -> dict:
        """Prompt ids (left-padded to the bucket) + image patches, the model inputs of one observation."""
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
        bucket = -(-n // self.prompt_bucket) * self.prompt_bucket
        if bucket > self.cfg.max_sequence_length:
            raise ValueError(f"prompt of {n} tokens exceeds model.max_sequence_length={self.cfg.max_sequence_length}")
        padded = np.full((1, bucket), self.pad_id, np.int32)
        padded[0, bucket - n:] = ids
        attn = np.zeros((1, bucket), bool)
        attn[0, bucket - n:] = True
        patches, pooled = self.model_inputs.image_inputs(images)
        return dict(ids=padded, attn=attn, images=patches[None], pooled=pooled[None], prompt_tokens=n,
                    state=x["state"], state_bins=x["state_bins"], prompt=x["prompt"])

    def _draw_noise(self, horizon: int, seed, noise) -> jnp.ndarray:
        d = self.cfg.action_expert.max_action_dim
        if noise is not None:
            arr = np.asarray(noise, np.float32)
            if arr.ndim == 3 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.shape != (horizon, d):
                raise ValueError(f"noise has shape {arr.shape}; expected (horizon={horizon}, {d})")
            if not np.isfinite(arr).all():
                raise ValueError("noise contains NaN or inf")
            return jnp.asarray(arr[None])
        if seed is None:
            seed = np.random.SeedSequence().entropy % (2 ** 31)
        return self._noise(jax.random.PRNGKey(int(seed)), horizon)

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
        padded = np.zeros((1, h, self.cfg.action_expert.max_action_dim), np.float32)
        padded[0, :, :dim] = target
        args = (padded, np.int32(d), np.int32(end), np.float32(beta))
        return args, prev.astype(np.float32), target, d

    # ------------------------------------------------------------------ main entry point
    def predict_action(self, images, task: str, state, norm_tag: str, mode: str = "continuous", think: bool = False,
                       depth_cache=None, num_steps: int | None = None, n_action_steps: int | None = None,
                       seed: int | None = None, noise=None, normalize_language: bool | None = None,
                       prev_chunk=None, inference_delay: int = 0, execution_horizon: int | None = None,
                       max_guidance_weight: float = rtc.MAX_GUIDANCE_WEIGHT) -> ActionResult:
        """images: list of HxWx3 uint8 (or float) arrays in camera order, or {camera name: image} (full key or its
        last part, reordered to the tag's camera_keys); the cameras must be those the checkpoint was trained with
        (ValueError naming expected vs given otherwise); task: instruction; state: raw state
        vector; norm_tag: a tag of norm_stats.json; mode: "continuous" (flow expert) or "discrete" (OpenFAST
        tokens); think: MolmoThink depth prefix (with `depth_cache` from the previous call to re-predict only
        changed cells); num_steps: Euler steps (default config flow.num_steps); n_action_steps: default the
        tag's; seed / noise: the flow's starting noise (noise shaped (horizon, 32) wins over seed).

        Real-time chunking (continuous mode): prev_chunk (N, action_dim) robot units, the previous chunk's
        actions from this observation's step on (prev_chunk[0] is the action due now; N <= horizon);
        inference_delay d: steps the robot executes from prev_chunk while this call runs (the returned
        actions[:d] are prev_chunk[:d]); execution_horizon: the guided overlap ends there (default N); the
        guidance clip max_guidance_weight (the paper's beta, 5).

        Raises ValueError for bad inputs and NonFiniteActionError (a RuntimeError) rather than return NaN/inf
        actions."""
        tag = self.tag(norm_tag)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        imgs = self.check_images(images, tag)
        s = self.check_state(state, tag)
        h, d = tag.horizon, tag.action_dim
        n_steps = tag.n_action_steps if n_action_steps is None else int(n_action_steps)
        if not 1 <= n_steps <= h:
            raise ValueError(f"n_action_steps={n_steps} must be in [1, horizon={h}]")
        if d > self.cfg.action_expert.max_action_dim:
            raise ValueError(f"norm_tag {tag.name!r} has action_dim {d} > max_action_dim "
                             f"{self.cfg.action_expert.max_action_dim}")
        steps = int(self.cfg.flow.num_steps if num_steps is None else num_steps)
        if mode == "continuous":
            if self.model.expert is None:
                raise ValueError("this checkpoint has no action expert (use mode='discrete')")
            if steps < 1:
                raise ValueError(f"num_steps={steps}: expected >= 1")
            x0 = self._draw_noise(h, seed, noise)
        else:
            if prev_chunk is not None:
                raise ValueError("real-time chunking (prev_chunk) needs the flow head: use mode='continuous'")
            if self.action_tokenizer is None:
                raise ValueError("mode='discrete' needs an OpenFAST action tokenizer (assets/action_tokenizer/ or "
                                 "action_tokenizer=)")
            if d > MAX_ACTION_DIM:
                raise ValueError(f"discrete mode supports action_dim <= {MAX_ACTION_DIM}, got {d}")
        rtc_args, prev, target, delay = self.rtc_guidance(prev_chunk, inference_delay, execution_horizon,
                                                          max_guidance_weight, tag, s, n_steps)
        inp = self.build_inputs(imgs, task, s, tag, think, normalize_language)
        dim_valid = jnp.asarray((np.arange(self.cfg.action_expert.max_action_dim) < d)[None])
        args = (self.params, jnp.asarray(inp["ids"]), jnp.asarray(inp["images"]), jnp.asarray(inp["pooled"]),
                jnp.asarray(inp["attn"]))
        with self._lock:
            self._calls += 1
            self.compiled_shapes.add((mode, bool(think), len(imgs), inp["ids"].shape[1], h,
                                      steps if mode == "continuous" else None, rtc_args is not None))
            result = ActionResult(actions=None, normalized_actions=None, mode=mode, norm_tag=tag.name,
                                  prompt_tokens=inp["prompt_tokens"])
            if think:
                norm = self._predict_think(args, inp, imgs[0], depth_cache, mode, h, d, x0 if mode == "continuous"
                                           else None, dim_valid, steps, result, rtc_args)
            elif mode == "continuous":
                norm = np.asarray(self._continuous(*args, x0, dim_valid, rtc_args, num_steps=steps))[0, :, :d]
            else:
                tokens, count = self._generate(*args, max_new=16 * h)
                gen = np.asarray(tokens)[0, :int(np.asarray(count)[0])]
                result.generated_token_ids = gen.astype(np.int32)
                norm = self._decode_discrete(gen, h, d, result)
        norm = np.array(norm, np.float32)
        if delay:   # executed from the previous chunk while this call ran: returned as they were
            norm[:delay] = target[:delay]
        result.normalized_actions = norm
        # n_obs_steps = 1 in released configs: the executed steps are [0 : n_action_steps]
        out = self.transforms(tag, think).apply_outputs({"actions": norm[:n_steps], "state": s})
        result.actions = np.array(out["actions"], np.float32)
        if delay:
            result.actions[:delay] = prev[:delay]
        self._check_finite(result, tag)
        return result

    @staticmethod
    def _check_finite(result: ActionResult, tag: TagInfo) -> None:
        """Nothing non-finite reaches a robot: every caller (server, eval, client code) gets an error instead. The
        inputs and the norm stats were checked, so NaN/inf here comes from the weights (or an overflow in them)."""
        for name, arr in (("actions", result.actions), ("normalized_actions", result.normalized_actions)):
            bad = ~np.isfinite(arr)
            if bad.any():
                raise NonFiniteActionError(
                    f"the model produced non-finite {name} ({int(bad.sum())} of {bad.size} values NaN/inf; "
                    f"norm_tag {tag.name!r}, mode {result.mode}); refusing to return them: the checkpoint's "
                    f"weights hold NaN/inf or overflow (check the training run for a NaN loss)")

    def _decode_discrete(self, gen, h, d, result) -> np.ndarray:
        t = self.cfg.tokens
        bpe = from_llm_ids(gen.tolist(), t.action_start, t.action_end, t.action_token_start, t.num_action_tokens)
        actions, valid = self.action_tokenizer.decode([bpe], horizon=h, action_dim=d)
        result.valid = bool(valid[0])   # invalid -> zero chunk, flagged instead of raising
        return actions[0]

    def _predict_think(self, args, inp, first_image, depth_cache, mode, h, d, x0, dim_valid, steps, result,
                       rtc_args=None):
        params = args[0]
        prompt_len = inp["ids"].shape[1]
        size = self.think.cache_size(prompt_len, h, mode == "discrete")
        if size > self.cfg.max_sequence_length:
            raise ValueError(f"Think sequence of {size} tokens exceeds model.max_sequence_length="
                             f"{self.cfg.max_sequence_length}")
        codes, generated, cache, logits, stats = self.think.decode_depth(
            params, *args[1:], first_image=first_image, depth_cache=depth_cache, horizon=h, cache_size=size)
        result.depth_bins = codes
        result.depth_cache = {"image": first_image, "depth_bins": codes.copy()}
        result.think_stats = stats
        if mode == "discrete":
            tail = self.think.continue_discrete(params, cache, logits, 16 * h)
            result.generated_token_ids = np.asarray(generated + tail, np.int32)
            return self._decode_discrete(np.asarray(tail), h, d, result)
        result.generated_token_ids = np.asarray(generated, np.int32)
        slots = np.full((1, size), self.pad_id, np.int32)
        slots[0, :prompt_len] = inp["ids"][0]
        fed = generated[1:]   # <depth_start> is the prompt's last token
        slots[0, prompt_len:prompt_len + len(fed)] = fed
        out = self.think.expert_actions(params, cache, slots, x0, dim_valid, steps, rtc_args)
        return np.asarray(out)[0, :, :d]
