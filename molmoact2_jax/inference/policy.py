"""Inference policy: raw robot observation -> robot-unit action chunk (spec 19, 11.2, 12, 13, 14).

    policy = Policy.load(CKPT_DIR)                      # params + assets (norm_stats.json, tokenizer files)
    out = policy.predict_action(images, task, state, norm_tag, mode="continuous")
    out.actions                                         # float32 [n_action_steps, action_dim], robot units

Steps (spec 19): language normalization -> state normalization and bins -> prompt (4.1) -> image patches and
token expansion with BOS -> prefill (bidirectional image attention) -> encoder mask (10.1) -> [Think depth prefix
and gate (14, 10.2)] -> 10-step Euler flow over H = tag horizon, or greedy OpenFAST decoding (12) -> slice to the
tag's action dim and n_action_steps -> un-normalize (gripper dims pass through, spec 13).

Compilation: one jitted function per mode; prompts are left-padded (masked, positions unchanged) to a multiple of
`prompt_bucket` tokens so different task strings reuse one compilation per (cameras, bucket, horizon, mode).
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading

import numpy as np
import jax
import jax.numpy as jnp
import ml_collections

from data_pipelines.transforms.normalize import NORM_MODES, FeatureStats, normalize, state_bins, unnormalize
from data_pipelines.transforms.prompt import build_robot_prompt
from molmoact2_jax.inference import think as think_lib
from molmoact2_jax.models.molmoact2 import MolmoAct2
from molmoact2_jax.preprocessing.image import preprocess_images, to_uint8_rgb
from molmoact2_jax.tokenizers.openfast import MAX_ACTION_DIM, from_llm_ids

MODES = ("continuous", "discrete")
MAX_IMAGES = 5
NORM_STATS_FILE = "norm_stats.json"
ACTION_TOKENIZER_DIRS = ("action_tokenizer", "openfast", "fast_tokenizer", "MolmoAct2-FAST-Tokenizer")
_LAYOUT_FIELDS = {"image_start": "image_start", "image_end": "image_end", "image_patch": "image_patch",
                  "image_col": "image_col", "eos": "eos_token_id", "state_token_start": "state_token_start",
                  "action_output": "action_output", "action_start": "action_start", "action_end": "action_end",
                  "action_token_start": "action_token_start", "depth_output": "depth_output",
                  "depth_start": "depth_start", "depth_end": "depth_end", "depth_token_start": "depth_token_start",
                  "setup_start": "setup_start", "control_start": "control_start", "state_start": "state_start"}


@dataclasses.dataclass(frozen=True)
class TagInfo:
    """One norm tag of norm_stats.json (spec 13 schema)."""
    name: str
    action_stats: FeatureStats
    state_stats: FeatureStats
    norm_mode: str
    horizon: int
    n_action_steps: int
    setup_type: str
    control_mode: str
    camera_keys: tuple

    @property
    def action_dim(self) -> int:   # spec 21.4: the length of the stats vector, not metadata.action_dim
        return self.action_stats.dim

    @property
    def state_dim(self) -> int:
        return self.state_stats.dim


def _stats(d: dict, meta: dict, where: str) -> FeatureStats:
    d = dict(d)
    if "mask" not in d and d.get("names") and not meta.get("normalize_gripper", False):
        d["mask"] = ["gripper" not in str(n).lower() for n in d["names"]]  # spec 13: grippers pass through
    return FeatureStats.from_json(d, where)


def parse_norm_stats(norm_stats) -> dict[str, TagInfo]:
    """norm_stats.json (dict, JSON string or path) -> {tag: TagInfo}. Raises ValueError naming the bad field."""
    if isinstance(norm_stats, (str, os.PathLike)) and os.path.exists(norm_stats):
        with open(norm_stats) as f:
            norm_stats = json.load(f)
    elif isinstance(norm_stats, str):
        norm_stats = json.loads(norm_stats)
    if not isinstance(norm_stats, dict) or not isinstance(norm_stats.get("metadata_by_tag"), dict):
        raise ValueError("norm_stats: expected {'format', 'norm_mode', 'metadata_by_tag': {tag: {...}}}")
    top_mode = norm_stats.get("norm_mode", "q01_q99")
    tags = {}
    for tag, meta in norm_stats["metadata_by_tag"].items():
        where = f"norm_stats.metadata_by_tag[{tag!r}]"
        for key in ("action_stats", "state_stats", "action_horizon"):
            if key not in meta:
                raise ValueError(f"{where}: missing {key!r}")
        mode = meta.get("norm_mode", top_mode)
        if mode not in NORM_MODES:
            raise ValueError(f"{where}: norm_mode {mode!r} not in {NORM_MODES}")
        horizon = int(meta["action_horizon"])
        tags[tag] = TagInfo(
            name=tag, action_stats=_stats(meta["action_stats"], meta, where + ".action_stats"),
            state_stats=_stats(meta["state_stats"], meta, where + ".state_stats"), norm_mode=mode,
            horizon=horizon, n_action_steps=int(meta.get("n_action_steps") or horizon),
            setup_type=str(meta.get("setup_type", "")), control_mode=str(meta.get("control_mode", "")),
            camera_keys=tuple(meta.get("camera_keys") or ()))
    if not tags:
        raise ValueError("norm_stats: metadata_by_tag is empty")
    return tags


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


def _find_asset(ckpt_dir: str, names) -> str | None:
    roots = [os.path.join(ckpt_dir, "assets"), ckpt_dir]
    parent = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_dir)))  # WORKDIR of WORKDIR/checkpoints/<step>
    roots += [os.path.join(parent, "assets")]
    for root in roots:
        for n in names:
            p = os.path.join(root, n)
            if os.path.exists(p):
                return p
    return None


def _is_hf_folder(path: str) -> bool:
    return os.path.exists(os.path.join(path, "config.json")) and not os.path.exists(
        os.path.join(path, "model_config.json")) and any(f.endswith(".safetensors") for f in os.listdir(path))


class Policy:
    """MolmoAct2 inference policy (batch size 1). Thread-safe: calls are serialized by a lock."""

    def __init__(self, model_cfg, params, norm_stats, tokenizer, action_tokenizer=None, *, prompt_bucket: int = 16,
                 use_col_tokens: bool = False, max_images: int = MAX_IMAGES, strict_camera_count: bool = True,
                 normalize_language: bool = True, change_threshold: float = think_lib.CHANGE_THRESHOLD):
        self.cfg = ml_collections.FrozenConfigDict(model_cfg)
        self.model = MolmoAct2(self.cfg)
        self.params = jax.device_put(params)
        self.tags = parse_norm_stats(norm_stats)
        self.tokenizer = tokenizer
        self.action_tokenizer = action_tokenizer
        self.prompt_bucket = int(prompt_bucket)
        self.use_col_tokens = bool(use_col_tokens)
        self.max_images = int(max_images)
        self.strict_camera_count = bool(strict_camera_count)
        self.normalize_language = bool(normalize_language)
        self._check_layout()
        v = self.cfg.vit
        g = -(-(v.image_size // v.patch_size) // self.cfg.connector.pool_size)
        self.image_grid = (g, g)
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
    def load(cls, ckpt_dir: str, norm_stats=None, tokenizer=None, action_tokenizer=None, **kwargs) -> "Policy":
        """Loads a params checkpoint (`params/` + `model_config.json`), a trainer step dir, or an HF MolmoAct2
        folder (via molmoact2_jax.convert.molmoact2_hf.import_hf). Assets are looked up in DIR/assets/ then DIR/:
        norm_stats.json, tokenizer.json (or tokenizer.model), optional config.json (token-id overrides) and the
        OpenFAST folder (assets/action_tokenizer/). Arguments override the assets (objects or paths)."""
        from molmoact2_jax.tokenizers.openfast import OpenFAST
        from molmoact2_jax.tokenizers.text import TextTokenizer
        from molmoact2_jax.checkpoint_io.params import load_params
        ckpt_dir = os.path.abspath(ckpt_dir)
        if not os.path.isdir(ckpt_dir):
            raise FileNotFoundError(f"checkpoint directory not found: {ckpt_dir}")
        if _is_hf_folder(ckpt_dir):
            params, cfg = cls._import_hf(ckpt_dir)
        else:
            params, cfg = load_params(ckpt_dir)
        if norm_stats is None:
            path = _find_asset(ckpt_dir, [NORM_STATS_FILE])
            if path is None:
                raise FileNotFoundError(f"{ckpt_dir}: no {NORM_STATS_FILE} in assets/ or the folder itself; pass "
                                        f"norm_stats=")
            norm_stats = path
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            path = tokenizer or _find_asset(ckpt_dir, ["tokenizer.json", "tokenizer.model"])
            if path is None:
                raise FileNotFoundError(f"{ckpt_dir}: no tokenizer.json in assets/ or the folder itself; pass "
                                        f"tokenizer=")
            hf_cfg_path = _find_asset(ckpt_dir, ["config.json"])
            hf_cfg = None
            if hf_cfg_path is not None:
                with open(hf_cfg_path) as f:
                    hf_cfg = json.load(f)
            tokenizer = TextTokenizer.from_file(str(path), hf_config=hf_cfg)
        if action_tokenizer is None:
            path = _find_asset(ckpt_dir, ACTION_TOKENIZER_DIRS)
            action_tokenizer = OpenFAST.load(path) if path is not None else None
        elif isinstance(action_tokenizer, (str, os.PathLike)):
            action_tokenizer = OpenFAST.load(action_tokenizer)
        return cls(cfg, params, norm_stats, tokenizer, action_tokenizer, **kwargs)

    @staticmethod
    def _import_hf(hf_dir: str):
        """Converts the release folder in memory: nothing is written, so nothing is left behind."""
        from molmoact2_jax.convert import molmoact2_hf
        return molmoact2_hf.load_hf(hf_dir)

    def _check_layout(self):
        lay, t = self.tokenizer.layout, self.cfg.tokens
        bad = [f"{a}: tokenizer {getattr(lay, a)} vs model {t[b]}" for a, b in _LAYOUT_FIELDS.items()
               if b in t and getattr(lay, a) != t[b]]
        if bad:
            raise ValueError("tokenizer and model disagree on special token ids (" + "; ".join(bad) + ")")

    # ------------------------------------------------------------------ jitted bodies
    def _batch(self, ids, images, pooled, attn):
        return dict(input_ids=ids, images=images, pooled_idx=pooled, attention_mask=attn)

    def _continuous_fn(self, params, ids, images, pooled, attn, noise, dim_valid, num_steps):
        batch = self._batch(ids, images, pooled, attn)
        batch["action_dim_valid"] = dim_valid
        return self.model.sample_actions(params, batch, noise=noise, num_steps=num_steps)

    def _generate_fn(self, params, ids, images, pooled, attn, max_new):
        return self.model.generate(params, self._batch(ids, images, pooled, attn), max_new)

    # ------------------------------------------------------------------ validation
    def tag(self, norm_tag) -> TagInfo:
        if not isinstance(norm_tag, str) or norm_tag not in self.tags:
            raise ValueError(f"unknown norm_tag {norm_tag!r}; this checkpoint knows {sorted(self.tags)}")
        return self.tags[norm_tag]

    def check_images(self, images, tag: TagInfo) -> list[np.ndarray]:
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        if not isinstance(images, (list, tuple)):
            raise ValueError(f"images must be a list of HxWx3 arrays in camera order, got {type(images).__name__}")
        n = len(images)
        if not 1 <= n <= self.max_images:
            raise ValueError(f"got {n} images; expected between 1 and {self.max_images}")
        if self.strict_camera_count and tag.camera_keys and n != len(tag.camera_keys):
            raise ValueError(f"norm_tag {tag.name!r} expects {len(tag.camera_keys)} images "
                             f"({', '.join(tag.camera_keys)}), got {n}")
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
        nl = self.normalize_language if normalize_language is None else normalize_language
        s_norm = normalize(state, tag.state_stats, tag.norm_mode)
        bins = state_bins(s_norm, int(self.cfg.tokens.num_state_tokens))
        style = "robot_depth_action" if think else "robot_action"
        prompt = build_robot_prompt(task, len(images), bins.tolist(), tag.setup_type, tag.control_mode, style=style,
                                    normalize_language=nl)
        ids = self.tokenizer.encode_prompt(prompt, image_grids=[self.image_grid] * len(images),
                                           use_col_tokens=self.use_col_tokens)
        if think:
            ids = ids + [int(self.cfg.tokens.depth_start)]   # forced <depth_start> (spec 14)
        n = len(ids)
        bucket = -(-n // self.prompt_bucket) * self.prompt_bucket
        if bucket > self.cfg.max_sequence_length:
            raise ValueError(f"prompt of {n} tokens exceeds model.max_sequence_length={self.cfg.max_sequence_length}")
        padded = np.full((1, bucket), self.pad_id, np.int32)
        padded[0, bucket - n:] = ids
        attn = np.zeros((1, bucket), bool)
        attn[0, bucket - n:] = True
        v = self.cfg.vit
        patches, pooled = preprocess_images(images, size=v.image_size, patch=v.patch_size,
                                            pool=self.cfg.connector.pool_size)
        return dict(ids=padded, attn=attn, images=patches[None], pooled=pooled[None], prompt_tokens=n,
                    state_bins=bins, prompt=prompt)

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

    # ------------------------------------------------------------------ main entry point
    def predict_action(self, images, task: str, state, norm_tag: str, mode: str = "continuous", think: bool = False,
                       depth_cache=None, num_steps: int | None = None, n_action_steps: int | None = None,
                       seed: int | None = None, noise=None, normalize_language: bool | None = None) -> ActionResult:
        """images: list of HxWx3 uint8 (or float) arrays in camera order; task: instruction; state: raw state
        vector; norm_tag: a tag of norm_stats.json; mode: "continuous" (flow expert) or "discrete" (OpenFAST
        tokens); think: MolmoThink depth prefix (with `depth_cache` from the previous call to re-predict only
        changed cells); num_steps: Euler steps (default config flow.num_steps); n_action_steps: default the
        tag's; seed / noise: the flow's starting noise (noise shaped (horizon, 32) wins over seed)."""
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
            if self.action_tokenizer is None:
                raise ValueError("mode='discrete' needs an OpenFAST action tokenizer (assets/action_tokenizer/ or "
                                 "action_tokenizer=)")
            if d > MAX_ACTION_DIM:
                raise ValueError(f"discrete mode supports action_dim <= {MAX_ACTION_DIM}, got {d}")
        inp = self.build_inputs(imgs, task, s, tag, think, normalize_language)
        dim_valid = jnp.asarray((np.arange(self.cfg.action_expert.max_action_dim) < d)[None])
        args = (self.params, jnp.asarray(inp["ids"]), jnp.asarray(inp["images"]), jnp.asarray(inp["pooled"]),
                jnp.asarray(inp["attn"]))
        with self._lock:
            self._calls += 1
            self.compiled_shapes.add((mode, bool(think), len(imgs), inp["ids"].shape[1], h,
                                      steps if mode == "continuous" else None))
            result = ActionResult(actions=None, normalized_actions=None, mode=mode, norm_tag=tag.name,
                                  prompt_tokens=inp["prompt_tokens"])
            if think:
                norm = self._predict_think(args, inp, imgs[0], depth_cache, mode, h, d, x0 if mode == "continuous"
                                           else None, dim_valid, steps, result)
            elif mode == "continuous":
                norm = np.asarray(self._continuous(*args, x0, dim_valid, num_steps=steps))[0, :, :d]
            else:
                tokens, count = self._generate(*args, max_new=16 * h)
                gen = np.asarray(tokens)[0, :int(np.asarray(count)[0])]
                result.generated_token_ids = gen.astype(np.int32)
                norm = self._decode_discrete(gen, h, d, result)
        norm = np.asarray(norm, np.float32)
        result.normalized_actions = norm
        # n_obs_steps = 1 in released configs: the executed steps are [0 : n_action_steps] (spec 11.2)
        result.actions = unnormalize(norm[:n_steps], tag.action_stats, tag.norm_mode).astype(np.float32)
        return result

    def _decode_discrete(self, gen, h, d, result) -> np.ndarray:
        t = self.cfg.tokens
        bpe = from_llm_ids(gen.tolist(), t.action_start, t.action_end, t.action_token_start, t.num_action_tokens)
        actions, valid = self.action_tokenizer.decode([bpe], horizon=h, action_dim=d)
        result.valid = bool(valid[0])   # invalid -> zero chunk (spec 21.5/22.3), flagged instead of raising
        return actions[0]

    def _predict_think(self, args, inp, first_image, depth_cache, mode, h, d, x0, dim_valid, steps, result):
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
        out = self.think.expert_actions(params, cache, slots, x0, dim_valid, steps)
        return np.asarray(out)[0, :, :d]
