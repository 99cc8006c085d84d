"""Tokenizers fitted on converted shards, for models trained from scratch (no released tokenizer fits them):

    molmoact2-data openfast SHARD_DIR... [--norm-stats FILE] [--out DIR] [--vocab-size N] [--scale S]
    molmoact2-data tokenizer SHARD_DIR... [--out FILE] [--vocab-size N]

`openfast`: the OpenFAST action tokenizer fitted on the action chunks training feeds it. Per frame t of every episode
the chunk a[t..t+H-1] (clamped at the episode end, as the converter stores it; H = the tag's action horizon), from
the shards' .npz sidecars (the raw actions; the state only to take the delta of the tag's delta dims), made into
model space by the training transform's own steps (transforms/robot_inputs.py DeltaActions, then
transforms/normalize.py with the tag's norm stats, gripper pass-through included): the very chunks
ModelInputs.answer_ids encodes. No image is decoded.

`tokenizer`: a small byte-level BPE text tokenizer (the kind tests build) trained on the shards' task strings as
the prompt normalises them, inside the prompt template text of every training style, with the special strings the
model layout adds (robot and image tokens) left out: TextTokenizer puts those in as whole tokens. It carries the
base special tokens the text side needs: <|endoftext|> (padding), <|im_start|> and <|im_end|> (chat turns;
<|im_end|> is EOS/BOS), so TextTokenizer.from_file builds the model's token layout on it.

The layer rule (tests/test_package_graph.py) keeps molmoact2_jax.tokenizers (and so `molmoact2-openfast`) free of
data_pipelines imports, which is why fitting from shards is a molmoact2-data command; `molmoact2-openfast fit
--chunks` still fits on chunk files of one's own.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data_pipelines.errors import DataError
from data_pipelines.norm_stats import NORM_STATS_FILE, NormStats, TagInfo
from data_pipelines.shards import check_writable, load_episodes, load_index, sidecar_path
from data_pipelines.transforms.normalize import normalize
from data_pipelines.transforms.prompt import build_robot_prompt, normalize_question_text
from molmoact2_jax.token_layout import TokenLayout
from molmoact2_jax.tokenizers.openfast import OpenFAST
from molmoact2_jax.tokenizers.text import TextTokenizer

OPENFAST_VOCAB = 512        # plenty for normalised chunks (|DCT| <= sqrt(H) * scale); small for a small model
OPENFAST_SCALE = 10
MAX_ACTION_TOKENS = 2048    # <action_k> tokens of the model's layout: BPE ids must fit in them
TEXT_VOCAB = 1024
# base special tokens of the text side: padding, chat turn start and end (<|im_end|> is also EOS / BOS)
TEXT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
STYLES = ("robot_action", "robot_depth_action", "robot_depth")


def default_norm_stats(shard_dirs) -> Path:
    return Path(shard_dirs[0]) / NORM_STATS_FILE


def load_stats(shard_dirs, norm_stats=None) -> NormStats:
    path = Path(norm_stats) if norm_stats else default_norm_stats(shard_dirs)
    if not path.is_file():
        how = "" if norm_stats else f"run molmoact2-data stats {' '.join(map(str, shard_dirs))} first, or "
        raise FileNotFoundError(f"norm stats file not found: {path}; {how}pass --norm-stats FILE")
    return NormStats.load(path)


def _tag_of(shard_dir, stats: NormStats) -> TagInfo:
    tag = load_index(shard_dir)["tag"]
    if tag not in stats.tags:
        raise DataError(f"tag {tag!r} of this shard directory is not in {stats.source} ({sorted(stats.tags)}); "
                        f"compute the stats over it: molmoact2-data stats {shard_dir}",
                        path=Path(shard_dir) / "index.json", key="tag")
    return stats.tags[tag]


def episode_chunks(actions: np.ndarray, states: np.ndarray, tag: TagInfo) -> np.ndarray:
    """One episode's raw actions [T, D] (and states [T, Ds]) -> its T model-space chunks [T, H, D] (float32): chunk t
    is a[min(t + k, T - 1)] for k < H, the tag's delta dims taken w.r.t. s[t], normalised with the tag's stats.
    Batched, it is exactly robot_inputs.actions_to_model_space(tag, chunk, s[t]) per frame (tested)."""
    T, H = len(actions), tag.horizon
    idx = np.minimum(np.arange(T)[:, None] + np.arange(H)[None, :], T - 1)
    chunks = np.asarray(actions, np.float64)[idx]
    dims = np.asarray(tag.delta_action_dims, int)
    if dims.size:  # DeltaActions: a[t+k] - s[t] on the delta dims, before normalisation
        chunks[..., dims] -= np.asarray(states, np.float64)[:, None, dims]
    return normalize(chunks, tag.action_stats, tag.norm_mode)


def shard_chunks(shard_dir, tag: TagInfo) -> Iterator[np.ndarray]:
    """Model-space action chunks [n, H, D] of a shard directory, one array per shard (bounded memory)."""
    index = load_index(shard_dir)
    if tag.horizon > int(index["horizon"]):
        raise DataError(f"norm stats tag {tag.name!r} has action_horizon {tag.horizon}, but the records hold "
                        f"{index['horizon']} actions per frame; use the stats of this conversion",
                        path=Path(shard_dir) / "index.json", key="horizon")
    for s in index["shards"]:
        npz, meta = sidecar_path(shard_dir, s["file"], ".npz"), sidecar_path(shard_dir, s["file"])
        if not npz.exists() or not meta.exists():
            raise DataError("shard sidecar missing (conversion unfinished?)", path=npz if not npz.exists() else meta)
        with np.load(npz) as z:
            state, action = z["state"], z["action"]
        if action.shape[1:] != (tag.action_dim,):
            raise DataError(f"actions have {action.shape[1:]} dims, norm stats tag {tag.name!r} has "
                            f"{tag.action_dim}", path=npz, key="action")
        lengths = [int(e["num_frames"]) for e in json.loads(meta.read_text())["episodes"]]
        if sum(lengths) != len(action):
            raise DataError(f"episodes hold {sum(lengths)} frames, the sidecar {len(action)}", path=npz)
        out, start = [], 0
        for n in lengths:
            if n:
                out.append(episode_chunks(action[start:start + n], state[start:start + n], tag))
            start += n
        if out:
            yield np.concatenate(out)


def fit_openfast(shard_dirs, norm_stats=None, vocab_size: int = OPENFAST_VOCAB,
                 scale: float = OPENFAST_SCALE) -> tuple[OpenFAST, int]:
    """(OpenFAST fitted on the model-space chunks of `shard_dirs`, number of chunks)."""
    if int(vocab_size) != vocab_size or not 0 < vocab_size <= MAX_ACTION_TOKENS:
        raise ValueError(f"--vocab-size {vocab_size}: expected 1..{MAX_ACTION_TOKENS} (the model has "
                         f"{MAX_ACTION_TOKENS} action tokens for the BPE ids)")
    if not scale > 0:
        raise ValueError(f"--scale {scale}: expected > 0")
    stats = load_stats(shard_dirs, norm_stats)
    tags = [_tag_of(d, stats) for d in shard_dirs]
    count = {"n": 0}

    def chunks():  # OpenFAST.fit reads the data twice: a fresh pass over every shard each time
        count["n"] = 0
        for d, tag in zip(shard_dirs, tags):
            for batch in shard_chunks(d, tag):
                count["n"] += len(batch)
                yield batch

    shapes = {(t.horizon, t.action_dim) for t in tags}
    horizon, dim = next(iter(shapes)) if len(shapes) == 1 else (None, None)
    try:
        tok = OpenFAST.fit(chunks, vocab_size=int(vocab_size), scale=scale, time_horizon=horizon, action_dim=dim)
    except ValueError as e:
        if "coefficient range" in str(e):
            raise ValueError(f"{e} (--vocab-size {vocab_size}, --scale {scale})") from None
        if "no chunks" in str(e):
            raise DataError("no frames to fit on", path=shard_dirs[0]) from None
        raise
    return tok, count["n"]


def _special_strings() -> list[str]:
    """Strings TextTokenizer encodes as whole tokens (the model layout's, whatever the base vocabulary) plus the
    base special tokens: left out of the BPE's training text, longest first so a regex alternation takes them
    whole."""
    names = set(TokenLayout.compute(0, 0).special_strings()) | set(TEXT_SPECIAL_TOKENS)
    return sorted(names, key=len, reverse=True)


def prompt_texts(shard_dirs) -> list[str]:
    """Every prompt a training example of `shard_dirs` can have, up to the state bins (all zero here: state tokens
    are special strings): per task (as the prompt normalises it) and training style, with the directory's
    camera count, setup and control mode."""
    texts = []
    for d in shard_dirs:
        index = load_index(d)
        meta = index.get("tag_metadata") or {}
        tasks = sorted({normalize_question_text(e["task"]) for e in load_episodes(d)})
        if not tasks:
            raise DataError("no episodes, so no task strings to train on", path=Path(d) / "index.json")
        state_dim = len(index.get("state_names") or [])
        for task in tasks:
            for style in STYLES:
                texts.append(build_robot_prompt(task, len(index.get("camera_keys") or []), [0] * state_dim,
                                                str(meta.get("setup_type", "")), str(meta.get("control_mode", "")),
                                                style=style, normalize_language=False))
    return texts


def train_text_tokenizer(shard_dirs, vocab_size: int = TEXT_VOCAB) -> tuple[Tokenizer, list[str]]:
    """(byte-level BPE trained on the prompts of `shard_dirs`, the prompts)."""
    floor = len(pre_tokenizers.ByteLevel.alphabet()) + len(TEXT_SPECIAL_TOKENS)
    if int(vocab_size) != vocab_size or vocab_size < floor:
        raise ValueError(f"--vocab-size {vocab_size}: expected at least {floor} (256 byte tokens and "
                         f"{len(TEXT_SPECIAL_TOKENS)} special tokens)")
    prompts = prompt_texts(shard_dirs)
    return train_prompt_tokenizer(prompts, vocab_size), prompts


def train_prompt_tokenizer(prompts, vocab_size: int) -> Tokenizer:
    """Byte-level BPE of at most `vocab_size` entries trained on `prompts` (TEXT_SPECIAL_TOKENS at ids 0, 1, 2); the
    synthetic tiny-recipe task's tokenizer is trained with it too (training/synthetic_data.py)."""
    special = re.compile("|".join(re.escape(s) for s in _special_strings()))
    # TextTokenizer encodes the text between special strings piece by piece: train on exactly those pieces
    pieces = [p for text in prompts for p in special.split(text) if p]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(pieces, trainers.BpeTrainer(
        vocab_size=int(vocab_size), special_tokens=list(TEXT_SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def write_text_tokenizer(shard_dirs, out=None, vocab_size: int = TEXT_VOCAB) -> tuple[Path, TextTokenizer]:
    """Trains the text tokenizer, checks TextTokenizer reads it back and round-trips every prompt, writes it (default
    SHARD_DIR/tokenizer.json of the first directory) and returns (path, the TextTokenizer)."""
    out = Path(out) if out else Path(shard_dirs[0]) / "tokenizer.json"
    check_writable(out.parent, "--out", out)
    tok, prompts = train_text_tokenizer(shard_dirs, vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tok.save(str(tmp))
    try:
        text = TextTokenizer.from_file(str(tmp))
        for p in prompts:
            if text.decode(text.encode(p)) != p:
                raise RuntimeError(f"the trained tokenizer does not round-trip the prompt {p!r}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return out, TextTokenizer.from_file(str(out))


def write_openfast(shard_dirs, out=None, norm_stats=None, vocab_size: int = OPENFAST_VOCAB,
                   scale: float = OPENFAST_SCALE) -> tuple[Path, OpenFAST, int]:
    """Fits OpenFAST on `shard_dirs` and saves it (default SHARD_DIR/openfast of the first directory); returns
    (folder, tokenizer, number of chunks)."""
    out = Path(out) if out else Path(shard_dirs[0]) / "openfast"
    check_writable(out, "--out")
    tok, n = fit_openfast(shard_dirs, norm_stats, vocab_size, scale)
    return tok.save(out), tok, n
