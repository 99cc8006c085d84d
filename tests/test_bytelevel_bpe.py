"""The table-driven OpenFAST batch path gives exactly what `tokenizers` gives (split, encode, decode)."""
import numpy as np
import pytest
from scipy.fft import dct
from tokenizers import ByteLevelBPETokenizer, Tokenizer, decoders, models, normalizers, pre_tokenizers

from molmoact2_jax.tokenizers import OpenFAST, bytelevel_bpe

SCALE = 10


def chunks(rng, n, t, d, amp=1.0):
    time = np.linspace(0, 1, t)[None, :, None]
    smooth = amp * np.sin(2 * np.pi * (rng.uniform(0.1, 1.5, (n, 1, d)) * time + rng.uniform(0, 1, (n, 1, d))))
    return smooth + rng.normal(0, 0.05 * amp, (n, t, d))


def strings_of(data, scale, min_token):
    out = []
    for group in data:
        q = np.around(dct(group.astype(np.float32).astype(np.float64), axis=1, norm="ortho") * scale)
        for row in np.maximum(q.reshape(len(q), -1) - min_token, 0).astype(int):
            out.append("".join(map(chr, row)))
    return out


def without_tables(tok):
    plain = OpenFAST(tok.tokenizer, scale=tok.scale, vocab_size=tok.vocab_size, min_token=tok.min_token)
    plain._tables = None  # the `tokenizers`-only path, as before the fast path existed
    return plain


@pytest.fixture(scope="module", params=["ascii", "wide", "full-bytes"])
def tok(request):
    """ascii: the alphabet fits in 7 bits; wide: big outliers push typical code points to 2-byte UTF-8 (as with
    a released min_token far below the usual coefficients); full-bytes: trained by `tokenizers`' own byte-level
    trainer, so all 256 byte tokens exist and any byte sequence (invalid UTF-8, U+FFFD) can be produced."""
    rng = np.random.default_rng(0)
    data = [chunks(rng, 300, t, d) for t, d in [(30, 14), (15, 8), (10, 7)]]
    if request.param == "ascii":
        return OpenFAST.fit(data, vocab_size=512, scale=SCALE)
    data.append(chunks(rng, 20, 30, 14, amp=8.0))
    if request.param == "wide":
        fitted = OpenFAST.fit(data, vocab_size=2048, scale=SCALE)
        assert 1000 > -fitted.min_token > 300  # typical characters are above U+007F
        return fitted
    min_token = int(min(np.around(dct(g, axis=1, norm="ortho") * SCALE).min() for g in data))
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(strings_of(data, SCALE, min_token), vocab_size=1500, min_frequency=2,
                            show_progress=False)
    return OpenFAST(bpe._tokenizer, scale=SCALE, vocab_size=1500, min_token=min_token)


def test_tables_are_used(tok):
    assert tok._tables is not None


def test_split_matches_pre_tokenizer(tok):
    """GPT-2 split with probed classes == the ByteLevel pre-tokenizer, on text rich in its corner cases."""
    rng = np.random.default_rng(1)
    special = [ord(c) for c in " '\t\n\r\x0b\x0c\x1c\x1f\x85\xa0stremvldSTa0129!?"] + [0x300, 0x301, 0xb2, 0xbd]
    byte_char = {b: c for c, b in bytelevel_bpe._gpt2_byte_chars().items()}
    pieces = tok.tokenizer.pre_tokenizer.pre_tokenize_str
    tok._tables.encode(["x"], 900)  # probe code points up to 1023
    for i in range(3000):
        n = int(rng.integers(1, 40))
        pool = special if i % 2 else list(range(0, 900))
        text = "".join(chr(pool[k]) for k in rng.integers(0, len(pool), n))
        mine = ["".join(byte_char[b] for b in w.encode("utf-8")) for w in tok._tables.split(text)]
        assert mine == [w for w, _ in pieces(text)], repr(text)


