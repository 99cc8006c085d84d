"""Simulation throughput: MetaWorld environment steps/s (with 2-camera rendering) with and without the
fast rendering settings (shadows, reflections and multisampling off), physics-only steps/s, and baseline policy
queries/s, in one run.

  MUJOCO_GL=egl python benchmarks/sim_bench.py [--task push-v3] [--steps 100] [--image-size 224]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from molmoact2_jax.evaluation.config import get_config  # noqa: E402
from molmoact2_jax.evaluation.envs import MetaWorldEnv  # noqa: E402
from molmoact2_jax.evaluation.policies import ExpertPolicy, MeanActionPolicy, RandomPolicy  # noqa: E402


def env_steps_per_s(task: str, hw, fast: bool, steps: int, render: bool = True, runs: int = 3) -> list[float]:
    """Steps/s of `runs` timed runs of `steps` random-action steps each (same seeds every run)."""
    cfg = get_config("metaworld", image_hw=hw, fast_render=fast)
    env = MetaWorldEnv(task, cfg, render=render)
    rates = []
    try:
        env.reset(seed=0)
        env.step(np.zeros(4))                          # first render allocates buffers
        for _ in range(runs):
            rng = np.random.default_rng(0)
            env.reset(seed=0)
            t0 = time.perf_counter()
            for i in range(steps):
                if i and i % 100 == 0:
                    env.reset(seed=i)
                env.step(rng.uniform(-1, 1, 4))
            rates.append(steps / (time.perf_counter() - t0))
        return rates
    finally:
        env.close()


def policy_queries_per_s(policy, obs: dict, n: int) -> float:
    policy.reset()
    t0 = time.perf_counter()
    for _ in range(n):
        policy.act(obs)
    return n / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="push-v3")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3, help="timed runs per environment setting (median and best shown)")
    args = p.parse_args(argv)
    hw = (args.image_size, args.image_size)
    print(f"MetaWorld {args.task}, 2 cameras at {hw[0]}x{hw[1]}, MUJOCO_GL={os.environ['MUJOCO_GL']}, "
          f"{args.steps} random-action steps each")
    runs = {name: env_steps_per_s(args.task, hw, fast_render, args.steps * (5 if not render else 1), render, args.runs)
            for name, fast_render, render in (("slow", False, True), ("fast", True, True), ("physics", True, False))}
    slow, fast, physics = (float(np.median(runs[k])) for k in ("slow", "fast", "physics"))
    best = {k: max(v) for k, v in runs.items()}
    print(f"  env steps/s (median / best of {args.runs}), default rendering (shadows, reflections, 4x MSAA): "
          f"{slow:8.1f} / {best['slow']:8.1f}  ({1000 / slow:6.1f} ms/step)")
    print(f"  env steps/s (median / best), fast rendering (none of them):  {fast:8.1f} / {best['fast']:8.1f}  "
          f"({1000 / fast:6.1f} ms/step)")
    print(f"  env steps/s (median / best), physics only (no cameras):             {physics:8.1f} / "
          f"{best['physics']:8.1f}  ({1000 / physics:6.2f} ms/step)")
    print(f"  fast / default rendering speed-up (medians): {fast / slow:.2f}x")

    cfg = get_config("metaworld", image_hw=hw)
    env = MetaWorldEnv(args.task, cfg)
    obs = dict(env.reset(seed=0), env_task=args.task)
    env.close()
    rows = [("random", RandomPolicy(cfg, n_steps=cfg.n_action_steps)),
            ("mean-action", MeanActionPolicy(np.zeros(4), n_steps=cfg.n_action_steps)),
            ("expert", ExpertPolicy(cfg))]
    for name, pol in rows:
        q = policy_queries_per_s(pol, obs, args.queries)
        print(f"  policy queries/s {name:12s} {q:10.0f}  ({1e6 / q:7.1f} us/query)")
    print(f"  closed loop with a baseline, n_action_steps={cfg.n_action_steps}: bounded by the "
          f"environment ({fast:.0f} steps/s per worker process)")


if __name__ == "__main__":
    main()
