"""Train-step benchmark on this machine: FLOP utilisation of a small config against a matmul peak measured in the
same run, and compile time for 4 vs 36 scanned layers (vs unrolled, to show what scanning saves).

FLOPs are the analytic counts of molmoact2_jax/models/flops.py: hardware (what the step executes, padding
included; HFU) and model (the useful part; MFU). XLA's cost_analysis of the scanned step is printed beside them to
show how far it under-counts (it counts each scanned stack's loop body once).

  python benchmarks/train_step_bench.py [--steps 10] [--width 256]
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

from molmoact2_configs.pretrain import get_config
from molmoact2_jax.training import trainer


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(reps))
    return 2 * n ** 3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def small_config(width: int, layers: int, unroll: bool = False):
    c = get_config("tiny")
    c.model.use_action_expert, c.model.action_mode = True, "both"
    m = c.model
    m.llm.hidden_size, m.llm.num_layers, m.llm.mlp_dim = width, layers, 3 * width
    m.llm.num_heads, m.llm.num_kv_heads, m.llm.head_dim = 8, 2, width // 8
    m.action_expert.hidden_size, m.action_expert.num_heads = width // 2, 4
    m.action_expert.num_layers = layers
    m.action_expert.context_dim = 2 * (width // 8)
    m.scan_unroll = unroll
    c.data.global_batch_size = 4
    c.trainer.compilation_cache_dir = ""
    return c


def build(cfg):
    data = trainer.make_data(cfg)
    ex = next(data)
    setup = trainer.Setup(cfg, ex)
    state = setup.create_state()
    batch = trainer.global_batch(ex, setup.batch_shardings, int(cfg.data.global_batch_size))
    return setup, state, batch, data


def compile_seconds(cfg) -> float:
    setup, state, batch, _ = build(cfg)
    with setup.context():
        return _timed(lambda: setup.train_step.lower(state, batch).compile())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--no-compile-times", action="store_true")
    args = ap.parse_args()
    jax.config.update("jax_compilation_cache_dir", None)

    peak = matmul_peak()
    cfg = small_config(args.width, 4)
    cfg.data.seq_len = args.seq_len
    setup, state, batch, data = build(cfg)
    with setup.context():
        compiled = setup.train_step.lower(state, batch).compile()
        cost = compiled.cost_analysis()
        xla_scanned = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
        counted = setup.step_flops(jax.tree.map(np.asarray, batch))
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        times = []
        for _ in range(args.steps):
            b = trainer.global_batch(next(data), setup.batch_shardings, 4)
            t0 = time.perf_counter()
            state, m = compiled(state, b)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    print(f"matmul peak (fp32 2048^3, 1 CPU device): {peak / 1e9:.1f} GFLOP/s")
    hw, model = counted["hardware"], counted["model"]
    print(f"small config (LLM width {args.width}, 4 layers, expert on, batch 4 x {cfg.data.seq_len} tokens): "
          f"median step {step * 1e3:.1f} ms over {args.steps} steps")
    print(f"  hardware FLOPs {hw / 1e9:.2f} GFLOP/step -> {hw / step / 1e9:.1f} GFLOP/s, HFU {hw / step / peak:.1%} "
          f"of the matmul peak")
    print(f"  model FLOPs    {model / 1e9:.2f} GFLOP/step (valid tokens, masked attention) -> MFU "
          f"{model / step / peak:.1%}")
    print(f"  XLA cost_analysis of the scanned step: {xla_scanned / 1e9:.2f} GFLOP "
          f"({hw / xla_scanned:.1f}x under the executed count)")

    if args.no_compile_times:
        return
    rows = []
    for layers, unroll in ((4, False), (36, False), (4, True), (36, True)):
        rows.append((layers, unroll, compile_seconds(small_config(64, layers, unroll))))
    for layers, unroll, s in rows:
        print(f"compile: {layers:2d} layers {'unrolled' if unroll else 'scanned '}: {s:6.1f} s")
    by = {(l, u): s for l, u, s in rows}
    print(f"36/4 layers compile-time ratio: scanned {by[(36, False)] / by[(4, False)]:.2f}x, "
          f"unrolled {by[(36, True)] / by[(4, True)]:.2f}x")


if __name__ == "__main__":
    main()
