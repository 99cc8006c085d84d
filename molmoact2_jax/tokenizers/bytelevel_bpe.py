"""Batch fast path for a plain byte-level BPE `tokenizers.Tokenizer` (the OpenFAST tokenizer's kind).

Action strings are a few hundred characters from a small alphabet, so much of the work around the BPE can be
served from tables:

* encode: split with an equivalent Python regex whose character classes are read off the tokenizer's own
  pre-tokenizer (probing each code point), then look each word up in a word -> ids cache. A row with a word never
  seen before is encoded whole by `tokenizers` (the BPE is always theirs), and its ids fill the cache. So
  chunks seen before (later epochs, repeated frames) skip BPE; new chunks cost what `tokenizers` costs.
* decode: a vocabulary -> bytes table gathered with numpy; rows of pure ASCII bytes need no UTF-8 decoding,
  others are decoded strictly per row (what `from_utf8_lossy` keeps without U+FFFD).

Only tokenizers whose JSON matches the released OpenFAST layout qualify (`supports`); anything else, and any row
with characters or tokens outside the tables, takes the `tokenizers` path, so results are always identical.
"""
from __future__ import annotations

import json
import re
import threading
from itertools import accumulate, chain

import numpy as np
from tokenizers import Tokenizer

MIN_PROBED = 256  # Latin-1 at least, so every character class below is non-empty
MAX_CODE = 0xD800  # surrogates and above never come from OpenFAST strings
MAX_CACHED_WORDS = 1 << 18  # the word cache is cleared once past this: about 50 MB at most


