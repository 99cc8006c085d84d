"""OpenFAST action tokenizer (MolmoAct2-FAST): DCT + quantization + byte-level BPE.

Behaviour follows docs/model_notes.md, "OpenFAST action tokens" (the official `UniversalActionProcessor`); the
folder written by `save` is the released layout, loadable by `transformers.PreTrainedTokenizerFast`.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path

import numpy as np
from scipy.fft import dct, idct
from tokenizers import ByteLevelBPETokenizer, Tokenizer
from tokenizers.trainers import BpeTrainer

from molmoact2_jax import storage
from molmoact2_jax.tokenizers import bytelevel_bpe

MAX_ACTION_DIM = 32  # the released tokenizer was trained for dims up to 32
PROCESSOR_CLASS = "UniversalActionProcessor"
CONFIG_KEYS = ("scale", "vocab_size", "min_token", "time_horizon", "action_dim")
IGNORED_CONFIG_KEYS = ("processor_class", "auto_map")  # hub folders carry auto_map for remote code
_REPLACEMENT_CHAR = 0xFFFD  # what the byte-level decoder emits for broken UTF-8


def _check_dim(action_dim: int) -> None:
    if action_dim > MAX_ACTION_DIM:
        raise ValueError(f"OpenFAST discrete actions support action_dim <= {MAX_ACTION_DIM}, got {action_dim}")


def quantized_dct(chunks: np.ndarray, scale: float) -> np.ndarray:
    """Rounded DCT coefficients of chunks [N, T, D] as float64 (cast to float32 first, as the reference does)."""
    x = np.asarray(chunks, dtype=np.float32).astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("action chunks contain NaN or inf")
    # float64 keeps ties identical to the reference; a float32 DCT flips rare roundings
    return np.around(dct(x, axis=1, norm="ortho") * scale)


def _codes_to_strings(codes: np.ndarray) -> list[str]:
    """Rows of non-negative code points [N, L] -> N strings (one UTF-32 decode for the whole batch)."""
    n, length = codes.shape
    if n == 0:
        return []
    if codes.max(initial=0) >= 0xD800:  # surrogates / beyond Unicode cannot be chr()-ed; data is far off the fit
        raise ValueError(f"DCT coefficient too large for OpenFAST (code point {int(codes.max())})")
    text = codes.astype("<u4").tobytes().decode("utf-32-le")
    return [text[i * length:(i + 1) * length] for i in range(n)]


def _as_chunk_array(item, where: str) -> np.ndarray:
    """One fit item -> [N, T, D]; accepts a chunk (T, D) or a batch (N, T, D)."""
    arr = np.asarray(item)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"{where}: expected a chunk (T, D) or a batch (N, T, D), got shape {np.shape(item)}")
    _check_dim(arr.shape[2])
    return arr


def _checked_ids(seq, vocab: int) -> list[int] | None:
    """A non-empty sequence of ids in [0, vocab) as a list of ints, else None (malformed model output)."""
    if type(seq) in (list, tuple) and seq and all(type(v) is int for v in seq):  # fast path, no numpy per row
        return list(seq) if min(seq) >= 0 and max(seq) < vocab else None
    try:
        ids = np.asarray(seq)
    except Exception:  # ragged / unconvertible
        return None
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= vocab:
        return None
    return ids.tolist()


def _flatten_checked(tokens, vocab: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model output -> (indices of well-formed rows, their ids concatenated int64, ids per row).

    Well-formed: a non-empty 1-D sequence of integers in [0, vocab). Lists / tuples / 1-D arrays of ints (what
    generation returns) are checked in one numpy pass; a batch with anything else is checked row by row.
    """
    n = len(tokens)
    if all(type(r) in (list, tuple) or (type(r) is np.ndarray and r.ndim == 1) for r in tokens):
        counts = np.fromiter(map(len, tokens), np.int64, n)
        try:
            flat = np.array(list(chain.from_iterable(tokens)))
        except (ValueError, TypeError, OverflowError):
            flat = None
        if flat is not None and flat.ndim == 1 and (flat.dtype.kind in "iu" or flat.size == 0):
            flat = flat.astype(np.int64)  # uint64 beyond int64 wraps negative, i.e. stays out of range
            row_of = np.repeat(np.arange(n), counts)
            bad = np.bincount(row_of, (flat < 0) | (flat >= vocab), minlength=n) > 0
            keep = ~bad & (counts > 0)
            return np.flatnonzero(keep), flat[keep[row_of]], counts[keep]
    rows, id_lists = [], []
    for b, seq in enumerate(tokens):
        ids = _checked_ids(seq, vocab)
        if ids is not None:
            rows.append(b)
            id_lists.append(ids)
    counts = np.fromiter(map(len, id_lists), np.int64, len(id_lists))
    return np.asarray(rows, np.int64), np.fromiter(chain.from_iterable(id_lists), np.int64), counts


