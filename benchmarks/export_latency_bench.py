"""predict_action latency (continuous) of one model through its exports against the JAX Policy and the PyTorch
reference, side by side in one run.

The model is the random MolmoAct2 of `policy_vs_torch_bench.py` (the official release's shape, 53.2M parameters:
ViT 256 x 6 at 224 px, two cameras, LLM 512 x 6, expert 384 x 6, horizon 16, 10 flow steps; with the task below
the prompt is 325 tokens, padded to 336), built by that module's `official_shaped_folder`. From the one HF
folder, with the same weights:

  - JAX `Policy.load(folder)` (the baseline the exports are compared to),
  - the ONNX export (`export_policy(..., "onnx")`) run by the jax-free runtime `molmoact2_jax.runtime.OnnxPolicy`,
    once per flow kind: "loop" (all Euler steps inside flow.onnx) and "step" (flow.onnx gives one velocity, the
    runtime does the Euler loop in numpy),
  - the StableHLO export ("loop") loaded with `molmoact2_jax.runtime.load_exported` (StableHLOPolicy),
  - the PyTorch reference (transformers Molmo2 with SDPA + the official-code expert, `convert/torch_ref`), given its
    inputs ready-made as in `policy_vs_torch_bench.py` (no preprocessing timed for it).

Every path gets the same observation (two 240x320 uint8 images, a long task, a state, explicit flow noise); the
exports are made with the policy's own padded prompt length, so they compute on the same token count. The run
prints the max |diff| of each path's normalized actions against the JAX Policy's, the time each export took,
minima and medians of --repeats alternating calls per path, the ratios between them, then each side's parts alone:
the JAX backbone context and flow loop (jitted as the exports split them), and the ONNX graphs on onnxruntime
sessions of the export's own files (prefix, then flow.onnx once ("loop") or num_steps times with the Euler update in
numpy ("step")). onnxruntime sessions and torch use --threads intra-op threads; JAX uses all cores (its default),
so leave --threads at os.cpu_count() for a like-for-like run.

    JAX_PLATFORMS=cpu python benchmarks/export_latency_bench.py [--repeats 11] [--threads N]
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.policy_vs_torch_bench import observation, official_shaped_folder, stats  # noqa: E402

def alternate_all(fns: dict, repeats: int) -> dict:
    """Calls every function of `fns` in turn, `repeats` rounds: {name: (min, median) ms}."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: stats(ts) for k, ts in times.items()}


def faster(base_ms: float, ms: float) -> str:
    """'R x faster' (or 'R x slower') of `ms` against `base_ms`."""
    return f"{base_ms / ms:.2f}x faster" if ms <= base_ms else f"{ms / base_ms:.2f}x slower"


