"""Policy.predict_action (JAX) against the PyTorch reference path on the same HF folder, side by side in one run.

The folder is a random MolmoAct2 of the shape the issue measured (ViT 256 x 6 at 224 px, two cameras, LLM 512 x 6,
expert 384 x 6, horizon 16, 10 flow steps, a ~260-token prompt). The baseline is what a user of the official
release runs on a CPU: transformers' Molmo2 backbone (SDPA attention) + the expert written from the official code
(`molmoact2_jax/convert/torch_ref`), torch in inference mode with as many threads as JAX has cores. Calls
alternate between the two; minima and medians of --repeats each. Ours is timed from raw images to robot-unit
actions; the baseline gets its inputs ready-made (no preprocessing is timed for it).

    python benchmarks/policy_vs_torch_bench.py [--repeats 11] [--threads 2]
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def official_shaped_folder(d: str):
    """A random MolmoAct2 HF folder of the issue's 52.6M-parameter shape; returns its path."""
    from molmoact2_jax.convert import molmoact2_hf
    from molmoact2_jax.inference import testing as T
    from molmoact2_jax.tokenizers.text import TextTokenizer
    tok_path = T.train_text_tokenizer(os.path.join(d, "tokenizer.json"))
    tok = TextTokenizer.from_file(tok_path)
    cfg = T.model_config("tiny", tok)
    cfg.vit.update(dict(image_size=224, hidden_size=256, num_heads=4, head_dim=64, mlp_dim=1024, num_layers=6,
                        feature_layers=(-1, -3)))
    cfg.connector.update(dict(num_heads=4, head_dim=64, hidden_size=256, mlp_dim=1024))
    cfg.llm.update(dict(hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=4, head_dim=64, mlp_dim=1536))
    cfg.action_expert.update(dict(hidden_size=384, num_heads=6, timestep_embed_dim=128, max_action_horizon=16,
                                  ffn_multiple_of=64))
    cfg.max_sequence_length = 2048
    params = T.init_params(cfg, seed=0)
    stats = T.norm_stats(horizon=16, n_action_steps=16, num_cameras=2)
    ckpt = T.save_checkpoint(os.path.join(d, "ckpt"), cfg, params, stats, tok_path, T.fit_openfast(horizon=16))
    hf = os.path.join(d, "hf")
    molmoact2_hf.export_hf(ckpt, hf, progress=False)
    n = sum(int(np.prod(np.shape(x))) for x in __import__("jax").tree.leaves(params))
    return hf, n


def torch_inputs(policy, inp):
    """transformers Molmo2 inputs for the prompt our Policy built (unpadded, as the official processor gives)."""
    import torch
    t = policy.cfg.tokens
    ids = inp["ids"][0][inp["attn"][0]]
    n_img, p = inp["images"].shape[1:3]
    g = policy.image_grid[0]
    family = [t.image_start, t.image_end, t.image_patch, t.image_col]
    pooled = np.asarray(inp["pooled"][0])
    from transformers import Molmo2ForConditionalGeneration
    per_image = "image_num_crops" in inspect.signature(Molmo2ForConditionalGeneration.get_image_features).parameters
    if per_image:   # transformers >= 5.25: each image's own patch indices + image_num_crops (it adds the offsets)
        image_of_row = np.repeat(np.arange(n_img), len(pooled) // n_img)[:, None]
        pooled = np.where(pooled >= 0, pooled - image_of_row * p, -1)
    out = dict(input_ids=torch.tensor(ids[None], dtype=torch.long),
               attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
               pixel_values=torch.tensor(inp["images"][0]),
               image_token_pooling=torch.tensor(pooled, dtype=torch.long),
               image_grids=torch.tensor([[g, g, 0, 0]] * n_img, dtype=torch.long),
               mm_token_type_ids=torch.tensor(np.isin(ids, family)[None].astype(np.int64)))
    if per_image:
        out["image_num_crops"] = torch.ones(n_img, dtype=torch.long)
    return out


def observation(policy):
    """The benchmark's one observation for `policy` (a Policy of `official_shaped_folder`): (images: two 240x320
    uint8, task: a long instruction, state, tag, flow noise (horizon, 32), our model inputs, the torch inputs)."""
    from molmoact2_jax.inference import testing as T
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (240, 320, 3), np.uint8) for _ in range(2)]
    task = ("pick up the red block on the left side of the table next to the bowl and place it carefully "
            "into the blue bowl, then move the arm back to its starting pose")
    state = rng.uniform(-1, 1, T.STATE_DIM)
    tag = policy.tag(T.TAG)
    noise = rng.standard_normal((tag.horizon, 32)).astype(np.float32)
    inp = policy.build_inputs(images, task, state, tag)
    return images, task, state, tag, noise, inp, torch_inputs(policy, inp)


