"""Synthetic robot batches for tiny recipes when no dataset is configured (and for tests).

Each example shows one camera image with a bright square; the normalized action chunk moves from the square's
position towards the image centre, so actions depend on what the camera shows. In "discrete" / "both" action
modes the answer encodes the first action step in `<action_k>` bins, giving the LM loss a learnable target too;
"continuous" examples are prompt-only, as real ones are. Batches are a pure function of
(seed, step), generated for the whole global batch and sliced per process, so any process count sees the same
data; the iterator state is the step counter.
With `style_weights` (Think recipes) each example draws a MolmoThink training style (data_pipelines think_styles)
and its depth codes are a function of the image: cells the square covers hold a "near" code, the others a
per-row "floor" code, so the depth answer is learnable from the camera as real depth is.
"""
from __future__ import annotations

import json
import os

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from data_pipelines.transforms import think_styles
from molmoact2_jax.preprocessing.image import preprocess_images
from molmoact2_jax.tokenizers.openfast import OpenFAST


# Chunk length of the synthetic task when the config leaves model.action_expert.max_action_horizon to the data (0).
SYNTHETIC_HORIZON = 8


class SyntheticRobotData:
    def __init__(self, model_cfg, global_batch: int, seq_len: int, seed: int, process_index: int = 0,
                 process_count: int = 1, action_dim: int = 4, horizon: int | None = None, style_weights=None):
        if global_batch % process_count:
            raise ValueError(f"config.data.global_batch_size={global_batch} is not divisible by "
                             f"{process_count} processes")
        self.cfg, self.seq_len, self.seed = model_cfg, seq_len, seed
        self.global_batch, self.local = global_batch, global_batch // process_count
        self.offset = process_index * self.local
        self.action_dim = action_dim
        self.horizon = horizon or model_cfg.action_expert.max_action_horizon
        self.style_probabilities = think_styles.style_probabilities(style_weights)
        self.step = 0

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = self.make_global_batch(self.step)
        self.step += 1
        return {k: v[self.offset:self.offset + self.local] for k, v in batch.items()}

    def make_global_batch(self, step: int) -> dict:
        rng = np.random.default_rng([self.seed, step])
        examples = [self._example(rng) for _ in range(self.global_batch)]
        return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

    def longest_example(self) -> int:
        """Tokens of the longest example this data can yield (over the styles it draws), for sizing seq_len."""
        probs = self.style_probabilities or (1.0, 0.0, 0.0)
        seq_len, self.seq_len = self.seq_len, int(self.cfg.max_sequence_length)
        try:
            return max(int(self._example(np.random.default_rng(0), style)["attention_mask"].sum())
                       for style, p in zip(think_styles.STYLES, probs) if p > 0)
        finally:
            self.seq_len = seq_len

    def _example(self, rng, style: str | None = None) -> dict:
        c, t = self.cfg, self.cfg.tokens
        size, ae = 64, c.action_expert
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        cy, cx = rng.integers(8, size - 8, 2)
        img[cy - 6:cy + 6, cx - 6:cx + 6] = (250, 220, 40)
        target = np.array([cy, cx], np.float32) / size * 2 - 1          # square position in [-1, 1]
        steps = np.linspace(1.0, 0.0, self.horizon, dtype=np.float32)[:, None]
        chunk = np.zeros((self.horizon, ae.max_action_dim), np.float32)
        chunk[:, :2] = target * steps
        chunk[:, 2:self.action_dim] = 0.5 * target[::-1] * (1 - steps)
        patches, pooled = preprocess_images([img], size=c.vit.image_size, patch=c.vit.patch_size,
                                            pool=c.connector.pool_size)
        n_tok = int((pooled >= 0).any(-1).sum())
        task = list(rng.integers(10, 200, 6))
        style = style or think_styles.sample_style(rng, self.style_probabilities)
        trigger = {"robot_action": [t.action_output], "robot_depth": [t.depth_output],
                   "robot_depth_action": [t.depth_output, t.action_output]}[style]
        prompt = [t.eos_token_id] + task + [t.image_start] + [t.image_patch] * n_tok + [t.image_end] + [
            t.state_start, t.state_token_start + 128, t.state_end, t.eos_token_id] + trigger
        # The answer follows data_pipelines' model_inputs: "continuous" robot examples are prompt-only, since the
        # expert may read every prompt position and a discrete answer there would hand it the first action.
        answer = []
        if style != "robot_action":
            answer = think_styles.depth_span(synthetic_depth_codes(cy, cx, size), t.depth_start, t.depth_end,
                                             t.depth_token_start, t.num_depth_tokens)
        if style == "robot_depth":
            answer.append(t.eos_token_id)
        elif c.action_mode != "continuous":
            bins = np.clip(np.rint((chunk[0, :self.action_dim] + 1) / 2 * 255), 0, 255).astype(int)
            answer += [t.action_start] + [t.action_token_start + int(b) for b in bins] + [t.action_end, t.eos_token_id]
        seq = prompt + answer
        if len(seq) > self.seq_len:
            raise ValueError(f"config.data.seq_len={self.seq_len} is too short for a {len(seq)}-token example")
        ids = np.full(self.seq_len, -1, np.int32)
        ids[:len(seq)] = seq
        target_ids = np.full(self.seq_len, -1, np.int32)
        target_ids[:len(seq) - 1] = seq[1:]
        loss_mask = np.zeros(self.seq_len, np.float32)
        loss_mask[len(prompt) - 1:len(seq) - 1] = 1.0
        dim_valid = np.arange(ae.max_action_dim) < self.action_dim
        return dict(input_ids=ids, attention_mask=ids >= 0, target_ids=target_ids, loss_mask=loss_mask,
                    images=patches, pooled_idx=pooled, actions=chunk, action_dim_valid=dim_valid,
                    horizon_valid=np.ones(self.horizon, bool), has_actions=np.array(style != "robot_depth"))


