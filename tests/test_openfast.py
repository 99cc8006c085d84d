"""OpenFAST action tokenizer: round trip, released-layout compatibility, fuzzed decode, LLM ids, CLI."""
import json

import numpy as np
import pytest
from scipy.fft import dct
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

from molmoact2_jax.tokenizers import OpenFAST
from molmoact2_jax.tokenizers.openfast import from_llm_ids, to_llm_ids
from molmoact2_jax.cli.openfast import main as cli_main

SHAPES = [(30, 14), (15, 8), (30, 6), (10, 7)]
SCALE = 10
# released model's ids
ACTION_START, ACTION_END, ACTION_TOKEN_START, NUM_ACTION_TOKENS = 151932, 151933, 151934, 2048


def smooth_chunks(rng, n, t, d):
    """Random sinusoid mixtures in [-1, 1], like normalized joint trajectories."""
    time = np.linspace(0, 1, t)[None, :, None]
    freq, phase, amp = rng.uniform(0.1, 1.5, (n, 1, d)), rng.uniform(0, 1, (n, 1, d)), rng.uniform(0.1, 1, (n, 1, d))
    return amp * np.sin(2 * np.pi * (freq * time + phase)) + rng.normal(0, 0.01, (n, t, d))


def noisy_chunks(rng, n, t, d):
    return rng.uniform(-1, 1, (n, t, d))


def dataset(seed=0, n=300):
    rng = np.random.default_rng(seed)
    return [f(rng, n, t, d) for t, d in SHAPES for f in (smooth_chunks, noisy_chunks)]


@pytest.fixture(scope="module")
def data():
    return dataset()


@pytest.fixture(scope="module")
def tok(data):
    return OpenFAST.fit(data, vocab_size=512, scale=SCALE)


def reference_encode(tok, chunk):
    """Per-chunk loop written straight from the reference's steps (independent of the batched path)."""
    coeffs = np.around(dct(np.asarray(chunk, np.float32).astype(np.float64), axis=0, norm="ortho") * tok.scale)
    text = "".join(chr(int(c)) for c in np.maximum(coeffs.flatten() - tok.min_token, 0))
    return tok.tokenizer.encode(text).ids


# ---- round trip ----
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["smooth", "noisy"])
def test_round_trip_within_quantization_bound(tok, data, shape, kind):
    t, d = shape
    chunks = data[SHAPES.index(shape) * 2 + (kind == "noisy")][:100]
    coeffs = np.around(dct(chunks.astype(np.float32).astype(np.float64), axis=1, norm="ortho") * SCALE)
    assert coeffs.min() >= tok.min_token  # precondition: inside the fitted range
    actions, valid = tok.decode(tok.encode(chunks), t, d)
    assert actions.shape == (100, t, d) and valid.all()
    x = chunks.astype(np.float32).astype(np.float64)
    dct_err = np.abs(dct(actions, axis=1, norm="ortho") - dct(x, axis=1, norm="ortho")).max()
    assert dct_err <= 0.5 / SCALE + 1e-9
    l2 = np.sqrt(((actions - chunks) ** 2).sum(axis=(1, 2)))
    assert l2.max() <= np.sqrt(t * d) * 0.5 / SCALE + 1e-5  # orthonormal IDCT keeps the L2 error
    print(f"{kind} {shape}: max dct err {dct_err:.4f}, max l2 err {l2.max():.4f} "
          f"(bound {np.sqrt(t * d) * 0.5 / SCALE:.4f})")


def test_batched_encode_matches_per_chunk_reference(tok, data):
    rng = np.random.default_rng(1)
    chunks = [c for group in data for c in group[:20]]
    chunks += [rng.uniform(-3, 3, (30, 14)) for _ in range(5)]  # off-range: low clamps, high drops symbols
    order = rng.permutation(len(chunks))
    ragged = [chunks[i] for i in order]
    assert tok.encode(ragged) == [reference_encode(tok, c) for c in ragged]
    assert tok.encode(data[0][:7]) == tok.encode(list(data[0][:7]))
    assert tok.encode(data[0][0]) == tok.encode(data[0][:1])  # a single (T, D) array is a batch of one


def test_out_of_range_chunk_decodes_invalid(tok):
    big = np.full((30, 14), 40.0)  # DC coefficient far above the fitted range
    actions, valid = tok.decode(tok.encode([big]), 30, 14)
    assert not valid[0] and not actions.any()


def test_fit_is_deterministic_and_streams(data):
    a = OpenFAST.fit(data, vocab_size=300, scale=SCALE)
    b = OpenFAST.fit(lambda: (x for x in data), vocab_size=300, scale=SCALE)  # callable -> fresh generator
    c = OpenFAST.fit([c for group in data for c in group[:50]] + list(data), vocab_size=300, scale=SCALE)
    assert a.tokenizer.to_str() == b.tokenizer.to_str()
    assert a.min_token == b.min_token == c.min_token
    with pytest.raises(TypeError, match="twice"):
        OpenFAST.fit(iter(data), vocab_size=300)
    with pytest.raises(ValueError, match="vocab_size 20"):
        OpenFAST.fit(data, vocab_size=20)


