"""OpenFAST benchmark: compression vs naive per-dimension binning, and batched vs per-chunk-loop throughput.

    python benchmarks/openfast_bench.py [--n 2000] [--fit-n 3000] [--vocab-size 2048] [--repeats 3]

Data: synthetic smooth trajectories in [-1, 1] (a few low-frequency sinusoids per dim plus small noise), the
shape of normalized joint chunks. Both throughput paths run in this process on the same chunks, for the fitted
tokenizer and for one whose alphabet sits above U+007F (multi-byte UTF-8), like a tokenizer fit on data with outliers.
The batched path serves splits/words and bytes from tables (molmoact2_jax/tokenizers/bytelevel_bpe.py); the loops
call `tokenizers` per chunk, as the official class does.
"""
import argparse
import time

import numpy as np
from scipy.fft import dct, idct

from molmoact2_jax.tokenizers import OpenFAST

SHAPES = [(30, 14), (15, 8), (30, 6)]  # YAM, DROID, SO-100


def smooth_chunks(rng, n, t, d, noise=0.005):
    time_ = np.linspace(0, 1, t)[None, :, None]
    x = np.zeros((n, t, d))
    for _ in range(3):
        freq, phase = rng.uniform(0.05, 1.0, (n, 1, d)), rng.uniform(0, 1, (n, 1, d))
        x += rng.uniform(0, 0.4, (n, 1, d)) * np.sin(2 * np.pi * (freq * time_ + phase))
    return np.clip(x + rng.normal(0, noise, x.shape), -1, 1)


def loop_encode(tok, chunks, encode_one):
    """The plain per-chunk path: one scipy DCT, one string and one tokenizer call per chunk."""
    out = []
    for c in chunks:
        coeffs = np.around(dct(c.astype(np.float32).astype(np.float64), axis=0, norm="ortho") * tok.scale)
        text = "".join(map(chr, np.maximum(coeffs.flatten() - tok.min_token, 0).astype(int)))
        out.append(encode_one(text))
    return out


def loop_decode(tok, ids, t, d, decode_one):
    out = []
    for seq in ids:
        try:
            coeffs = (np.array(list(map(ord, decode_one(seq)))) + tok.min_token).reshape(t, d)
        except ValueError:
            coeffs = np.zeros((t, d))
        out.append(idct(coeffs / tok.scale, axis=0, norm="ortho"))
    return np.stack(out)


def baselines(tok):
    """(name, encode_one, decode_one): raw `tokenizers` calls, and the HF wrapper the official class calls."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok.tokenizer, clean_up_tokenization_spaces=False)
    return [("raw-tokenizers loop", lambda s: tok.tokenizer.encode(s).ids, tok.tokenizer.decode),
            ("HF-wrapper loop (official class)", lambda s: hf(s)["input_ids"], hf.decode)]


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="chunks per shape for the measurements")
    parser.add_argument("--fit-n", type=int, default=3000, help="chunks per shape to fit the tokenizer")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--scale", type=float, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    fit_data = [smooth_chunks(rng, args.fit_n, t, d) for t, d in SHAPES]
    start = time.perf_counter()
    tok = OpenFAST.fit(fit_data, vocab_size=args.vocab_size, scale=args.scale)
    print(f"fit: {args.fit_n * len(SHAPES)} chunks, vocab {tok.bpe_vocab_size}, min_token {tok.min_token}, "
          f"{time.perf_counter() - start:.1f}s")
    # a released tokenizer may have a min_token far below typical coefficients (fit on data with outliers), so
    # its characters are above U+007F and take 2 bytes in UTF-8: measure that alphabet too
    outliers = [8 * np.sign(rng.normal(size=(50, t, d))) for t, d in SHAPES]
    wide = OpenFAST.fit(fit_data + outliers, vocab_size=args.vocab_size, scale=args.scale)
    print(f"wide fit: + {50 * len(SHAPES)} outlier chunks, min_token {wide.min_token}")

    print(f"\n{'shape':>8} {'naive':>6} {'fast mean':>9} {'p95':>5} {'ratio':>6}")
    held_out = {(t, d): smooth_chunks(rng, args.n, t, d) for t, d in SHAPES}  # not seen by the fits
    for t, d in SHAPES:
        lengths = np.array([len(i) for i in tok.encode(held_out[t, d])])
        print(f"{t:>4}x{d:<3} {t * d:>6} {lengths.mean():>9.1f} {np.percentile(lengths, 95):>5.0f} "
              f"{t * d / lengths.mean():>5.1f}x")
    print("naive = T*D tokens (one 256-bin token per value); ratio = naive / mean OpenFAST tokens")

    for label, current in [(f"fitted tokenizer (min_token {tok.min_token}: ASCII characters)", tok),
                           (f"wide-alphabet tokenizer (min_token {wide.min_token}: 2-byte UTF-8 characters)", wide)]:
        loops = baselines(current)
        speed = []
        for t, d in SHAPES:
            chunks = held_out[t, d]
            ids = current.encode(chunks)
            actions, valid = current.decode(ids, t, d)
            cold = []
            for _ in range(args.repeats):  # a fresh object: empty word cache, character classes not yet probed
                fresh = OpenFAST(current.tokenizer, scale=current.scale, min_token=current.min_token)
                cold.append(best_time(lambda: fresh.encode(chunks), 1))
            row = [f"{t}x{d}", len(chunks) / min(cold),
                   len(chunks) / best_time(lambda: current.encode(chunks), args.repeats),
                   len(chunks) / best_time(lambda: current.decode(ids, t, d), args.repeats)]
            for _, enc_one, dec_one in loops:
                assert loop_encode(current, chunks[:200], enc_one) == ids[:200]  # same ids as the batched path
                assert np.allclose(loop_decode(current, ids[:200], t, d, dec_one), actions[:200])
                row += [len(chunks) / best_time(lambda: loop_encode(current, chunks, enc_one), args.repeats),
                        len(chunks) / best_time(lambda: loop_decode(current, ids, t, d, dec_one), args.repeats)]
            speed.append(row)
        print(f"\n{label}\nthroughput, chunks/s (best of {args.repeats}, {args.n} chunks per shape, "
              f"same process and data)")
        for k, (name, _, _) in enumerate(loops):
            print(f"  b{k + 1} = {name}")
        print("  enc cold = first call on a fresh tokenizer object (empty word cache); enc batched = warm")
        print(f"{'shape':>6} | {'enc cold':>8} {'x b1':>5} | {'enc batched':>11} {'enc b1':>7} {'x':>5} "
              f"{'enc b2':>7} {'x':>5} | {'dec batched':>11} {'dec b1':>7} {'x':>5} {'dec b2':>7} {'x':>5}")
        for name, cold, enc, dec, e1, d1, e2, d2 in speed:
            print(f"{name:>6} | {cold:>8.0f} {cold / e1:>4.1f}x | {enc:>11.0f} {e1:>7.0f} {enc / e1:>4.1f}x "
                  f"{e2:>7.0f} {enc / e2:>4.1f}x | {dec:>11.0f} {d1:>7.0f} {dec / d1:>4.1f}x {d2:>7.0f} "
                  f"{dec / d2:>4.1f}x")

if __name__ == "__main__":
    main()
