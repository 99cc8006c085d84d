"""Synthetic robot data, for tiny recipes that ask for it by name (config.data.source="synthetic") and for tests.

The task: one camera shows a bright square at a random place; the action chunk moves from the square's position
towards the image centre, so actions depend on what the camera shows. Each example is made raw, as a converted
shard's record holds a frame (camera image, state, task, action chunk; depth codes for Think recipes), and then goes
the way a shard's record goes: RobotTransform (data_pipelines/pipeline/robot_transform.py: the shared robot
transforms normalize with the synthetic tag's norm stats, bin the state and build the prompt; the chunk is padded),
ModelInputs (prompt tokens, patches, and the answer: OpenFAST tokens of the chunk in "discrete" / "both" action
modes, none in "continuous"), then training/model_batch.py. The synthetic tag's assets are made here too: its norm
stats (the identity normalization), a text tokenizer trained on its prompts whose ids are the model config's, and
an OpenFAST tokenizer fitted on its chunks; a synthetic run writes them into its checkpoints, so they serve.

Batches are a pure function of (seed, step), generated for the whole global batch and sliced per process, so any
process count sees the same data; the iterator state is the step counter. With `style_weights` (Think recipes) each
example draws a MolmoThink training style, and its depth codes are a function of the image: cells the square covers
hold a "near" code, the others a per-row "floor" code, so the depth answer is learnable from the camera as real
depth is.
"""
from __future__ import annotations

import functools
import json
import os

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from data_pipelines.errors import DataError
from data_pipelines.norm_stats import NormStats
from data_pipelines.pipeline.robot_transform import RobotTransform, RobotTransformConfig
from data_pipelines.shard_tokenizers import OPENFAST_VOCAB, TEXT_SPECIAL_TOKENS, train_prompt_tokenizer
from data_pipelines.transforms import think_styles
from data_pipelines.transforms.model_inputs import ModelInputs
from data_pipelines.transforms.prompt import build_robot_prompt
from data_pipelines.transforms.robot_inputs import actions_to_model_space
from molmoact2_jax.token_layout import TokenLayout
from molmoact2_jax.tokenizers.openfast import OpenFAST
from molmoact2_jax.tokenizers.text import TextTokenizer
from molmoact2_jax.training.model_batch import to_model_batch

# Chunk length of the synthetic task when the config leaves model.action_expert.max_action_horizon to the data (0).
SYNTHETIC_HORIZON = 8
SYNTHETIC_TAG = "synthetic"
CAMERA = "observation.images.image"
TASK = "reach the square"
SETUP_TYPE = "synthetic square task"
CONTROL_MODE = "normalized actions"
IMAGE_SIZE, HALF_SIDE, MARGIN = 64, 6, 8   # the camera image, the square's half side, the square centre's margin
# the fields of a ModelInputs example the model batch is made of
_BATCH_KEYS = ("input_ids", "token_mask", "loss_mask", "image_patches", "pooled_idx", "actions", "action_dim_is_pad",
               "action_is_pad", "has_actions")


# ---------------------------------------------------------------- the raw task
def square_chunk(cy: int, cx: int, horizon: int, action_dim: int) -> np.ndarray:
    """The action chunk [horizon, action_dim] for a square centred at (cy, cx): dims 0-1 go from its place (in
    [-1, 1]) to 0; the others from 0 to half the place, mirrored."""
    if action_dim < 2:
        raise ValueError(f"config.data.synthetic_action_dim={action_dim}: the synthetic task needs at least 2")
    place = np.array([cy, cx], np.float32) / IMAGE_SIZE * 2 - 1
    steps = np.linspace(1.0, 0.0, horizon, dtype=np.float32)[:, None]
    chunk = np.zeros((horizon, action_dim), np.float32)
    chunk[:, :2] = place * steps
    chunk[:, 2:] = 0.5 * np.resize(place[::-1], action_dim - 2) * (1 - steps)
    return chunk


def square_places() -> list[tuple[int, int]]:
    """Every place the square's centre can take."""
    return [(cy, cx) for cy in range(MARGIN, IMAGE_SIZE - MARGIN) for cx in range(MARGIN, IMAGE_SIZE - MARGIN)]


def synthetic_depth_codes(cy: int, cx: int, size: int = IMAGE_SIZE, half: int = HALF_SIDE) -> np.ndarray:
    """The 10x10 depth codes of a synthetic image with the square centred at (cy, cx): 100 + row for cells the
    square overlaps (near), else the row index (a floor receding up the image)."""
    edges = np.linspace(0, size, 11)
    rows = (edges[1:] > cy - half) & (edges[:-1] < cy + half)
    cols = (edges[1:] > cx - half) & (edges[:-1] < cx + half)
    near = rows[:, None] & cols[None, :]
    row = np.broadcast_to(np.arange(10)[:, None], (10, 10))
    return np.where(near, 100 + row, row).astype(np.int32).reshape(-1)