def _decode_with_tokenizer(tokenizer: Tokenizer, flat: np.ndarray, counts: np.ndarray,
                           length: int) -> tuple[np.ndarray, np.ndarray]:
    """The general path: `tokenizers` decodes; rows must give `length` characters and no U+FFFD."""
    id_lists = [part.tolist() for part in np.split(flat, np.cumsum(counts)[:-1])] if len(counts) else []
    codes = np.zeros((len(id_lists), length), np.uint32)
    ok = np.zeros(len(id_lists), bool)
    for r, text in enumerate(tokenizer.decode_batch(id_lists, skip_special_tokens=False)):
        if len(text) == length and chr(_REPLACEMENT_CHAR) not in text:
            codes[r] = np.frombuffer(text.encode("utf-32-le"), "<u4")
            ok[r] = True
    return codes, ok


def _fresh_iter(chunks) -> Iterator:
    if callable(chunks):
        return iter(chunks())
    it = iter(chunks)
    if it is chunks:
        raise TypeError("OpenFAST.fit reads the data twice: pass a re-iterable or a callable returning an iterator")
    return it


def to_llm_ids(bpe_ids: Sequence[int], action_start_id: int, action_end_id: int, action_token_start_id: int,
               num_action_tokens: int | None = None) -> list[int]:
    """BPE ids -> `<action_start>` + (action_token_start_id + k)... + `<action_end>` (caller appends EOS)."""
    ids = [int(k) for k in bpe_ids]
    bad = [k for k in ids if k < 0 or (num_action_tokens is not None and k >= num_action_tokens)]
    if bad:
        raise ValueError(f"BPE ids outside [0, {num_action_tokens}): {bad[:5]}")
    return [action_start_id] + [action_token_start_id + k for k in ids] + [action_end_id]


def from_llm_ids(llm_ids: Sequence[int], action_start_id: int, action_end_id: int, action_token_start_id: int,
                 num_action_tokens: int) -> list[int]:
    """LLM ids -> BPE ids between the first `<action_start>` (or the start) and the next `<action_end>`.

    Tokens in between that are not action tokens are skipped; a missing `<action_end>` reads to the end.
    """
    ids = [int(t) for t in llm_ids]
    begin = ids.index(action_start_id) + 1 if action_start_id in ids else 0
    end = ids.index(action_end_id, begin) if action_end_id in ids[begin:] else len(ids)
    last = action_token_start_id + num_action_tokens
    return [t - action_token_start_id for t in ids[begin:end] if action_token_start_id <= t < last]


