"""Pack several examples into one fixed-length sequence (Grain IterDataset, checkpointable).

Token features (`input_ids`, `loss_mask`) are concatenated up to `seq_len`; `segment_ids` number
the examples 1..k (0 = padding) and `positions` restart at 0 per example, so attention can be
blocked per segment. Every other feature is stacked to [max_examples, ...] with `example_mask`
(the per-example flow-loss mask is example_mask & ~action_is_pad), like MolmoAct2's
pad_packed_action_chunks with packed_action_chunk_cap. Greedy in order: an example that does
not fit starts the next pack. The iterator state is the parent state before any example still
pending, so a restore re-reads it and continues exactly.
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np

TOKEN_KEYS = ("input_ids", "loss_mask")


@dataclasses.dataclass(frozen=True)
class PackConfig:
    seq_len: int
    max_examples: int = 5
    pad_id: int = 0


def pack_examples(examples: list[dict], cfg: PackConfig) -> dict:
    L = cfg.seq_len
    out = {"input_ids": np.full(L, cfg.pad_id, np.int32), "loss_mask": np.zeros(L, np.float32),
           "segment_ids": np.zeros(L, np.int32), "positions": np.zeros(L, np.int32)}
    pos = 0
    for k, ex in enumerate(examples):
        n = len(ex["input_ids"])
        out["input_ids"][pos:pos + n] = ex["input_ids"]
        out["loss_mask"][pos:pos + n] = ex["loss_mask"]
        out["segment_ids"][pos:pos + n] = k + 1
        out["positions"][pos:pos + n] = np.arange(n)
        pos += n
    out["example_mask"] = np.arange(cfg.max_examples) < len(examples)
    for key in examples[0]:
        if key in TOKEN_KEYS or key == "token_mask":
            continue
        first = np.asarray(examples[0][key])
        # strings (prompt, episode id, style) as objects: a fixed-width dtype taken from the first example would
        # cut longer ones short
        text = first.dtype.kind in "US"
        stacked = np.full((cfg.max_examples,) + first.shape, "", object) if text else \
            np.zeros((cfg.max_examples,) + first.shape, first.dtype)
        for k, ex in enumerate(examples):
            stacked[k] = ex[key]
        out[key] = stacked
    return out


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, cfg: PackConfig):
        super().__init__(parent)
        self._cfg = cfg
        self._pending = None          # an example read but not yet emitted
        self._pending_state = None    # parent state before that example was read

    def __next__(self) -> dict:
        cfg, group, used = self._cfg, [], 0
        while len(group) < cfg.max_examples:
            if self._pending is None:
                state = self._parent.get_state()
                try:
                    ex = next(self._parent)
                except StopIteration:
                    break
                self._pending, self._pending_state = ex, state
            n = len(self._pending["input_ids"])
            if n > cfg.seq_len:
                raise ValueError(f"example of {n} tokens exceeds PackConfig.seq_len {cfg.seq_len} "
                                 f"(episode {self._pending.get('episode_id')})")
            if used + n > cfg.seq_len:
                break
            group.append(self._pending)
            used += n
            self._pending = self._pending_state = None
        if not group:
            raise StopIteration
        return pack_examples(group, cfg)

    def get_state(self):
        parent = self._pending_state if self._pending is not None else self._parent.get_state()
        return {"parent": parent}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self._pending = self._pending_state = None


class PackIterDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, cfg: PackConfig):
        super().__init__(parent)
        self._cfg = cfg

    def __iter__(self):
        return _PackIterator(self._parent.__iter__(), self._cfg)