def stats(ts):
    return min(ts) * 1e3, float(np.median(ts)) * 1e3


def alternate(ours, ref, repeats: int):
    """Calls the two alternately, `repeats` times each: ((min, median) ms of ours, (min, median) ms of ref)."""
    times = ([], [])
    for _ in range(repeats):
        for fn, ts in zip((ours, ref), times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return stats(times[0]), stats(times[1])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    import jax
    import torch
    from molmoact2_jax.convert.torch_ref.molmoact2 import MolmoAct2Torch
    from molmoact2_jax.inference import testing as T
    from molmoact2_jax.inference.policy import Policy
    torch.set_num_threads(args.threads)
    d = tempfile.mkdtemp(prefix="policy_vs_torch_")
    hf, n_params = official_shaped_folder(d)
    ours = Policy.load(hf)
    ref = MolmoAct2Torch(hf, attn_implementation="sdpa")
    images, task, state, tag, noise, inp, hf_in = observation(ours)
    dim_valid = torch.tensor(np.arange(32) < tag.action_dim)[None]
    print(f"model {n_params / 1e6:.1f}M params; prompt {inp['prompt_tokens']} tokens (padded to "
          f"{inp['ids'].shape[1]}); JAX {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"with {args.threads} threads")

    def run_ours():
        return ours.predict_action(images, task, state, T.TAG, noise=noise).normalized_actions

    def run_ref():
        with torch.inference_mode():
            x, _ = ref.sample_actions(torch.tensor(noise[None]), dim_valid, **hf_in)
        return x[0, :, :tag.action_dim].numpy()

    a, b = run_ours(), run_ref()
    rel = float(np.abs(a - b).max() / np.abs(b).max())
    print(f"actions agree: max |ours - torch| / max |torch| = {rel:.1e}")
    (om, omed), (rm, rmed) = alternate(run_ours, run_ref, args.repeats)
    print(f"continuous predict_action: ours min {om:.1f} / median {omed:.1f} ms; torch reference min {rm:.1f} / "
          f"median {rmed:.1f} ms -> ours {rm / om:.2f}x faster (medians {rmed / omed:.2f}x)")

    # Discrete: greedy decoding with the KV cache. The baseline is transformers' generate on the same backbone,
    # made to emit as many tokens as ours did (random weights stop at a random EOS).
    def run_ours_discrete():
        return ours.predict_action(images, task, state, T.TAG, mode="discrete")

    n_new = len(run_ours_discrete().generated_token_ids)

    def run_ref_discrete():
        with torch.inference_mode():
            return ref.backbone.generate(**hf_in, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)

    run_ref_discrete()
    (dm, dmed), (drm, drmed) = alternate(run_ours_discrete, run_ref_discrete, args.repeats)
    print(f"discrete predict_action ({n_new} tokens): ours min {dm:.1f} / median {dmed:.1f} ms; transformers generate "
          f"min {drm:.1f} / median {drmed:.1f} ms -> ours {drm / dm:.2f}x faster (medians {drmed / dmed:.2f}x)")

    # Where the time goes, each side's pieces timed alone (min of the repeats).
    from molmoact2_jax.models import flow
    model, params = ours.model, ours.params
    batch = dict(input_ids=jax.numpy.asarray(inp["ids"]), images=jax.numpy.asarray(inp["images"]),
                 pooled_idx=jax.numpy.asarray(inp["pooled"]), attention_mask=jax.numpy.asarray(inp["attn"]))
    context = jax.jit(lambda p, b: flow.project_context(model.expert, p["action_expert"], *model.context(p, b)[1:4]))
    loop = jax.jit(lambda p, ctx, x: flow.sample_actions_from_context(model.expert, p["action_expert"], ctx, x))
    ctx = jax.block_until_ready(context(params, batch))
    x0 = jax.numpy.asarray(noise[None])
    jax.block_until_ready(loop(params, ctx, x0))

    def best(fn):
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts) * 1e3
    host = best(lambda: ours.build_inputs(images, task, state, tag))
    c_ms = best(lambda: jax.block_until_ready(context(params, batch)))
    l_ms = best(lambda: jax.block_until_ready(loop(params, ctx, x0)))
    with torch.inference_mode():
        r_pre = best(lambda: ref.prefill(**hf_in))
    print(f"ours split: host inputs {host:.1f} ms, backbone context (ViT + connector + prefill + K/V projection) "
          f"{c_ms:.1f} ms, {ours.cfg.flow.num_steps}-step flow loop {l_ms:.1f} ms")
    print(f"torch split: prefill (ViT + connector + LLM) {r_pre:.1f} ms, rest (K/V projection + flow loop) "
          f"{rm - r_pre:.1f} ms")


if __name__ == "__main__":
    main()
