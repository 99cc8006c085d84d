"""First use of a fresh ByteLevelBPETables from many threads at once (Grain's read threads do exactly this): every
thread must get the ids a single thread gets. The tables used to publish `_probed` before the split regex built from
it, so a thread could see the new bound with the old (None) split: `TypeError: 'NoneType' object is not callable`
inside Grain's threads, 2 runs in ~7 on real data."""
import re
import threading
import time
import types

import numpy as np
import pytest

from molmoact2_jax.tokenizers import OpenFAST, bytelevel_bpe

THREADS = 16


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    chunks = rng.uniform(-1, 1, (160, 8, 6)).cumsum(1) / 4
    tok = OpenFAST.fit(list(chunks), vocab_size=512, scale=10)
    batches = [chunks[i::THREADS] for i in range(THREADS)]
    reference = [tok.encode(b) for b in batches]  # one thread, one object
    return tok, batches, reference


def _first_use_from_threads(tok, batches, stagger_s: float) -> list:
    """A fresh OpenFAST (fresh tables) encoded from THREADS threads released together by a barrier; thread i
    starts i * stagger_s later, so some arrive while another is still probing."""
    fresh = OpenFAST(tok.tokenizer, scale=tok.scale, vocab_size=tok.vocab_size, min_token=tok.min_token)
    assert isinstance(fresh._tables, bytelevel_bpe.ByteLevelBPETables) and fresh._tables._probed == 0
    barrier = threading.Barrier(THREADS)
    got, errors = [None] * THREADS, []

    def work(i):
        try:
            barrier.wait()
            time.sleep(i * stagger_s)
            got[i] = fresh.encode(batches[i])
        except BaseException as e:  # noqa: BLE001 - reported with its thread below
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return got


def test_threads_racing_on_first_use_get_the_single_threaded_ids(fitted):
    tok, batches, reference = fitted
    for _ in range(8):
        assert _first_use_from_threads(tok, batches, 0.0) == reference
        assert _first_use_from_threads(tok, batches, 0.0005) == reference


def test_a_slow_probe_never_exposes_a_half_built_split(fitted, monkeypatch):
    """The race made certain: building the split regex takes 30 ms, and threads keep arriving during it. Code that
    publishes the probed bound before the split fails here every time."""
    tok, batches, reference = fitted

    def slow_compile(pattern, *args):
        time.sleep(0.03)
        return re.compile(pattern, *args)
    monkeypatch.setattr(bytelevel_bpe, "re", types.SimpleNamespace(compile=slow_compile))
    assert _first_use_from_threads(tok, batches, 0.003) == reference