class OpenFAST:
    """DCT + byte-level BPE action tokenizer; compatible with the released `UniversalActionProcessor` folders."""

    to_llm_ids = staticmethod(to_llm_ids)
    from_llm_ids = staticmethod(from_llm_ids)

    def __init__(self, tokenizer: Tokenizer, scale: float = 10, vocab_size: int = 2048, min_token: int = 0,
                 time_horizon: int | None = None, action_dim: int | None = None):
        self.tokenizer = tokenizer
        self.scale = scale
        self.vocab_size = vocab_size  # the configured size; the real BPE vocab may be smaller
        self.min_token = int(min_token)
        self.time_horizon = time_horizon
        self.action_dim = action_dim
        self.bpe_vocab_size = tokenizer.get_vocab_size()
        # table-driven batch path for the released kind of tokenizer; identical ids and text (bytelevel_bpe.py)
        self._tables = bytelevel_bpe.ByteLevelBPETables(tokenizer) if bytelevel_bpe.supports(tokenizer) else None

    # ---- fitting ----
    @classmethod
    def fit(cls, chunks: Iterable | Callable[[], Iterable], vocab_size: int = 2048, scale: float = 10, *,
            time_horizon: int | None = None, action_dim: int | None = None) -> "OpenFAST":
        """Train on action chunks, streaming: memory is bounded by the largest single item.

        `chunks` is read twice (pass 1: integer range -> min_token and alphabet; pass 2: BPE), so it must be a
        re-iterable (list, dataset object) or a zero-argument callable returning a fresh iterator. Each item is a
        chunk (T, D) or a batch (N, T, D); T and D may differ between items (embodiments).
        """
        if not (np.isfinite(scale) and scale > 0) or int(vocab_size) != vocab_size or vocab_size <= 0:
            raise ValueError(f"need scale > 0 and a positive integer vocab_size, got {scale}, {vocab_size}")
        lo, hi, count = None, None, 0
        for i, item in enumerate(_fresh_iter(chunks)):
            q = quantized_dct(_as_chunk_array(item, f"chunk item {i}"), scale)
            lo = q.min() if lo is None else min(lo, q.min())
            hi = q.max() if hi is None else max(hi, q.max())
            count += 1
        if count == 0:
            raise ValueError("OpenFAST.fit got no chunks")
        min_token, max_token = int(lo), int(hi)
        if max_token - min_token > vocab_size:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the coefficient range "
                             f"{max_token - min_token} (min {min_token}, max {max_token}); raise it or lower scale")

        def strings() -> Iterator[list[str]]:
            for i, item in enumerate(_fresh_iter(chunks)):
                q = quantized_dct(_as_chunk_array(item, f"chunk item {i}"), scale)
                codes = np.maximum(q.reshape(len(q), -1) - min_token, 0).astype(np.int64)  # time-major flatten
                yield _codes_to_strings(codes)

        bpe = ByteLevelBPETokenizer()  # ByteLevel pre-tokenizer, post-processor and decoder; BPE without unk
        trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
                             initial_alphabet=[chr(i) for i in range(max_token - min_token + 1)],
                             max_token_length=10000)
        bpe._tokenizer.train_from_iterator(strings(), trainer=trainer)  # the wrapper's own train() drops the alphabet
        return cls(bpe._tokenizer, scale=scale, vocab_size=vocab_size, min_token=min_token,
                   time_horizon=time_horizon, action_dim=action_dim)

    # ---- encode / decode ----
    def encode(self, batch) -> list[list[int]]:
        """Chunks -> BPE ids. `batch`: an array (B, T, D), one chunk (T, D), or a list of (T, D) arrays of any shapes."""
        if isinstance(batch, np.ndarray) and batch.ndim in (2, 3):
            arr = batch if batch.ndim == 3 else batch[None]
            groups = [(list(range(len(arr))), arr)]
        else:  # ragged list: one vectorised DCT per distinct shape
            arrays = [np.asarray(c) for c in batch]
            by_shape: dict[tuple, list[int]] = {}
            for i, a in enumerate(arrays):
                if a.ndim != 2 or 0 in a.shape:
                    raise ValueError(f"chunk {i}: expected shape (T, D), got {a.shape}")
                by_shape.setdefault(a.shape, []).append(i)
            groups = [(idx, np.stack([arrays[i] for i in idx])) for idx in by_shape.values()]
        strings: list[str | None] = [None] * sum(len(idx) for idx, _ in groups)
        max_code = 0
        for idx, arr in groups:
            _check_dim(arr.shape[2])
            q = quantized_dct(arr, self.scale)
            # no upper clamp: values above the fitted range fall out of the vocab, as in the reference
            codes = np.maximum(q.reshape(len(q), -1) - self.min_token, 0).astype(np.int64)
            max_code = max(max_code, int(codes.max(initial=0)))
            for i, s in zip(idx, _codes_to_strings(codes)):
                strings[i] = s
        if self._tables is not None:
            return self._tables.encode(strings, max_code)
        return [e.ids for e in self.tokenizer.encode_batch_fast(strings)]

    def decode(self, tokens: Sequence[Sequence[int]], horizon: int | None = None,
               action_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """BPE id sequences -> (actions float64 [B, horizon, action_dim], valid bool [B]).

        Never raises on model output: ids outside [0, vocab), non-integers, empty or wrongly sized sequences and
        broken byte sequences give a zero chunk with valid=False.
        """
        horizon = horizon or self.time_horizon
        action_dim = action_dim or self.action_dim
        if not horizon or not action_dim or int(horizon) <= 0 or int(action_dim) <= 0:
            raise ValueError(f"decode needs positive horizon and action_dim, got {horizon}, {action_dim}")
        horizon, action_dim = int(horizon), int(action_dim)
        _check_dim(action_dim)
        n, length = len(tokens), horizon * action_dim
        rows, flat, counts = _flatten_checked(tokens, self.bpe_vocab_size)
        if self._tables is not None:
            codes, ok = self._tables.decode_codes(flat, counts, length)
        else:
            codes, ok = _decode_with_tokenizer(self.tokenizer, flat, counts, length)
        good = rows[ok]
        if not ok.all():
            codes = codes[ok]
        coeffs = (codes.reshape(len(good), horizon, action_dim).astype(np.float64) + self.min_token) / self.scale
        valid = np.zeros(n, dtype=bool)
        valid[good] = True
        if len(good) == n:  # the usual case: no scatter into a zero array
            return idct(coeffs, axis=1, norm="ortho"), valid
        actions = np.zeros((n, horizon, action_dim), dtype=np.float64)
        actions[good] = idct(coeffs, axis=1, norm="ortho")
        return actions, valid

    # ---- released folder layout (docs/model_notes.md, "OpenFAST action tokens") ----
    def processor_config(self) -> dict:
        return {"processor_class": PROCESSOR_CLASS, "scale": self.scale, "vocab_size": self.vocab_size,
                "min_token": self.min_token, "time_horizon": self.time_horizon, "action_dim": self.action_dim}

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(out / "tokenizer.json"))
        files = {
            "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast",
                                      "clean_up_tokenization_spaces": False},
            "special_tokens_map.json": {},
            "processor_config.json": self.processor_config(),
        }
        for name, content in files.items():
            (out / name).write_text(json.dumps(content, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "OpenFAST":
        """Load a folder written by `save`, by the official class, or downloaded from the hub (with auto_map);
        local or `gs://`."""
        folder = storage.as_path(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"OpenFAST tokenizer folder not found: {folder}")
        for name in ("tokenizer.json", "processor_config.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder}: missing {name}")
        try:
            cfg = json.loads((folder / "processor_config.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{folder / 'processor_config.json'}: not valid JSON ({e})") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{folder / 'processor_config.json'}: expected a JSON object")
        unknown = sorted(set(cfg) - set(CONFIG_KEYS) - set(IGNORED_CONFIG_KEYS))
        if unknown:  # the reference loader passes every key to its constructor, so extra keys break it
            raise ValueError(f"{folder / 'processor_config.json'}: unexpected key(s) {unknown}")
        for key in ("scale", "vocab_size", "min_token"):
            if key not in cfg:
                raise ValueError(f"{folder / 'processor_config.json'}: missing key '{key}'")
        checks = {"scale": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
                  "vocab_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
                  "min_token": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "time_horizon": lambda v: v is None or (isinstance(v, int) and v > 0),
                  "action_dim": lambda v: v is None or (isinstance(v, int) and v > 0)}
        for key, ok in checks.items():
            if key in cfg and not ok(cfg[key]):
                raise ValueError(f"{folder / 'processor_config.json'}: bad value for '{key}': {cfg[key]!r}")
        try:
            with storage.LocalCopy(folder / "tokenizer.json") as local:
                tokenizer = Tokenizer.from_file(local)
        except Exception as e:
            raise ValueError(f"{folder / 'tokenizer.json'}: cannot be read by tokenizers ({e})") from None
        return cls(tokenizer, scale=cfg["scale"], vocab_size=cfg["vocab_size"], min_token=cfg["min_token"],
                   time_horizon=cfg.get("time_horizon"), action_dim=cfg.get("action_dim"))