def square_record(background: np.ndarray, cy: int, cx: int, horizon: int, action_dim: int) -> dict:
    """One frame as a converted shard's record holds it (its image decoded): the square drawn on `background`, a
    one-dim zero state, the task, the chunk (no padding) and the image's depth codes."""
    img = background.copy()
    img[cy - HALF_SIDE:cy + HALF_SIDE, cx - HALF_SIDE:cx + HALF_SIDE] = (250, 220, 40)
    return {f"image/{CAMERA}": img, "state": np.zeros(1, np.float32),
            "actions": square_chunk(cy, cx, horizon, action_dim), "action_is_pad": np.zeros(horizon, bool),
            "task": TASK, "episode_id": "synthetic", "frame_index": 0, "depth_codes": synthetic_depth_codes(cy, cx)}


def random_record(rng: np.random.Generator, horizon: int, action_dim: int) -> dict:
    """A frame with a noisy dark background and the square at a random place."""
    background = rng.integers(0, 60, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    cy, cx = (int(v) for v in rng.integers(MARGIN, IMAGE_SIZE - MARGIN, 2))
    return square_record(background, cy, cx, horizon, action_dim)


# ---------------------------------------------------------------- the synthetic tag's assets
def synthetic_norm_stats(action_dim: int, horizon: int) -> dict:
    """norm_stats.json of the synthetic tag: actions and the one-dim state are already in [-1, 1], so q01/q99 =
    -1/1 make normalization the identity; one camera; no gripper pass-through."""
    def feature(dim, name):
        return {"min": [-1.0] * dim, "max": [1.0] * dim, "mean": [0.0] * dim, "std": [0.5] * dim,
                "q01": [-1.0] * dim, "q99": [1.0] * dim, "mask": [True] * dim,
                "names": [f"{name}_{i}" for i in range(dim)], "count": 0}
    meta = {"action_key": "action", "state_keys": ["observation.state"], "camera_keys": [CAMERA],
            "normalize_gripper": True, "action_dim": int(action_dim), "action_horizon": int(horizon),
            "n_action_steps": int(horizon), "setup_type": SETUP_TYPE, "control_mode": CONTROL_MODE,
            "action_stats": feature(action_dim, "action"), "state_stats": feature(1, "state")}
    return {"format": "molmoact2_norm_stats.v1", "norm_mode": "q01_q99", "metadata_by_tag": {SYNTHETIC_TAG: meta}}


@functools.lru_cache(maxsize=8)   # shared, read-only: every data iterator and the assets of a run use one
def synthetic_text_tokenizer(base: int, pad: int, eos: int) -> Tokenizer:
    """A byte-level BPE trained on the synthetic task's prompts (every style), as `molmoact2-data tokenizer` trains
    one on shards, laid out to the model config's tokens: exactly `base` (base_vocab) entries, `<|endoftext|>` /
    `<|im_end|>` at its pad / EOS ids (spare ids are filler tokens), so TextTokenizer.from_file reads back the
    model's token layout."""
    prompts = [build_robot_prompt(TASK, 1, [0], SETUP_TYPE, CONTROL_MODE, style=s) for s in think_styles.STYLES]
    trained = json.loads(train_prompt_tokenizer(prompts, base).to_str())["model"]
    fixed = {pad: "<|endoftext|>", eos: "<|im_end|>"}
    if len(trained["vocab"]) > base or len(fixed) != 2 or max(fixed) >= base or min(fixed) < 0:
        floor = len(pre_tokenizers.ByteLevel.alphabet()) + len(TEXT_SPECIAL_TOKENS)
        raise ValueError(f"config.model.tokens: base_vocab={base}, pad={pad}, eos={eos} cannot hold a byte-level "
                         f"tokenizer (need base_vocab >= {floor} and distinct pad/eos below it)")
    rest = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if t not in fixed.values()]
    fill = iter(rest + [f"<|synthetic_{i}|>" for i in range(base)])
    vocab = {fixed[i] if i in fixed else next(fill): i for i in range(base)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(TEXT_SPECIAL_TOKENS))
    return tok


def place_chunks(horizon: int, action_dim: int) -> np.ndarray:
    """The model-space chunk [n, horizon, action_dim] of every square place, as the input transforms make it."""
    tag = NormStats.load(synthetic_norm_stats(action_dim, horizon)).tag(SYNTHETIC_TAG)
    chunks = np.stack([square_chunk(cy, cx, horizon, action_dim) for cy, cx in square_places()])
    return actions_to_model_space(tag, chunks, np.zeros(1, np.float32))