def test_action_dim_above_32_refused(tok):
    with pytest.raises(ValueError, match="32"):
        tok.encode(np.zeros((1, 10, 33)))
    with pytest.raises(ValueError, match="32"):
        tok.decode([[1]], 10, 33)
    with pytest.raises(ValueError, match="32"):
        OpenFAST.fit([np.zeros((10, 40))], vocab_size=64)


# ---- folder layout and compatibility ----
def test_save_load_layout_and_stable_ids(tok, data, tmp_path):
    tok.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "processor_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    cfg = json.loads((tmp_path / "processor_config.json").read_text())
    assert set(cfg) == {"processor_class", "scale", "vocab_size", "min_token", "time_horizon", "action_dim"}
    assert cfg["processor_class"] == "UniversalActionProcessor" and cfg["min_token"] == tok.min_token
    tcfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tcfg["tokenizer_class"] == "PreTrainedTokenizerFast" and tcfg["clean_up_tokenization_spaces"] is False
    assert json.loads((tmp_path / "special_tokens_map.json").read_text()) == {}
    loaded = OpenFAST.load(tmp_path)
    chunks = [c for group in data for c in group[:10]]
    assert loaded.encode(chunks) == tok.encode(chunks)


@pytest.mark.torch
def test_saved_folder_loads_in_transformers(tok, data, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok.save(tmp_path)
    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    chunks = [c for group in data for c in group[:10]]
    ids = tok.encode(chunks)
    strings = [tok.tokenizer.decode(i) for i in ids]
    assert [hf(s)["input_ids"] for s in strings] == ids
    assert [hf.decode(i) for i in ids] == strings


def handmade_release_folder(folder, data, vocab_size=400):
    """A folder built with `tokenizers` directly, laid out like the hub release (with auto_map)."""
    flat = [np.around(dct(c.astype(np.float32).astype(np.float64), axis=0, norm="ortho") * SCALE).flatten()
            for group in data for c in group]
    lo, hi = int(min(f.min() for f in flat)), int(max(f.max() for f in flat))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[], show_progress=False,
                         initial_alphabet=[chr(i) for i in range(hi - lo + 1)], max_token_length=10000)
    strings = ["".join(chr(int(v) - lo) for v in f) for f in flat]
    bpe.train_from_iterator(strings, trainer=trainer)
    folder.mkdir(exist_ok=True)
    bpe.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}))
    (folder / "special_tokens_map.json").write_text("{}")
    (folder / "processor_config.json").write_text(json.dumps(
        {"auto_map": {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"},
         "processor_class": "UniversalActionProcessor", "scale": SCALE, "vocab_size": vocab_size,
         "min_token": lo, "time_horizon": 30, "action_dim": 14}))
    return bpe, strings


def test_handmade_release_folder_loads_in_ours(data, tmp_path):
    bpe, strings = handmade_release_folder(tmp_path / "release", data)
    ours = OpenFAST.load(tmp_path / "release")
    assert ours.time_horizon == 30 and ours.action_dim == 14
    n = len(data[0])  # the first group is the 30x14 smooth chunks
    assert ours.encode(data[0]) == [e.ids for e in bpe.encode_batch(strings[:n])]
    actions, valid = ours.decode(ours.encode(data[0][:20]))  # horizon/dim from processor_config
    assert valid.all() and np.abs(actions - data[0][:20]).max() < 0.5


def test_load_errors_name_folder_and_key(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        OpenFAST.load(tmp_path / "nowhere")
    tok.save(tmp_path)
    cfg_path = tmp_path / "processor_config.json"
    cfg = json.loads(cfg_path.read_text())
    for broken, key in [({k: v for k, v in cfg.items() if k != "min_token"}, "min_token"),
                        ({**cfg, "scale": "ten"}, "scale"), ({**cfg, "extra": 1}, "extra")]:
        cfg_path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=key) as err:
            OpenFAST.load(tmp_path)
        assert str(tmp_path) in str(err.value)
    cfg_path.write_text(json.dumps(cfg))
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        OpenFAST.load(tmp_path)


# ---- decoding model output ----
def test_fuzzed_decode_never_raises(tok, data):
    rng = np.random.default_rng(2)
    t, d, vocab = 15, 8, tok.bpe_vocab_size
    seqs = []
    for i in range(8_000):  # random ids, some out of range, random lengths incl. empty
        n = int(rng.integers(0, 130))
        seq = rng.integers(-3, vocab + 3, n) if i % 2 else rng.integers(0, vocab, n)
        seqs.append(seq.tolist() if i % 3 else seq)
    for i, real in enumerate(tok.encode(np.concatenate([data[2], data[3]])[rng.integers(0, 600, 2_000)])):
        cut = int(rng.integers(0, len(real)))  # near misses: intact, truncated, one id replaced/inserted
        mutated = [real, real[:cut], real[:cut] + [int(rng.integers(0, vocab))] + real[cut + 1:],
                   real[:cut] + [int(rng.integers(-2, vocab + 2))] + real[cut:]][i % 4]
        seqs.append(mutated)
    seqs += [[1.5, 2.0], ["a"], [None], [[1, 2]], [2**70], []]
    actions, valid = tok.decode(seqs, t, d)
    assert actions.shape == (len(seqs), t, d) and valid.shape == (len(seqs),)
    assert not actions[~valid].any()
    in_range = np.array([len(s) > 0 and isinstance(s[0], (int, np.integer)) and min(s) >= 0 and max(s) < vocab
                         and all(isinstance(v, (int, np.integer)) for v in s) for s in seqs])
    assert not valid[~in_range].any()
    lengths_ok = np.array([ok and len(tok.tokenizer.decode(list(map(int, s)))) == t * d
                           for s, ok in zip(seqs, in_range)])
    assert (valid == lengths_ok).all()  # valid exactly when the symbols form a full T x D chunk
    print(f"fuzz: {valid.sum()} of {len(seqs)} random sequences decoded as valid chunks")


def test_llm_id_mapping_round_trip(tok, data):
    ids = tok.encode(data[2][:5])
    args = (ACTION_START, ACTION_END, ACTION_TOKEN_START)
    for bpe in ids + [[]]:
        llm = to_llm_ids(bpe, *args, NUM_ACTION_TOKENS)
        assert llm[0] == ACTION_START and llm[-1] == ACTION_END
        assert llm[1:-1] == [ACTION_TOKEN_START + k for k in bpe]
        assert from_llm_ids([11, 12] + llm + [151645], *args, NUM_ACTION_TOKENS) == bpe
    bpe = ids[0]
    body = [ACTION_TOKEN_START + k for k in bpe]
    assert from_llm_ids(body + [ACTION_END, 151645], *args, NUM_ACTION_TOKENS) == bpe  # no <action_start>
    assert from_llm_ids([ACTION_START] + body, *args, NUM_ACTION_TOKENS) == bpe  # no <action_end>
    junk = [ACTION_START, 5, body[0], 151645, *body[1:], ACTION_TOKEN_START + NUM_ACTION_TOKENS, ACTION_END,
            ACTION_TOKEN_START + 3]
    assert from_llm_ids(junk, *args, NUM_ACTION_TOKENS) == bpe  # non-action tokens skipped, stops at end
    assert from_llm_ids([1, 2, 3], *args, NUM_ACTION_TOKENS) == []
    with pytest.raises(ValueError):
        to_llm_ids([NUM_ACTION_TOKENS], *args, NUM_ACTION_TOKENS)
    actions, valid = tok.decode([from_llm_ids(junk, *args, NUM_ACTION_TOKENS)], 15, 8)
    assert valid[0] and np.abs(actions[0] - data[2][0]).max() < 0.5


# ---- CLI ----
def test_cli_fit_encode_decode(data, tmp_path, capsys):
    npz = tmp_path / "chunks.npz"
    np.savez(npz, yam=data[0][:200], droid=data[2][:200], one=data[4][0])
    out = tmp_path / "tok"
    assert cli_main(["fit", "--chunks", str(npz), "--out", str(out), "--vocab-size", "300"]) == 0
    assert json.loads((out / "processor_config.json").read_text())["scale"] == 10
    capsys.readouterr()
    assert cli_main(["encode", "--tokenizer", str(out), "--chunks", str(npz), "--show", "1"]) == 0
    printed = capsys.readouterr().out
    assert "chunks 401" in printed
    first_ids = printed.splitlines()[0].split(": ")[1]
    assert cli_main(["decode", "--tokenizer", str(out), "--tokens", first_ids, "--horizon", "30",
                     "--action-dim", "14"]) == 0
    assert "valid: True" in capsys.readouterr().out
    assert cli_main(["decode", "--tokenizer", str(out), "--tokens", "1", "--horizon", "30", "--action-dim", "14"]) == 1
    assert "valid: False" in capsys.readouterr().out


def test_cli_bad_inputs_exit_with_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.npz"
    bad = tmp_path / "bad.npz"
    np.savez(bad, weird=np.zeros(5))
    for argv, name in [(["fit", "--chunks", str(missing), "--out", str(tmp_path / "o")], str(missing)),
                       (["fit", "--chunks", str(bad), "--out", str(tmp_path / "o")], "weird"),
                       (["encode", "--tokenizer", str(tmp_path / "none"), "--chunks", str(bad)], "none"),
                       (["decode", "--tokenizer", str(tmp_path), "--tokens", "1,x", "--horizon", "2",
                         "--action-dim", "2"], "--tokens")]:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert name in err[-1] and "Traceback" not in "".join(err)
