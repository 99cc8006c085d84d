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

The numpy side (request checks, prompt and image encoding, un-normalization, the NaN/inf refusal) is
`inference/observation.py`'s ObservationCodec (`policy.codec`), shared with the ONNX runtime (molmoact2_jax/runtime/).
"""
from __future__ import annotations

import threading

import numpy as np
import jax
import jax.numpy as jnp
import ml_collections

from data_pipelines.norm_stats import TagInfo
from molmoact2_jax.inference import loading
from molmoact2_jax.inference import think as think_lib
from molmoact2_jax.inference.observation import (MAX_IMAGES, MODES, ActionResult, CodecRequests,  # noqa: F401
                                                  ObservationCodec, _short_camera_name)
from molmoact2_jax.models import rtc
from molmoact2_jax.models.molmoact2 import MolmoAct2
from molmoact2_jax.tokenizers.openfast import MAX_ACTION_DIM, from_llm_ids


class Policy(CodecRequests):
    """MolmoAct2 inference policy (batch size 1). Thread-safe: calls are serialized by a lock."""

    def __init__(self, model_cfg, params, norm_stats, tokenizer, action_tokenizer=None, *, prompt_bucket: int = 16,
                 use_col_tokens: bool = False, max_images: int = MAX_IMAGES, strict_camera_count: bool = True,
                 normalize_language: bool = True, change_threshold: float = think_lib.CHANGE_THRESHOLD):
        self.cfg = ml_collections.FrozenConfigDict(model_cfg)
        self.model = MolmoAct2(self.cfg)
        self.params = jax.device_put(params)
        # Request checks, prompt and image encoding, un-normalization: numpy only, shared with the ONNX runtime
        self.codec = ObservationCodec(self.cfg, norm_stats, tokenizer, prompt_bucket=prompt_bucket,
                                      use_col_tokens=use_col_tokens, max_images=max_images,
                                      strict_camera_count=strict_camera_count, normalize_language=normalize_language)
        self.norm_stats = self.codec.norm_stats
        self.tags = self.codec.tags
        self.tokenizer = tokenizer
        self.action_tokenizer = action_tokenizer
        self.model_inputs = self.codec.model_inputs
        self.image_grid = self.codec.image_grid
        self.pad_id = self.codec.pad_id
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

    # ------------------------------------------------------------------ request checks and encoding (codec)
    # The codec's settings, read through so the policy and its codec cannot disagree.
    prompt_bucket = property(lambda self: self.codec.prompt_bucket)
    use_col_tokens = property(lambda self: self.codec.use_col_tokens)
    max_images = property(lambda self: self.codec.max_images)
    strict_camera_count = property(lambda self: self.codec.strict_camera_count)
    normalize_language = property(lambda self: self.codec.normalize_language)

    @property
    def has_expert(self) -> bool:
        """Whether the model has the flow head (mode="continuous"); else only mode="discrete" works."""
        return self.model.expert is not None

    def build_inputs(self, images, task: str, state, tag: TagInfo, think: bool = False,
                     normalize_language: bool | None = None, pad_to: int | None = None) -> dict:
        """Prompt ids (left-padded to the bucket, or to exactly `pad_to`) + image patches, the model inputs of one
        observation (ObservationCodec.build_inputs)."""
        return self.codec.build_inputs(images, task, state, tag, think, normalize_language, pad_to)

    def _draw_noise(self, horizon: int, seed, noise) -> jnp.ndarray:
        if noise is not None:
            return jnp.asarray(self.codec.check_noise(noise, horizon))
        if seed is None:
            seed = np.random.SeedSequence().entropy % (2 ** 31)
        return self._noise(jax.random.PRNGKey(int(seed)), horizon)

    def rtc_guidance(self, prev_chunk, inference_delay, execution_horizon, max_guidance_weight, tag: TagInfo,
                     state, n_steps: int):
        """Checks the real-time chunking arguments (ObservationCodec.rtc_guidance)."""
        return self.codec.rtc_guidance(prev_chunk, inference_delay, execution_horizon, max_guidance_weight, tag,
                                       state, n_steps)

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
        req = self.codec.check_request(images, state, norm_tag, mode, n_action_steps)
        tag, imgs, s, n_steps = req.tag, req.images, req.state, req.n_steps
        h, d = tag.horizon, tag.action_dim
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
        dim_valid = jnp.asarray(self.codec.dim_valid(tag))
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
        return self.codec.finish(result, norm, tag, s, n_steps, think, delay, target, prev)

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
