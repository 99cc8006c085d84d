"""Latency cost of real-time chunking (RTC) against plain flow sampling, measured in the same process.

Three ways to sample one chunk from the same prefilled observation and noise:
  plain      `MolmoAct2.sample_actions`: the Euler steps in one compiled loop (what serving runs without RTC);
  rtc        the same call with `guidance=` (models/rtc.py): one vjp of the expert per Euler step, same loop;
  rtc-loop   RTC as a straightforward port of the reference runs it: one jitted guided step per Euler step,
             called from a Python loop (as LeRobot's RTC processor wraps the denoiser step by step).
Also the end-to-end `Policy.predict_action` latency with and without `prev_chunk`. Not a test.

  python benchmarks/rtc_bench.py [--variant tiny|small] [--steps 10] [--runs 7]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.sampling_bench import timings  # noqa: E402
from molmoact2_jax.inference import testing as T  # noqa: E402
from molmoact2_jax.inference.policy import Policy  # noqa: E402
from molmoact2_jax.models import flow, rtc  # noqa: E402
from molmoact2_jax.models.action_expert import ActionExpert  # noqa: E402
from molmoact2_jax.models.molmoact2 import MolmoAct2  # noqa: E402


def ms(t, how=np.median) -> float:
    return float(how(t)) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="small", choices=("tiny", "small"), help="random model size")
    ap.add_argument("--steps", type=int, default=10, help="Euler steps")
    ap.add_argument("--runs", type=int, default=7, help="timed runs of each (after one compile run)")
    args = ap.parse_args()
    cfg = T.model_config(args.variant)
    model = MolmoAct2(cfg)
    params = T.init_params(cfg)
    ae = cfg.action_expert
    batch = {k: jnp.asarray(v) for k, v in model.fake_batch(1, num_images=2).items()}
    batch["action_dim_valid"] = jnp.asarray(np.arange(ae.max_action_dim) < 7)[None]
    h, n = ae.max_action_horizon, args.steps
    noise = jax.random.normal(jax.random.PRNGKey(0), (1, h, ae.max_action_dim))
    target = jnp.where(batch["action_dim_valid"][:, None], jax.random.uniform(jax.random.PRNGKey(1), noise.shape,
                                                                               minval=-1, maxval=1), 0.0)
    guidance = rtc.make_guidance(target, h // 4, (3 * h) // 4)

    # the flow part alone, from one prefilled context
    context = jax.jit(lambda p, b: model.context(p, b)[1:4])
    k, v, enc = context(params, batch)
    expert, pe = model.expert, params["action_expert"]
    plain = jax.jit(lambda z: flow.sample_actions(expert, pe, k, v, enc, action_dim_valid=batch["action_dim_valid"],
                                                  noise=z, num_steps=n))
    guided = jax.jit(lambda z, g: flow.sample_actions(expert, pe, k, v, enc, noise=z, num_steps=n, guidance=g,
                                                      action_dim_valid=batch["action_dim_valid"]))
    ctx = jax.jit(lambda: flow.project_context(expert, pe, k, v, enc))()
    dim_f = batch["action_dim_valid"].astype(jnp.float32)[:, None, :]

    @jax.jit
    def loop_step(x, t, g):
        def velocity(z):
            return expert.apply({"params": pe}, ctx, z, jnp.full((1,), t), None,
                                method=ActionExpert.velocity) * dim_f
        return (x + rtc.guided_velocity(velocity, x, t, g, dim_f) / n) * dim_f

    def guided_loop(z, g):
        x = z * dim_f
        for i in range(n):
            x = loop_step(x, jnp.float32(i / n), g)
        return x

    a, b, c = plain(noise), guided(noise, guidance), guided_loop(noise, guidance)
    t_plain = timings(lambda: plain(noise), args.runs)
    t_rtc = timings(lambda: guided(noise, guidance), args.runs)
    t_loop = timings(lambda: guided_loop(noise, guidance), args.runs)

    # end to end through the Policy
    with tempfile.TemporaryDirectory() as d:
        cfg2, params2, stats, tok, fast = T.make_parts(d, variant=args.variant)
        policy = Policy(cfg2, params2, stats, tok, fast)
    tag = policy.tag(T.TAG)
    imgs = T.random_images(2, seed=1)
    state = np.linspace(-0.5, 0.5, tag.state_dim)
    first = policy.predict_action(imgs, "pick up the cup", state, T.TAG, seed=0, n_action_steps=tag.horizon)
    prev = first.actions[tag.n_action_steps // 2:]
    call = lambda **kw: policy.predict_action(imgs, "pick up the cup", state, T.TAG, seed=1, num_steps=n, **kw)
    t_pol = timings(lambda: call().actions, args.runs)
    t_pol_rtc = timings(lambda: call(prev_chunk=prev, inference_delay=2).actions, args.runs)

    nparams = sum(x.size for x in jax.tree.leaves(params)) / 1e6
    print(f"{args.variant} model ({nparams:.1f}M params), 2 images, horizon {h}, {n} Euler steps, "
          f"{jax.devices()[0].platform}, {args.runs} runs (median / min); guided mask d={h // 4}, end={(3 * h) // 4}")
    print(f"max |rtc - rtc-loop| {float(jnp.abs(b - c).max()):.2e}; max |rtc - plain| {float(jnp.abs(b - a).max()):.2e}")
    print(f"flow, plain (one fori_loop):          {ms(t_plain):8.2f} / {ms(t_plain, np.min):8.2f} ms")
    print(f"flow, rtc (vjp per step, one loop):   {ms(t_rtc):8.2f} / {ms(t_rtc, np.min):8.2f} ms")
    print(f"flow, rtc-loop (step per Python call): {ms(t_loop):7.2f} / {ms(t_loop, np.min):8.2f} ms")
    print(f"predict_action plain:                 {ms(t_pol):8.2f} / {ms(t_pol, np.min):8.2f} ms")
    print(f"predict_action with prev_chunk:       {ms(t_pol_rtc):8.2f} / {ms(t_pol_rtc, np.min):8.2f} ms")
    print(f"RTC overhead (median): flow {ms(t_rtc) / ms(t_plain):.2f}x plain, predict_action "
          f"{ms(t_pol_rtc) / ms(t_pol):.2f}x plain; fused loop {ms(t_loop) / ms(t_rtc):.2f}x faster than rtc-loop")


if __name__ == "__main__":
    main()
