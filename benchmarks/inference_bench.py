"""Inference latency of Policy.predict_action on random tiny and small MolmoAct2 configs (CPU or whatever JAX
device is present): continuous, discrete, and Think with 0% / 30% / 100% of the depth cells changed. Baselines,
measured in the same run: continuous against the PyTorch reference path (transformers Molmo2 with SDPA + the
official-code expert, `convert/torch_ref`) on an HF export of the same weights; discrete against transformers'
`generate` on that backbone, made to emit as many tokens; Think against full depth re-prediction. Not a test.

    python benchmarks/inference_bench.py [--variants tiny small] [--repeats 5]

Timings exclude compilation (one warm-up call per shape first) and report the median of --repeats calls.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from molmoact2_jax.inference import testing as T  # noqa: E402
from molmoact2_jax.inference.policy import Policy  # noqa: E402


def changed_image(img, frac, seed=1):
    """A copy of the 320x320 first image with round(frac * 100) cells replaced."""
    rng = np.random.default_rng(seed)
    out = img.copy()
    for c in rng.choice(100, int(round(frac * 100)), replace=False):
        r, k = divmod(int(c), 10)
        out[r * 32:(r + 1) * 32, k * 32:(k + 1) * 32] = rng.integers(0, 256, (32, 32, 3), np.uint8)
    return out


def timed(fn, repeats):
    fn()  # warm-up / compile
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1000.0, out


def torch_baselines(d, cfg, params, stats, fast, policy, images, task, state, n_tokens, repeats) -> dict:
    """The PyTorch reference on the same weights. The depth gate only acts on depth tokens, which a non-Think
    prompt has none of, so the export drops it (the torch reference does not model it)."""
    import ml_collections
    import torch
    from benchmarks.policy_vs_torch_bench import torch_inputs
    from molmoact2_jax.convert import molmoact2_hf
    from molmoact2_jax.convert.torch_ref.molmoact2 import MolmoAct2Torch
    plain = ml_collections.ConfigDict(cfg.to_dict())
    plain.action_expert.depth_gate = False
    ae = {k: v for k, v in params["action_expert"].items() if not k.startswith("depth_gate")}
    ckpt = T.save_checkpoint(os.path.join(d, "plain"), plain, dict(params, action_expert=ae), stats,
                             os.path.join(d, "tokenizer.json"), fast)
    molmoact2_hf.export_hf(ckpt, os.path.join(d, "plain_hf"), progress=False)
    ref = MolmoAct2Torch(os.path.join(d, "plain_hf"), attn_implementation="sdpa")
    tag = policy.tag(T.TAG)
    hf_in = torch_inputs(policy, policy.build_inputs(images, task, state, tag))
    noise = torch.randn(1, tag.horizon, 32)
    dim = torch.tensor(np.arange(32) < tag.action_dim)[None]
    with torch.inference_mode():
        cont, _ = timed(lambda: ref.sample_actions(noise, dim, **hf_in), repeats)
        disc, _ = timed(lambda: ref.backbone.generate(**hf_in, max_new_tokens=n_tokens, min_new_tokens=n_tokens,
                                                      do_sample=False), repeats)
    return {"torch_continuous": cont, "torch_discrete": disc}


def bench(variant: str, repeats: int) -> dict:
    d = tempfile.mkdtemp(prefix=f"infbench_{variant}_")
    t0 = time.perf_counter()
    cfg, params, stats, tok, fast = T.make_parts(d, variant=variant, depth_gate=True)
    policy = Policy(cfg, params, stats, tok, fast)
    setup_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (320, 320, 3), np.uint8)
    wrist = rng.integers(0, 256, (240, 320, 3), np.uint8)
    state = rng.uniform(-1, 1, T.STATE_DIM)
    task = "put the red block in the bowl"
    res = {"setup_s": setup_s}
    res["continuous"], _ = timed(lambda: policy.predict_action([first, wrist], task, state, T.TAG, seed=0), repeats)
    res["discrete"], out = timed(lambda: policy.predict_action([first, wrist], task, state, T.TAG, mode="discrete"),
                                 repeats)
    res["discrete_tokens"] = len(out.generated_token_ids)
    res.update(torch_baselines(d, cfg, params, stats, fast, policy, [first, wrist], task, state, res["discrete_tokens"],
                               repeats))
    base = policy.predict_action([first, wrist], task, state, T.TAG, think=True, seed=0)
    res["think_full"], _ = timed(lambda: policy.predict_action([first, wrist], task, state, T.TAG, think=True,
                                                               seed=0), repeats)
    for frac in (0.0, 0.3, 1.0):
        img = changed_image(first, frac)
        ms, out = timed(lambda: policy.predict_action([img, wrist], task, state, T.TAG, think=True, seed=0,
                                                      depth_cache=base.depth_cache), repeats)
        res[f"think_{int(frac * 100)}pct"] = ms
        res[f"think_{int(frac * 100)}pct_predicted"] = out.think_stats.num_predicted
        res[f"think_{int(frac * 100)}pct_width"] = out.think_stats.width
    return res


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["tiny", "small"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import jax
    import torch
    torch.set_num_threads(os.cpu_count())
    print(f"device: {jax.devices()[0].platform} ({jax.devices()[0].device_kind}), jax {jax.__version__}; "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    rows = {v: bench(v, args.repeats) for v in args.variants}
    print(f"{'latency (ms, median of %d)' % args.repeats:34s}" + "".join(f"{v:>12s}" for v in rows))
    for key, label in [("continuous", "continuous (flow, 10 steps)"), ("discrete", "discrete (OpenFAST greedy)"),
                       ("think_full", "think, no cache (100 predicted)"), ("think_0pct", "think, 0% cells changed"),
                       ("think_30pct", "think, 30% cells changed"), ("think_100pct", "think, 100% cells changed")]:
        print(f"{label:34s}" + "".join(f"{rows[v][key]:12.1f}" for v in rows))
    print(f"{'discrete tokens generated':34s}" + "".join(f"{rows[v]['discrete_tokens']:12d}" for v in rows))
    print(f"{'torch reference, continuous':34s}" + "".join(f"{rows[v]['torch_continuous']:12.1f}" for v in rows))
    print(f"{'transformers generate, same tokens':34s}" + "".join(f"{rows[v]['torch_discrete']:12.1f}" for v in rows))
    for mode in ("continuous", "discrete"):
        print(f"{'speed-up vs torch, ' + mode:34s}" +
              "".join(f"{rows[v]['torch_' + mode] / rows[v][mode]:11.2f}x" for v in rows))
    for pct in (0, 30, 100):
        print(f"{'think speed-up vs full, %d%%' % pct:34s}" +
              "".join(f"{rows[v]['think_full'] / rows[v][f'think_{pct}pct']:11.2f}x" for v in rows))
    print(f"{'cells re-predicted at 0/30/100%':34s}" + "".join(
        f"{'%d/%d/%d' % tuple(rows[v][f'think_{p}pct_predicted'] for p in (0, 30, 100)):>12s}" for v in rows))
    print(f"{'step width chosen at 0/30/100%':34s}" + "".join(
        f"{'%d/%d/%d' % tuple(rows[v][f'think_{p}pct_width'] for p in (0, 30, 100)):>12s}" for v in rows))


if __name__ == "__main__":
    main()
