"""Action sampling latency: one prefill + a projected context reused by all Euler steps (our `sample_actions`)
vs naively recomputing the backbone pass and the context projection at every step, in the same run.

  python benchmarks/sampling_bench.py [--steps 10] [--reps 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import jax
import jax.numpy as jnp
import numpy as np

from test_molmoact2 import setup  # a tiny model with randomised expert gates and a 2-example batch


def timed(fn, reps):
    jax.block_until_ready(fn())
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    model, params, batch = setup()
    noise = jax.random.normal(jax.random.PRNGKey(0), batch["actions"].shape)
    n = args.steps

    fast = jax.jit(lambda p, b, z: model.sample_actions(p, b, noise=z, num_steps=n))

    @jax.jit
    def naive_step(p, b, x, i):
        # Everything recomputed for this step: backbone pass, context projection, modulation. (Inside one
        # fori_loop XLA would hoist the loop-invariant backbone out, so the naive baseline is a step per call.)
        dim = b["action_dim_valid"][:, None, :].astype(jnp.float32)
        _, k, v, enc, _ = model.context(p, b)
        t = jnp.full((x.shape[0],), i / n, jnp.float32)
        vel = model.expert.apply({"params": p["action_expert"]}, x, t, k, v, enc)
        return (x + vel * dim / n) * dim

    def naive(p, b, z):
        x = z * b["action_dim_valid"][:, None, :]
        for i in range(n):
            x = naive_step(p, b, x, jnp.float32(i))
        return x
    prefill = jax.jit(lambda p, b: model.context(p, b)[1])
    a, b_ = np.asarray(fast(params, batch, noise)), np.asarray(naive(params, batch, noise))
    t_fast = timed(lambda: fast(params, batch, noise), args.reps)
    t_naive = timed(lambda: naive(params, batch, noise), args.reps)
    t_prefill = timed(lambda: prefill(params, batch), args.reps)
    print(f"tiny model, batch 2, {n} Euler steps (CPU); max |difference| {np.abs(a - b_).max():.2e}")
    print(f"precomputed context: {t_fast * 1e3:.1f} ms; naive recompute: {t_naive * 1e3:.1f} ms; "
          f"speed-up {t_naive / t_fast:.2f}x")
    print(f"backbone prefill alone {t_prefill * 1e3:.1f} ms; per flow step with cached context "
          f"{max(t_fast - t_prefill, 0) / n * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