def synthetic_depth_codes(cy: int, cx: int, size: int, half: int = 6) -> np.ndarray:
    """The 10x10 depth codes of a synthetic image with the square centred at (cy, cx): 100 + row for cells the
    square overlaps (near), else the row index (a floor receding up the image)."""
    edges = np.linspace(0, size, 11)
    rows = (edges[1:] > cy - half) & (edges[:-1] < cy + half)
    cols = (edges[1:] > cx - half) & (edges[:-1] < cx + half)
    near = rows[:, None] & cols[None, :]
    row = np.broadcast_to(np.arange(10)[:, None], (10, 10))
    return np.where(near, 100 + row, row).astype(np.int32).reshape(-1)


# ---------------------------------------------------------------- assets of a synthetic run
SYNTHETIC_TAG = "synthetic"


def synthetic_norm_stats(action_dim: int, horizon: int) -> dict:
    """norm_stats.json (spec 13 schema) of the synthetic embodiment: actions and the one-dim state are already in
    [-1, 1], so q01/q99 = -1/1 make normalization the identity; one camera; no gripper pass-through."""
    def feature(dim, name):
        return {"min": [-1.0] * dim, "max": [1.0] * dim, "mean": [0.0] * dim, "std": [0.5] * dim,
                "q01": [-1.0] * dim, "q99": [1.0] * dim, "mask": [True] * dim,
                "names": [f"{name}_{i}" for i in range(dim)], "count": 0}
    meta = {"action_key": "action", "state_keys": ["observation.state"], "camera_keys": ["observation.images.image"],
            "normalize_gripper": True, "action_dim": int(action_dim), "action_horizon": int(horizon),
            "n_action_steps": int(horizon), "setup_type": "synthetic bright-square task (no robot)",
            "control_mode": "normalized synthetic actions",
            "action_stats": feature(action_dim, "action"), "state_stats": feature(1, "state")}
    return {"format": "molmoact2_norm_stats.v1", "norm_mode": "q01_q99", "metadata_by_tag": {SYNTHETIC_TAG: meta}}


def write_synthetic_tokenizer(tokens_cfg, path: str) -> str:
    """A byte-level BPE tokenizer.json with exactly `base_vocab` entries whose `<|endoftext|>` / `<|im_end|>` sit at
    the model's pad / EOS ids, so the run's token layout is reproduced by TextTokenizer.from_file. It has no merges
    (every byte is a token): the synthetic model never saw text, so any encoding of the task will do."""
    base, pad, eos = int(tokens_cfg.base_vocab), int(tokens_cfg.pad_token_id), int(tokens_cfg.eos_token_id)
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    fixed = {pad: "<|endoftext|>", eos: "<|im_end|>"}
    if base < len(byte_chars) + 3 or len(fixed) != 2 or max(fixed) >= base:
        raise ValueError(f"config.model.tokens: base_vocab={base}, pad={pad}, eos={eos} cannot hold a byte-level "
                         f"tokenizer (need base_vocab >= {len(byte_chars) + 3} and distinct pad/eos below it)")
    fill = iter(sorted(byte_chars) + ["<|im_start|>"] + [f"<|synthetic_{i}|>" for i in range(base)])
    vocab = {fixed[i] if i in fixed else next(fill): i for i in range(base)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.save(path)
    return path


def write_synthetic_assets(cfg, dst: str) -> list[str]:
    """Writes what serving a synthetic run needs into `dst`: norm_stats.json, tokenizer.json and, when the model
    predicts discrete actions, an OpenFAST tokenizer fitted on the synthetic action chunks. Returns the names."""
    m = cfg.model
    action_dim = int(cfg.data.get("synthetic_action_dim", 4))
    data = SyntheticRobotData(m, 1, int(cfg.data.seq_len), int(cfg.data.seed), action_dim=action_dim)
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "norm_stats.json"), "w") as f:
        json.dump(synthetic_norm_stats(action_dim, data.horizon), f, indent=1)
    write_synthetic_tokenizer(m.tokens, os.path.join(dst, "tokenizer.json"))
    names = ["norm_stats.json", "tokenizer.json"]
    if m.action_mode in ("discrete", "both"):
        chunks = [data.make_global_batch(i)["actions"][0, :, :action_dim] for i in range(128)]
        vocab = min(512, int(m.tokens.num_action_tokens))
        OpenFAST.fit(chunks, vocab_size=vocab).save(os.path.join(dst, "openfast"))
        names.append("openfast")
    return names