def _gpt2_byte_chars() -> dict[str, int]:
    """The byte-level alphabet: printable Latin-1 bytes stand for themselves, the rest for 256 + n, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def supports(tokenizer: Tokenizer) -> bool:
    """True for a deterministic BPE with a plain ByteLevel split/decoder, no normalizer and no added tokens."""
    spec = json.loads(tokenizer.to_str())
    pre, dec, model = spec.get("pre_tokenizer") or {}, spec.get("decoder") or {}, spec.get("model") or {}
    return (spec.get("normalizer") is None and not spec.get("added_tokens")
            and pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space") and pre.get("use_regex", True)
            and dec.get("type") == "ByteLevel"
            and model.get("type") == "BPE" and model.get("dropout") is None
            and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix")
            and not model.get("byte_fallback"))


def _char_class(codes: list[int]) -> str:
    """Code points -> a regex character class body made of escaped ranges."""
    parts, start = [], None
    for i, c in enumerate(codes):
        if start is None:
            start = c
        if i + 1 == len(codes) or codes[i + 1] != c + 1:
            parts.append(f"\\u{start:04x}" if start == c else f"\\u{start:04x}-\\u{c:04x}")
            start = None
    return "".join(parts)


class ByteLevelBPETables:
    """Cached split + word lookup for encode and a byte table for decode, over one `tokenizers.Tokenizer`."""

    def __init__(self, tokenizer: Tokenizer):
        if not supports(tokenizer):
            raise ValueError("tokenizer is not a plain byte-level BPE; use it directly")
        self.tokenizer = tokenizer
        # (code points probed, split function over them), replaced as one tuple once both are complete: Grain's
        # read threads encode through one tables object, and a reader must never see a bound without its split
        # (publishing `_probed` before `_split` crashed training with "'NoneType' object is not callable").
        self._state: tuple = (0, None)
        self._classes: dict[str, list[int]] = {"L": [], "N": [], "O": [], "S": []}
        self._probe_lock = threading.Lock()  # one thread probes; the others wait and use its result
        self._words: dict[str, list[int]] = {}
        self._byte_table()

    @property
    def _probed(self) -> int:
        return self._state[0]

    def __getstate__(self):  # Grain worker processes get a pickled copy: a lock does not pickle, a fresh one will do
        state = dict(self.__dict__)
        del state["_probe_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._probe_lock = threading.Lock()

    # ---- encode ----
    def _probe(self, upto: int):
        """Classify code points [probed, upto) as letter / number / other / space by asking the pre-tokenizer and
        publish the split over them; returns the split function for code points below the new bound. Thread-safe:
        the classes are built in a private copy under a lock and published with the split in one assignment."""
        with self._probe_lock:
            probed, split = self._state
            if upto <= probed:  # another thread probed this far while we waited
                return split
            pieces = self.tokenizer.pre_tokenizer.pre_tokenize_str
            classes = {k: list(v) for k, v in self._classes.items()}
            for code in range(probed, upto):
                ch = chr(code)
                kinds = [k for k, lead in (("L", "a"), ("N", "1"), ("O", "!")) if len(pieces(lead + ch)) == 1]
                if len(kinds) > 1:
                    raise RuntimeError(f"pre-tokenizer puts U+{code:04X} in several classes {kinds}")
                classes[kinds[0] if kinds else "S"].append(code)
            body = {k: _char_class(v) for k, v in classes.items()}
            # the GPT-2 split that the ByteLevel pre-tokenizer applies, with \p{L}, \p{N}, \s as probed
            split = re.compile(
                rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{body['L']}]+| ?[{body['N']}]+| ?[{body['O']}]+"
                rf"|[{body['S']}]+(?![^{body['S']}])|[{body['S']}]+").findall
            self._classes = classes
            self._state = (upto, split)
            return split

    def _split_for(self, max_code: int):
        """The split function valid for code points up to `max_code`, probing further first if needed."""
        probed, split = self._state  # one read: a consistent pair
        if max_code < probed:
            return split
        return self._probe(max(MIN_PROBED, 1 << int(max_code).bit_length()))

    def split(self, text: str) -> list[str]:
        """Words of `text` exactly as the pre-tokenizer splits them (code points must be below `probed`)."""
        return self._state[1](text)

    def encode(self, strings: list[str], max_code: int) -> list[list[int]]:
        """BPE ids for strings whose largest code point is `max_code` (known to the caller from the codes)."""
        if max_code >= MAX_CODE:
            return [e.ids for e in self.tokenizer.encode_batch_fast(strings)]
        split = self._split_for(max_code)
        words = [split(s) for s in strings]
        cache = self._words
        lookup = cache.__getitem__
        out: list = [None] * len(strings)
        misses = []
        for r, row in enumerate(words):
            try:
                out[r] = list(chain.from_iterable(map(lookup, row)))
            except KeyError:
                misses.append(r)
        if misses:  # `tokenizers` encodes these rows whole; their words then go into the cache
            if len(cache) > MAX_CACHED_WORDS:
                cache.clear()
            ascii_only = max_code < 0x80
            for r, enc in zip(misses, self.tokenizer.encode_batch_fast([strings[r] for r in misses])):
                out[r] = enc.ids
                self._remember(words[r], out[r], ascii_only)
        return out

    def _remember(self, words: list[str], ids: list[int], ascii_only: bool) -> None:
        """Caches each word's ids: a word ends where the running byte count of the row's tokens reaches the
        running byte count of its words (BPE tokens never cross a word). Rows with a token missing from the byte
        table, or a word end that falls inside a token, are not cached."""
        sizes = list(map(self._sizes.__getitem__, ids))
        if 0 in sizes:
            return
        token_index = dict(zip(accumulate(sizes), range(1, len(sizes) + 1)))  # byte end -> tokens so far
        word_bytes = map(len, words) if ascii_only else (len(w.encode("utf-8")) for w in words)
        cuts = [0] + [token_index.get(end) for end in accumulate(word_bytes)]
        if None in cuts or cuts[-1] != len(ids):
            return
        self._words.update(zip(words, map(ids.__getitem__, map(slice, cuts, cuts[1:]))))  # lists, never mutated

    # ---- decode ----
    def _byte_table(self) -> None:
        byte_of = _gpt2_byte_chars()
        vocab = self.tokenizer.get_vocab(with_added_tokens=False)
        size = max(vocab.values(), default=-1) + 1
        usable = np.zeros(size, bool)
        per_id = [b""] * size
        for token, i in vocab.items():
            raw = [byte_of.get(ch) for ch in token]
            if None not in raw:
                per_id[i] = bytes(raw)
                usable[i] = True
        lengths = np.array([len(raw) for raw in per_id], np.int64)
        self._bytes = np.frombuffer(b"".join(per_id), np.uint8)
        self._starts = np.cumsum(lengths) - lengths
        self._lengths = lengths
        self._usable = usable  # ids missing from the vocab or with odd characters go to `tokenizers`
        self._non_ascii = np.array([any(b >= 0x80 for b in raw) for raw in per_id], bool)
        self._sizes = lengths.tolist()  # bytes per id as a list for the encode path; 0 = not in the byte table

    def _gather(self, ids: np.ndarray) -> np.ndarray:
        """The bytes of token ids, concatenated (uint8)."""
        lengths = self._lengths[ids]
        first = np.cumsum(lengths) - lengths
        return self._bytes[np.repeat(self._starts[ids] - first, lengths) + np.arange(int(lengths.sum()))]

    def decode_codes(self, flat: np.ndarray, counts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ids in [0, vocab), concatenated (`flat`, `counts` per row) -> (code points [n, length], valid [n]).

        A row is valid when its bytes are UTF-8 of exactly `length` characters with no U+FFFD, i.e. exactly when
        `Tokenizer.decode` gives `length` characters without a replacement character.
        """
        n = len(counts)
        valid = np.zeros(n, bool)
        codes = np.zeros((n, length), np.uint32)
        if n == 0:
            return codes, valid
        if flat.size and (flat.min() < 0 or flat.max() >= len(self._lengths)):
            raise ValueError("ids outside the tokenizer vocabulary")  # callers check ranges first
        ends = np.cumsum(counts)
        starts = ends - counts

        def per_row(values: np.ndarray) -> np.ndarray:  # sum of a per-token quantity within each row
            total = np.concatenate([[0], np.cumsum(values)])
            return total[ends] - total[starts]

        row_bytes = per_row(self._lengths[flat])
        slow = per_row(~self._usable[flat]) > 0
        non_ascii = per_row(self._non_ascii[flat]) > 0
        row_of = np.repeat(np.arange(n), counts)
        ascii_ok = ~slow & ~non_ascii & (row_bytes == length)  # one byte per character: bytes are code points
        if ascii_ok.any():
            codes[ascii_ok] = self._gather(flat[ascii_ok[row_of]]).reshape(-1, length)
            valid |= ascii_ok
        texts, good = [], []
        utf8 = ~slow & non_ascii & (row_bytes >= length) & (row_bytes <= 4 * length)
        if utf8.any():
            raw = self._gather(flat[utf8[row_of]]).tobytes()
            sizes = row_bytes[utf8]
            for r, end, size in zip(np.flatnonzero(utf8).tolist(), np.cumsum(sizes).tolist(), sizes.tolist()):
                try:
                    text = raw[end - size:end].decode("utf-8")  # strict: rejects what lossy decoding would replace
                except UnicodeDecodeError:
                    continue
                if len(text) == length and "\ufffd" not in text:
                    texts.append(text)
                    good.append(r)
        slow_rows = np.flatnonzero(slow).tolist()
        if slow_rows:
            id_lists = [flat[starts[r]:ends[r]].tolist() for r in slow_rows]
            for r, text in zip(slow_rows, self.tokenizer.decode_batch(id_lists, skip_special_tokens=False)):
                if len(text) == length and "\ufffd" not in text:
                    texts.append(text)
                    good.append(r)
        if good:
            codes[good] = np.frombuffer("".join(texts).encode("utf-32-le"), "<u4").reshape(len(good), length)
            valid[good] = True
        return codes, valid
