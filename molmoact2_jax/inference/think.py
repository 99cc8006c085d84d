"""MolmoThink: adaptive depth reasoning at inference (docs/model_notes.md, "MolmoThink").

Sequence after the prompt (whose trigger is `<depth_output><action_output>`): `<depth_start>` (forced) + 100 depth
codes (a row-major 10x10 grid, `<depth_k>`, k < 128) + `<depth_end>`; then the action expert reads the KV cache
of prompt + depth tokens (with the depth gate when the checkpoint has one), or, in discrete mode, greedy decoding
continues to EOS.

Adaptive depth: the first camera image is compared with the cached previous one cell by cell (320x320 bilinear
resize, 10x10 cells of 32x32x3, cosine similarity < 0.996 = changed). Changed cells are re-predicted greedily (logits
restricted to the depth-code rows); unchanged cells are teacher-forced from the cache. The walk over the grid is one
compiled loop of uniform steps: each step feeds one chunk of `width` slots whose first cell is re-predicted when it
changed and whose other cells are the unchanged cells that follow it (plan_steps). Padding slots come after the real
tokens (causal, so they change nothing) and the cache index, next position and validity are rolled back to the real
length, so those slots are overwritten later. The width is chosen per call from STEP_WIDTHS to minimise
steps x STEP_COST (relative cost of one step: a wider chunk costs more on a CPU, about the same on an accelerator;
pass `step_cost` to ThinkDecoder to tune). One program per width and no host round trip per run of cells: a host
loop over runs, or a `lax.cond` per run (it copies the KV cache), made scattered changes slower than full
re-prediction. Batch size 1.

Choices (documented, configurable): `<depth_start>` is appended to the prompt before the prefill (identical to
feeding it as the first decode step); every generated token, including `<depth_end>`, is fed, so the expert's
context holds prompt + `<depth_start>` + codes + `<depth_end>`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import jax
import jax.numpy as jnp

from molmoact2_jax.depth.cells import (CHANGE_THRESHOLD, NUM_CELLS, cell_similarity,  # noqa: F401 (re-exported)
                                       changed_cells)
from molmoact2_jax.models import rtc

STEP_WIDTHS = (1, 4, 16, NUM_CELLS)
STEP_COST = (1.0, 1.3, 3.2, 16.0)  # relative cost of one step, measured on 2 CPU cores (the `small` bench model)


def plan_steps(mask, width: int) -> list[tuple[int, int, bool]]:
    """Decode steps [(start, count, predict_first), ...] for a changed-cell mask and a chunk width: a changed cell
    starts a step; an unchanged cell joins the current step while it has room, else starts one."""
    steps: list[list] = []
    for i, changed in enumerate(np.asarray(mask, bool).reshape(-1).tolist()):
        if changed or not steps or steps[-1][1] >= width:
            steps.append([i, 1, changed])
        else:
            steps[-1][1] += 1
    return [tuple(s) for s in steps]


def choose_width(mask, step_cost=STEP_COST) -> int:
    """The step width with the least estimated cost (steps x relative cost per step) for this mask."""
    costs = [len(plan_steps(mask, w)) * c for w, c in zip(STEP_WIDTHS, step_cost)]
    return STEP_WIDTHS[int(np.argmin(costs))]


def as_depth_cache(cache):
    """None, or a {"image", "depth_bins"} mapping (or an object with those attributes) -> (image, bins | None)."""
    if cache is None:
        return None, None
    get = (lambda k: cache.get(k)) if isinstance(cache, dict) else (lambda k: getattr(cache, k, None))
    image, bins = get("image"), get("depth_bins")
    if image is None or bins is None:
        return None, None
    bins = np.asarray(bins).reshape(-1)
    if bins.size != NUM_CELLS or not np.issubdtype(bins.dtype, np.integer):
        return None, None  # not a usable buffer: decode all 100 codes
    return np.asarray(image), bins.astype(np.int32)


@dataclasses.dataclass
class ThinkStats:
    """Instrumentation of one depth decode."""
    changed_mask: np.ndarray                 # bool [100] (all True without a usable cache)
    predicted_cells: list = dataclasses.field(default_factory=list)   # cells whose code was re-predicted
    forced_cells: list = dataclasses.field(default_factory=list)      # cells fed from the cache
    width: int = 1                           # chunk slots per decode step (choose_width)
    steps: int = 0                           # Backbone.decode steps for the 100 codes (plan_steps)
    tail_tokens: int = 0                     # tokens decoded after the 100 codes (until <depth_end>)

    @property
    def num_predicted(self) -> int:
        return len(self.predicted_cells)


# ---------------------------------------------------------------------------------------------------------------
class ThinkDecoder:
    """Jitted pieces of the Think decode for one `MolmoAct2`; compiled once per shape and reused."""

    def __init__(self, model, threshold: float = CHANGE_THRESHOLD, step_cost=STEP_COST):
        self.model = model
        self.cfg = model.cfg
        self.threshold = float(threshold)
        if len(step_cost) != len(STEP_WIDTHS):
            raise ValueError(f"step_cost needs one relative cost per width {STEP_WIDTHS}, got {step_cost}")
        self.step_cost = tuple(float(c) for c in step_cost)
        t = self.cfg.tokens
        self.code0, self.num_codes = int(t.depth_token_start), int(t.num_depth_tokens)
        self._prefill = jax.jit(self._prefill_fn, static_argnames=("cache_size",))
        self._walk = jax.jit(self._walk_fn, static_argnames=("width",), donate_argnums=(1,))
        self._greedy = jax.jit(self._greedy_fn, static_argnames=("max_steps",))
        self._expert = jax.jit(self._expert_fn, static_argnames=("num_steps",))

    # ---- jitted bodies
    def _prefill_fn(self, params, ids, images, pooled, attn, cache_size):
        batch = dict(input_ids=ids, images=images, pooled_idx=pooled, attention_mask=attn)
        logits, cache = self.model.prefill(params, batch, cache_size)
        return logits[0, -1], cache

    def _feed_fn(self, params, tokens, cache):
        logits, cache = self.model.decode(params, tokens, cache)
        return logits[0, -1], cache

    def _feed_chunk_fn(self, params, tokens, n, cache):
        """Feeds tokens[:, :n] of a padded chunk [1, bucket]; returns the logits after token n-1."""
        index, pos = cache["index"], cache["next_position"]
        logits, new = self.model.decode(params, tokens, cache)
        slots = jnp.arange(new["valid"].shape[1])
        pad = (slots >= index + n) & (slots < index + tokens.shape[1])
        new = dict(new, valid=new["valid"] & ~pad[None], index=index + n, next_position=pos + n)
        return jax.lax.dynamic_index_in_dim(logits[0], n - 1, keepdims=False), new

    def _walk_fn(self, params, cache, logits, codes, starts, counts, predict, num_steps, width):
        """Steps j < num_steps (plan_steps, padded to 100): feed cells [starts[j], starts[j] + counts[j]) as one
        chunk of `width` slots; the first is the restricted argmax when predict[j], the rest come from `codes`."""
        padded = jnp.concatenate([codes, jnp.zeros(width, jnp.int32)])  # chunk slices never clamp

        def step(j, s):
            cache, logits, padded = s
            start = starts[j]
            guess = jnp.argmax(jax.lax.dynamic_slice_in_dim(logits, self.code0, self.num_codes)).astype(jnp.int32)
            padded = padded.at[start].set(jnp.where(predict[j], guess, padded[start]))
            chunk = (jax.lax.dynamic_slice_in_dim(padded, start, width) + self.code0)[None]
            if width == 1:
                logits, cache = self._feed_fn(params, chunk, cache)
            else:
                logits, cache = self._feed_chunk_fn(params, chunk, counts[j], cache)
            return cache, logits, padded

        cache, logits, padded = jax.lax.fori_loop(0, num_steps, step, (cache, logits, padded))
        return padded[:NUM_CELLS], cache, logits

    def _greedy_fn(self, params, cache, logits, stop_id, max_steps):
        """Greedy over the full vocabulary, feeding each token, until `stop_id` (fed too) or max_steps."""
        out, n, cache, logits = self.model.greedy(params, cache, logits[None], max_steps, stop_id)
        return out[0], n[0], cache, logits[0]

    def _expert_fn(self, params, keys, values, slot_ids, valid, noise, dim_valid, rtc_args, num_steps):
        cache = dict(keys=keys, values=values, valid=valid)
        guidance = None if rtc_args is None else rtc.make_guidance(*rtc_args)
        return self.model.actions_from_cache(params, cache, slot_ids, noise=noise, action_dim_valid=dim_valid,
                                             num_steps=num_steps, guidance=guidance)

    # ---- host orchestration
    def cache_size(self, prompt_len: int, horizon: int, discrete: bool) -> int:
        need = prompt_len + NUM_CELLS + max(8, horizon) + (16 * horizon if discrete else 0) + STEP_WIDTHS[-1]
        return -(-need // 64) * 64

    def decode_depth(self, params, ids, images, pooled, attn, first_image, depth_cache, horizon: int,
                     cache_size: int):
        """Prefill (prompt already ending in `<depth_start>`), then the 100 codes and the tail up to
        `<depth_end>`. Returns (codes int32 [100], generated ids list (from <depth_start>), cache, logits,
        ThinkStats)."""
        prev_image, prev_bins = as_depth_cache(depth_cache)
        if prev_bins is None:
            mask = np.ones(NUM_CELLS, bool)
        else:
            mask = changed_cells(first_image, prev_image, self.threshold)
        stats = ThinkStats(changed_mask=mask)
        logits, cache = self._prefill(params, ids, images, pooled, attn, cache_size=cache_size)
        codes = np.zeros(NUM_CELLS, np.int32) if prev_bins is None else prev_bins
        width = choose_width(mask, self.step_cost)
        steps = plan_steps(mask, width)
        table = np.zeros((3, NUM_CELLS), np.int32)  # start, count, predict; columns past len(steps) unused
        table[:, :len(steps)] = np.array(steps, np.int32).T
        codes, cache, logits = self._walk(params, cache, logits, jnp.asarray(codes), jnp.asarray(table[0]),
                                          jnp.asarray(table[1]), jnp.asarray(table[2] > 0), jnp.int32(len(steps)),
                                          width=width)
        stats.width, stats.steps = width, len(steps)
        stats.predicted_cells = np.flatnonzero(mask).tolist()
        stats.forced_cells = np.flatnonzero(~mask).tolist()
        tail, n, cache, logits = self._greedy(params, cache, logits, jnp.int32(self.cfg.tokens.depth_end),
                                              max_steps=max(8, int(horizon)))
        n = int(n)
        stats.tail_tokens = n
        codes = np.asarray(codes, np.int32)
        generated = [int(self.cfg.tokens.depth_start)] + [int(c) + self.code0 for c in codes] + \
            [int(t) for t in np.asarray(tail)[:n]]
        return codes, generated, cache, logits, stats

    def continue_discrete(self, params, cache, logits, max_new: int):
        """Greedy to EOS after the depth tokens (discrete Think). Returns the generated ids (EOS included)."""
        out, n, _, _ = self._greedy(params, cache, logits, jnp.int32(self.cfg.tokens.eos_token_id),
                                    max_steps=int(max_new))
        return [int(t) for t in np.asarray(out)[:int(n)]]

    def expert_actions(self, params, cache, slot_ids, noise, dim_valid, num_steps: int, rtc_args=None):
        """The flow expert on the KV cache (prompt + depth tokens). slot_ids: int [1, cache_size] (pad where
        unused); rtc_args: real-time chunking, the arguments of `rtc.make_guidance`. Returns normalized actions
        [1, H, max_action_dim]."""
        return self._expert(params, cache["keys"], cache["values"], jnp.asarray(slot_ids), cache["valid"],
                            noise, dim_valid, rtc_args, num_steps=num_steps)