@functools.lru_cache(maxsize=8)   # shared, read-only, as the text tokenizer
def synthetic_openfast(horizon: int, action_dim: int, num_action_tokens: int) -> OpenFAST:
    """OpenFAST fitted on the chunk of every square place (the task has no other chunks)."""
    return OpenFAST.fit([place_chunks(horizon, action_dim)], vocab_size=min(OPENFAST_VOCAB, num_action_tokens))


# ---------------------------------------------------------------- the batches
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
        self.horizon = horizon or int(model_cfg.action_expert.max_action_horizon) or SYNTHETIC_HORIZON
        self.style_probabilities = think_styles.style_probabilities(style_weights)
        self.stats = NormStats.load(synthetic_norm_stats(action_dim, self.horizon))
        t = model_cfg.tokens
        self.tokenizer = TextTokenizer(synthetic_text_tokenizer(int(t.base_vocab), int(t.pad_token_id),
                                                                int(t.eos_token_id)),
                                       TokenLayout.from_model_tokens(t), "hf")
        self.openfast = None
        if model_cfg.action_mode in ("discrete", "both"):
            self.openfast = synthetic_openfast(self.horizon, action_dim, int(t.num_action_tokens))
        self.transform = self._transform(self.style_probabilities)
        self.inputs = self._inputs(seq_len)
        self.step = 0

    def _transform(self, style_probabilities) -> RobotTransform:
        m, ae = self.cfg, self.cfg.action_expert
        # one camera; no augmentation: every example is a fresh draw, and a crop would move the square off the
        # place its actions are a function of
        cfg = RobotTransformConfig(image_size=int(m.vit.image_size), max_cameras=1,
                                   max_action_horizon=int(ae.max_action_horizon), max_action_dim=int(ae.max_action_dim),
                                   num_state_tokens=int(m.tokens.num_state_tokens), augment=False,
                                   style_probabilities=style_probabilities)
        return RobotTransform(SYNTHETIC_TAG, 0, self.stats.tag(SYNTHETIC_TAG), [CAMERA], cfg)

    def _inputs(self, seq_len: int | None) -> ModelInputs:
        return ModelInputs.for_model(self.tokenizer, self.cfg, seq_len=seq_len, openfast=self.openfast,
                                     action_format=self.cfg.action_mode)

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
        return to_model_batch({k: np.stack([e[k] for e in examples]) for k in _BATCH_KEYS})

    def _example(self, rng: np.random.Generator) -> dict:
        ex = self.transform.from_record(random_record(rng, self.horizon, self.action_dim), rng)
        try:
            return self.inputs(ex)
        except DataError as e:
            if e.key != "seq_len":
                raise
            n = len(self.inputs.tokens(ex)[0])
            raise ValueError(f"config.data.seq_len={self.seq_len} is too short for a {n}-token example") from None

    def longest_example(self) -> int:
        """Tokens of the longest example this data can yield, for sizing seq_len: each style it draws, with the
        square where the chunk's discrete answer is longest (the prompt is the same for every example)."""
        cy, cx = square_places()[0]
        if self.openfast is not None:
            lengths = [len(t) for t in self.openfast.encode(place_chunks(self.horizon, self.action_dim))]
            cy, cx = square_places()[int(np.argmax(lengths))]
        record = square_record(np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), cy, cx, self.horizon,
                               self.action_dim)
        inputs, rng = self._inputs(None), np.random.default_rng(0)
        longest = 0
        for style, p in zip(think_styles.STYLES, self.style_probabilities or (1.0, 0.0, 0.0)):
            if p > 0:
                one_style = tuple(float(s == style) for s in think_styles.STYLES)
                ex = self._transform(one_style).from_record(record, rng)
                longest = max(longest, len(inputs.tokens(ex)[0]))
        return longest


def write_synthetic_assets(cfg, dst: str) -> list[str]:
    """Writes what serving a synthetic run needs into `dst`: norm_stats.json, tokenizer.json and, when the model
    predicts discrete actions, the OpenFAST tokenizer its answers were encoded with. Returns the names."""
    m = cfg.model
    action_dim = int(cfg.data.synthetic_action_dim)
    data = SyntheticRobotData(m, 1, int(cfg.data.seq_len), int(cfg.data.seed), action_dim=action_dim)
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "norm_stats.json"), "w") as f:
        json.dump(synthetic_norm_stats(action_dim, data.horizon), f, indent=1)
    data.tokenizer.backend.save(os.path.join(dst, "tokenizer.json"))
    names = ["norm_stats.json", "tokenizer.json"]
    if data.openfast is not None:
        data.openfast.save(os.path.join(dst, "openfast"))
        names.append("openfast")
    return names