def test_encode_matches_tokenizers(tok):
    rng = np.random.default_rng(2)
    plain = without_tables(tok)
    batches = [chunks(rng, 200, 30, 14), chunks(rng, 100, 15, 8, amp=3.0), chunks(rng, 50, 10, 7, amp=9.0),
               [chunks(rng, 1, t, d)[0] for t, d in [(4, 3), (30, 14), (12, 32), (4, 3)]],
               rng.uniform(-1, 1, (40, 20, 6)), np.full((2, 30, 14), 40.0)]  # far off range: 3-byte characters
    for batch in batches:
        assert tok.encode(batch) == plain.encode(batch)
    assert len(tok._tables._words) > 0

    class NoBPE:  # the second pass must be served from the word cache alone
        def __getattr__(self, name):
            raise AssertionError(f"tokenizers called on cached chunks ({name})")

    real, tok._tables.tokenizer = tok._tables.tokenizer, NoBPE()
    try:
        for batch in (batches[0], batches[3], batches[4]):  # inside every fixture's fitted range (elsewhere BPE
            assert tok.encode(batch) == plain.encode(batch)   # drops unknown bytes, so rows cannot be cut into words)
    finally:
        tok._tables.tokenizer = real


def test_word_cache_is_bounded(tok, monkeypatch):
    monkeypatch.setattr(bytelevel_bpe, "MAX_CACHED_WORDS", 50)
    rng = np.random.default_rng(3)
    batch = chunks(rng, 100, 30, 14, amp=2.0)
    assert tok.encode(batch) == without_tables(tok).encode(batch)
    assert len(tok._tables._words) <= max(50, len(set(w for s in strings_of([batch], SCALE, tok.min_token)
                                                       for w in tok._tables.split(s))))


def test_decode_matches_tokenizers(tok):
    """Fuzzed model output: both paths give identical actions and validity, row for row."""
    rng = np.random.default_rng(4)
    plain, vocab = without_tables(tok), tok.bpe_vocab_size
    byte_id = {b: tok.tokenizer.token_to_id(c) for c, b in bytelevel_bpe._gpt2_byte_chars().items()}
    for t, d in [(15, 8), (30, 14)]:
        real = tok.encode(np.concatenate([chunks(rng, 300, t, d), chunks(rng, 30, t, d, amp=8.0)]))
        seqs = []
        for i, ids in enumerate(real):
            cut = int(rng.integers(0, len(ids)))
            seqs.append([ids, ids[:cut], ids[:cut] + [int(rng.integers(0, vocab))] + ids[cut + 1:],
                         ids[:cut] + [int(rng.integers(0, vocab))] + ids[cut:]][i % 4])
        seqs += [rng.integers(0, vocab, int(rng.integers(1, 3 * t * d))).tolist() for _ in range(500)]
        # raw byte tokens: broken UTF-8 and a literal U+FFFD (decoded text would hide it) where the vocab has them
        for text in ["\ufffd" + "a" * (t * d - 1), "\u0100" * (t * d), "é" * (t * d)]:
            raw = text.encode("utf-8")
            for variant in [raw, raw[1:], raw[:-1], b"\xff" + raw[1:], b"\xc3" + raw]:
                ids = [byte_id[b] for b in variant]
                if None not in ids:
                    seqs.append(ids)
        seqs += [np.asarray(seqs[0]), tuple(seqs[1]), [], [-1], [vocab], [1.0], [True]]
        fast_actions, fast_valid = tok.decode(seqs, t, d)
        ref_actions, ref_valid = plain.decode(seqs, t, d)
        np.testing.assert_array_equal(fast_valid, ref_valid)
        np.testing.assert_array_equal(fast_actions, ref_actions)
        assert fast_valid.sum() >= 70 and (~fast_valid).sum() >= 500  # both outcomes are exercised


def _byte_level(tokenizer):
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def test_other_tokenizers_take_the_tokenizers_path():
    assert bytelevel_bpe.supports(_byte_level(Tokenizer(models.BPE())))
    odd = [_byte_level(Tokenizer(models.BPE(dropout=0.1))), _byte_level(Tokenizer(models.BPE()))]
    odd[1].normalizer = normalizers.NFKC()
    odd.append(_byte_level(Tokenizer(models.BPE())))
    odd[2].add_special_tokens(["<x>"])
    odd.append(_byte_level(Tokenizer(models.BPE())))
    odd[3].pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    for tokenizer in odd:
        assert not bytelevel_bpe.supports(tokenizer)
        assert OpenFAST(tokenizer)._tables is None
    with pytest.raises(ValueError, match="byte-level"):
        bytelevel_bpe.ByteLevelBPETables(odd[0])
