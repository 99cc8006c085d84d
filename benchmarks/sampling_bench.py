"""Action sampling latency, against what a plain implementation of the Euler sampler would run, in the same process.

Ours (`MolmoAct2.sample_actions`): one prefill, the expert's context K/V projected once, the time conditioning of
all Euler steps computed in one batched pass, and the steps in one compiled `fori_loop`.
Baseline: the same prefill once (nobody re-runs the backbone per step), then each Euler step calls the expert's
plain forward (`ActionExpert.__call__`: context projection and time modulation recomputed per step), one jitted
call per step from a Python loop, as a straightforward port of the reference sampler does.

  python benchmarks/sampling_bench.py [--steps 10] [--runs 7] [--variant tiny|small]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from molmoact2_jax.inference import testing as T
from molmoact2_jax.models.molmoact2 import MolmoAct2


def timings(fn, runs: int) -> list[float]:
    jax.block_until_ready(fn())   # compile
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="Euler steps")
    ap.add_argument("--runs", type=int, default=7, help="timed runs of each (after one compile run)")
    ap.add_argument("--variant", default="small", choices=("tiny", "small"), help="random model size")
    ap.add_argument("--batch", type=int, default=1, help="examples per call (serving: 1)")
    args = ap.parse_args()
    cfg = T.model_config(args.variant)
    model = MolmoAct2(cfg)
    params = T.init_params(cfg)
    batch = {k: jnp.asarray(v) for k, v in model.fake_batch(args.batch, num_images=2).items()}
    ae = cfg.action_expert
    batch["action_dim_valid"] = jnp.asarray(np.arange(ae.max_action_dim) < 7)[None].repeat(args.batch, 0)
    noise = jax.random.normal(jax.random.PRNGKey(0), (args.batch, ae.max_action_horizon, ae.max_action_dim))
    n = args.steps

    ours = jax.jit(lambda p, b, z: model.sample_actions(p, b, noise=z, num_steps=n))
    prefill = jax.jit(lambda p, b: model.context(p, b)[1:4])

    @jax.jit
    def plain_step(p, k, v, enc, dim, x, t):
        vel = model.expert.apply({"params": p["action_expert"]}, x, jnp.full((x.shape[0],), t), k, v, enc)
        return (x + vel * dim / n) * dim

    def plain(p, b, z):
        k, v, enc = prefill(p, b)
        dim = b["action_dim_valid"][:, None, :].astype(jnp.float32)
        x = z * dim
        for i in range(n):
            x = plain_step(p, k, v, enc, dim, x, jnp.float32(i / n))
        return x

    a, b_ = np.asarray(ours(params, batch, noise)), np.asarray(plain(params, batch, noise))
    t_ours = timings(lambda: ours(params, batch, noise), args.runs)
    t_plain = timings(lambda: plain(params, batch, noise), args.runs)
    t_prefill = timings(lambda: prefill(params, batch), args.runs)
    med = lambda t: float(np.median(t)) * 1e3
    low = lambda t: float(np.min(t)) * 1e3
    print(f"{args.variant} model ({sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f}M params), batch "
          f"{args.batch}, 2 images, {n} Euler steps, {jax.devices()[0].platform}; {args.runs} runs; "
          f"max |ours - baseline| {np.abs(a - b_).max():.2e}")
    print(f"ours (precomputed context + conditioning, one fori_loop): median {med(t_ours):.1f} ms, "
          f"min {low(t_ours):.1f} ms")
    print(f"baseline (prefill once, plain expert call per step):     median {med(t_plain):.1f} ms, "
          f"min {low(t_plain):.1f} ms")
    print(f"prefill alone: median {med(t_prefill):.1f} ms; flow part: ours {max(med(t_ours) - med(t_prefill), 0):.1f}"
          f" ms, baseline {max(med(t_plain) - med(t_prefill), 0):.1f} ms")
    print(f"speed-up (median): {med(t_plain) / med(t_ours):.2f}x")


if __name__ == "__main__":
    main()