def session_options(threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return so


def onnx_flow_split(export_dir: str, inp: dict, noise, dim_valid, threads: int, repeats: int) -> dict:
    """The ONNX graphs alone, on onnxruntime sessions of the export's files: {part: min ms}."""
    import json

    import onnxruntime as ort
    with open(os.path.join(export_dir, "export.json")) as f:
        meta = json.load(f)
    g = meta["graphs"]
    so = session_options(threads)
    prefix = ort.InferenceSession(os.path.join(export_dir, g["prefix"]["file"]), so,
                                  providers=["CPUExecutionProvider"])
    flow = ort.InferenceSession(os.path.join(export_dir, g["flow"]["file"]), so, providers=["CPUExecutionProvider"])
    arrays = dict(input_ids=inp["ids"].astype(np.int32), images=inp["images"].astype(np.float32),
                  pooled_idx=inp["pooled"].astype(np.int32), attention_mask=inp["attn"].astype(bool))
    # fed by position, as the runtime does: the graphs' input names need not be export.json's
    prefix_feed = {i.name: arrays[s["name"]] for i, s in zip(prefix.get_inputs(), g["prefix"]["inputs"])}
    flow_names = [i.name for i in flow.get_inputs()]
    ctx = prefix.run(None, prefix_feed)
    valid = np.asarray(dim_valid, bool)[None]
    x0 = noise[None].astype(np.float32)
    n = int(meta["num_steps"])

    def flow_feed(*extra):
        return dict(zip(flow_names, list(ctx) + list(extra)))
    if g["flow"]["kind"] == "loop":
        def run_flow():
            return flow.run(None, flow_feed(x0, valid))[0]
    else:
        dim_f = valid.astype(np.float32)[:, None, :]

        def run_flow():
            x = x0 * dim_f
            for k in range(n):
                v = flow.run(None, flow_feed(x, np.full((1,), np.float32(k / n), np.float32), valid))[0]
                x = (x + np.float32(1.0 / n) * v) * dim_f
            return x

    def best(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts) * 1e3
    return {"prefix": best(lambda: prefix.run(None, prefix_feed)), "flow": best(run_flow)}


def jax_split(policy, inp, noise, repeats: int):
    """The JAX Policy's two parts alone, jitted as the exports' graphs split them: (context, flow loop) min ms."""
    import jax
    from molmoact2_jax.models import flow
    model, params = policy.model, policy.params
    batch = {k: jax.numpy.asarray(inp[v]) for k, v in (("input_ids", "ids"), ("images", "images"),
                                                      ("pooled_idx", "pooled"), ("attention_mask", "attn"))}
    context = jax.jit(lambda p, b: flow.project_context(model.expert, p["action_expert"], *model.context(p, b)[1:]))
    loop = jax.jit(lambda p, ctx, x: flow.sample_actions_from_context(model.expert, p["action_expert"], ctx, x))
    ctx = jax.block_until_ready(context(params, batch))
    x0 = jax.numpy.asarray(noise[None])
    out = []
    for fn in (lambda: context(params, batch), lambda: loop(params, ctx, x0)):
        jax.block_until_ready(fn())
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            ts.append(time.perf_counter() - t0)
        out.append(min(ts) * 1e3)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    import jax
    import onnxruntime
    import torch
    from molmoact2_jax.convert.torch_ref.molmoact2 import MolmoAct2Torch
    from molmoact2_jax.export.writer import export_policy
    from molmoact2_jax.runtime import OnnxPolicy, load_exported
    from molmoact2_jax.inference import testing as T
    from molmoact2_jax.inference.policy import Policy
    torch.set_num_threads(args.threads)
    if args.threads != os.cpu_count():
        print(f"note: --threads {args.threads} != {os.cpu_count()} cores; JAX still uses every core")
    d = tempfile.mkdtemp(prefix="export_latency_")
    atexit.register(shutil.rmtree, d, True)   # the folder, checkpoint and exports: about 0.8 GB
    hf, n_params = official_shaped_folder(d)
    policy = Policy.load(hf)
    ref = MolmoAct2Torch(hf, attn_implementation="sdpa")
    images, task, state, tag, noise, inp, hf_in = observation(policy)
    dim_valid = np.arange(32) < tag.action_dim
    prompt_tokens = int(inp["ids"].shape[1])
    print(f"model {n_params / 1e6:.1f}M params; prompt {inp['prompt_tokens']} tokens (padded to {prompt_tokens}, "
          f"the exports' prompt_tokens); JAX {jax.__version__} on {jax.devices()[0].platform}, onnxruntime "
          f"{onnxruntime.__version__}, torch {torch.__version__}; {args.threads} threads, {os.cpu_count()} cores")

    # The exports, made with the library; wall time of each.
    exports, export_s = {}, {}
    for kind in ("loop", "step"):
        out = os.path.join(d, f"onnx_{kind}")
        t0 = time.perf_counter()
        export_policy(policy, out, "onnx", prompt_tokens=prompt_tokens, flow_kind=kind, source=hf)
        export_s[f"onnx_{kind}"] = time.perf_counter() - t0
        exports[f"onnx_{kind}"] = out
    out = os.path.join(d, "stablehlo_loop")
    t0 = time.perf_counter()
    export_policy(policy, out, "stablehlo", prompt_tokens=prompt_tokens, flow_kind="loop", source=hf)
    export_s["stablehlo_loop"] = time.perf_counter() - t0
    exports["stablehlo_loop"] = out
    sizes = {k: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(v) for f in fs) / 2**20
             for k, v in exports.items()}
    print("export (seconds, folder MiB): " + "; ".join(f"{k} {export_s[k]:.1f} s, {sizes[k]:.0f} MiB"
                                                       for k in exports))

    runners, load_s = {}, {}
    for kind in ("loop", "step"):
        t0 = time.perf_counter()
        pol = OnnxPolicy.load(exports[f"onnx_{kind}"], intra_op_threads=args.threads)
        load_s[f"onnx_{kind}"] = time.perf_counter() - t0
        runners[f"onnx_{kind}"] = pol
    t0 = time.perf_counter()
    runners["stablehlo_loop"] = load_exported(exports["stablehlo_loop"])
    load_s["stablehlo_loop"] = time.perf_counter() - t0
    print("load (seconds): " + "; ".join(f"{k} {v:.2f} s" for k, v in load_s.items())
          + f"; onnxruntime intra-op threads {args.threads}")

    def exported_fn(pol):
        return lambda: pol.predict_action(images, task, state, T.TAG, noise=noise).normalized_actions

    def run_ref():
        with torch.inference_mode():
            x, _ = ref.sample_actions(torch.tensor(noise[None]), torch.tensor(dim_valid)[None], **hf_in)
        return x[0, :, :tag.action_dim].numpy()

    fns = {"jax_policy": lambda: policy.predict_action(images, task, state, T.TAG, noise=noise).normalized_actions}
    fns.update({k: exported_fn(p) for k, p in runners.items()})
    fns["torch_ref"] = run_ref

    # Agreement first (these calls are also the warm-up / compile).
    base = np.asarray(fns["jax_policy"](), np.float64)
    scale = float(np.abs(base).max())
    for k, fn in fns.items():
        if k == "jax_policy":
            continue
        a = np.asarray(fn(), np.float64)
        if a.shape != base.shape:
            print(f"{k}: normalized actions shaped {a.shape} vs the JAX Policy's {base.shape}")
            continue
        diff = float(np.abs(a - base).max())
        print(f"actions agree: max |{k} - jax_policy| = {diff:.2e} ({diff / scale:.1e} of max |jax_policy|)")

    res = alternate_all(fns, args.repeats)
    print(f"continuous predict_action, {args.repeats} alternating calls each (min / median ms):")
    for k, (mn, med) in res.items():
        print(f"  {k:<16} min {mn:8.1f}  median {med:8.1f}")
    jm, tm = res["jax_policy"][1], res["torch_ref"][1]
    for k in runners:
        m = res[k][1]
        print(f"{k} median {m:.1f} ms vs JAX Policy {jm:.1f} ms -> {faster(jm, m)}; vs torch reference {tm:.1f} ms "
              f"-> {faster(tm, m)} (minima: {faster(res['jax_policy'][0], res[k][0])}, "
              f"{faster(res['torch_ref'][0], res[k][0])})")
    print(f"jax_policy median {jm:.1f} ms vs torch reference {tm:.1f} ms -> {faster(tm, jm)}")
    lm, sm = res["onnx_loop"][1], res["onnx_step"][1]
    print(f"ONNX flow kinds end to end: loop median {lm:.1f} ms, step median {sm:.1f} ms -> loop {faster(sm, lm)}")

    # The ONNX graphs alone (min of the repeats), per flow kind.
    split = {kind: onnx_flow_split(exports[f"onnx_{kind}"], inp, noise, dim_valid, args.threads, args.repeats)
             for kind in ("loop", "step")}
    n = policy.cfg.flow.num_steps
    pl, ps = split["loop"], split["step"]
    jc, jf = jax_split(policy, inp, noise, args.repeats)
    print(f"JAX graphs alone (jit, min ms): backbone context (ViT + connector + prefill + K/V projection) {jc:.1f}; "
          f"{n}-step flow loop {jf:.1f}")
    print(f"ONNX graphs alone (onnxruntime sessions, {args.threads} threads, min ms): prefix {pl['prefix']:.1f} "
          f"(loop export) / {ps['prefix']:.1f} (step export); {n}-step flow: loop {pl['flow']:.1f}, step "
          f"{ps['flow']:.1f} (flow.onnx x {n} + numpy Euler) -> loop {faster(ps['flow'], pl['flow'])}")


if __name__ == "__main__":
    main()
