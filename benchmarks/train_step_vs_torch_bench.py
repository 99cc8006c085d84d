"""Train step (JAX) against transformers' Molmo2 training step (torch CPU) on the same weights and batches.

A random transformers Molmo2 (LLM --width x --layers, GQA 8 query / 2 K/V heads, SwiGLU 3x width, vocabulary
--vocab; a tiny ViT that a text-only batch never runs) is saved with save_pretrained and imported into our params
with the import-molmo2 code path (molmoact2_jax.convert.molmo2.import_molmo2 -> params checkpoint -> load_params).
Both sides then train its LLM on the same random text-only batches (--batch x --seq tokens, next-token CE over every
position but the last) with AdamW (same lr / betas / eps, no weight decay, no clipping):
  ours:  the trainer's jitted step (trainer.Setup: MolmoAct2.compute_loss, make_optimizer, make_train_step) on one
         CPU device, fp32, no remat;
  torch: Molmo2ForConditionalGeneration in train mode (SDPA attention, as transformers trains), labels=input_ids,
         loss.backward(), torch.optim.AdamW, with --threads threads.
The first step's losses must agree (relative difference <= 1e-4, else the run stops); the second step's show that
the two AdamW updates agree. Steps alternate between the two sides; medians and minima of --steps each. Then each
side's step is split (loss forward+backward with and without attention, attention replaced by its queries; the rest
is the optimizer update) and the kernels behind it are timed alone at the step's shapes: fp32 matmuls, and one
layer's causal GQA attention against SDPA with is_causal and SDPA as transformers calls it here (a training batch
carries mm_token_type_ids, so transformers builds an explicit mask and repeats K/V instead of taking is_causal).
Needs an idle machine: torch's OpenMP threads slow down many-fold when another process shares the cores.

  python benchmarks/train_step_vs_torch_bench.py [--width 512] [--layers 6] [--batch 4] [--seq 256] [--steps 10]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

LOSS_TOL = 1e-4
NO_ATTN = "bench_no_attention"


# ---------------------------------------------------------------- the shared model and batches
def random_molmo2(folder: str, args):
    """A random transformers Molmo2 of the requested LLM shape, saved to `folder`. Norm scales are perturbed so a
    wrong weight mapping cannot hide behind all-ones."""
    import torch
    from transformers import Molmo2Config, Molmo2ForConditionalGeneration

    torch.manual_seed(args.seed)
    v = args.vocab
    cfg = Molmo2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, head_dim=8, image_size=[42, 42], patch_size=14),
        adapter_config=dict(vision_feature_layer=[-1], hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                            head_dim=8, intermediate_size=48, text_hidden_size=args.width),
        text_config=dict(hidden_size=args.width, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         head_dim=args.width // args.heads, vocab_size=v, additional_vocab_size=128,
                         num_hidden_layers=args.layers, intermediate_size=3 * args.width,
                         max_position_embeddings=max(1024, args.seq),
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6}),
        image_start_token_id=v, image_end_token_id=v + 1, image_patch_id=v + 2, low_res_image_start_token_id=v + 4,
        frame_start_token_id=v + 7, frame_end_token_id=v + 8)
    model = Molmo2ForConditionalGeneration(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.float().save_pretrained(folder)


def make_batches(n: int, batch: int, seq: int, vocab: int, seed: int):
    """`n` random text-only batches of token ids in [0, vocab) (no image tokens, no padding)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, (batch, seq)).astype(np.int32) for _ in range(n)]


def ours_batch(ids: np.ndarray) -> dict:
    """Our training batch for `ids`: the target at t is ids[t + 1]; the last position has none (as transformers'
    shifted labels)."""
    b, t = ids.shape
    target = np.concatenate([ids[:, 1:], np.full((b, 1), -1, np.int32)], 1)
    mask = np.ones((b, t), np.float32)
    mask[:, -1] = 0.0
    return dict(input_ids=ids, attention_mask=np.ones((b, t), bool), target_ids=target, loss_mask=mask)


# ---------------------------------------------------------------- our side
def ours_setup(ckpt: str, args, example: dict):
    """trainer.Setup for the imported model (LLM only, no expert) with plain AdamW, and its params (LLM subtree)."""
    from molmoact2_configs.pretrain import get_config
    from molmoact2_jax.checkpoint_io import params as params_io
    from molmoact2_jax.training import trainer

    params, mcfg = params_io.load_params(ckpt)
    mcfg.dtype, mcfg.remat_policy, mcfg.scan_unroll = "float32", "none", False
    mcfg.use_action_expert, mcfg.action_mode = False, "discrete"
    mcfg.loss.z_loss_weight, mcfg.loss.flow_weight = 0.0, 0.0  # transformers' loss is the plain CE
    cfg = get_config("tiny")
    cfg.model = mcfg
    cfg.data.global_batch_size, cfg.data.seq_len = args.batch, args.seq
    o = cfg.optimizer
    o.lr = dict(vit=args.lr, connector=args.lr, llm=args.lr, action_expert=args.lr)
    o.b1, o.b2, o.eps = args.b1, args.b2, args.eps
    o.weight_decay, o.clip_grad_norm = 0.0, 0.0
    o.warmup_steps, o.final_lr_fraction = 0, 1.0  # a constant lr, as torch's AdamW without a scheduler
    cfg.trainer.compilation_cache_dir = ""
    setup = trainer.Setup(cfg, example)
    # A text-only batch never runs the ViT or connector: the model built for it has only the LLM's params.
    return setup, {"backbone": {"llm": params["params"]["llm"]}}


@contextlib.contextmanager
def no_attention_ours():
    """While tracing: our attention replaced by its queries (same shapes, no score / softmax / value work)."""
    from molmoact2_jax.models import layers
    saved = layers.attention
    layers.attention = lambda q, k, v, bias, dtype=None: q
    try:
        yield
    finally:
        layers.attention = saved


# ---------------------------------------------------------------- torch side
def torch_model(folder: str, args):
    """The saved model loaded back (train mode, SDPA), only the LLM trainable, and its AdamW."""
    import torch
    from transformers import Molmo2ForConditionalGeneration

    model = Molmo2ForConditionalGeneration.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32)
    model.train()
    trainable = []
    for name, p in model.named_parameters():
        llm = name.startswith("lm_head.") or ".language_model." in f".{name}"
        p.requires_grad_(llm)
        if llm:
            trainable.append(p)
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(args.b1, args.b2), eps=args.eps, weight_decay=0.0)
    return model, opt, trainable


def torch_inputs(ids: np.ndarray) -> dict:
    import torch
    t = torch.tensor(ids, dtype=torch.long)
    # mm_token_type_ids is required in train mode (all text here); labels are shifted inside the loss.
    return dict(input_ids=t, attention_mask=torch.ones_like(t), mm_token_type_ids=torch.zeros_like(t), labels=t,
                use_cache=False)


def register_no_attention():
    """A transformers attention implementation that returns the queries (the mask is still built as for SDPA)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    def no_attention(module, query, key, value, attention_mask, **kwargs):
        return query.transpose(1, 2).contiguous(), None

    AttentionInterface.register(NO_ATTN, no_attention)
    AttentionMaskInterface.register(NO_ATTN, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


# ---------------------------------------------------------------- timing helpers
def alternate(fns, repeats: int):
    """Calls each of `fns` in turn, `repeats` rounds; returns one list of seconds per function."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return times


def med_min(ts):
    """(median, min) in ms."""
    return float(np.median(ts)) * 1e3, min(ts) * 1e3


def speed(ours_ts, torch_ts) -> str:
    (om, on), (tm, tn) = med_min(ours_ts), med_min(torch_ts)
    return (f"ours median {om:.1f} / min {on:.1f} ms, torch median {tm:.1f} / min {tn:.1f} ms -> JAX is "
            f"{tm / om:.2f}x torch's speed (mins: {tn / on:.2f}x)")


# ---------------------------------------------------------------- kernels alone
def matmul_rows(args, repeats: int):
    """fp32 matmuls of the step's shapes, XLA vs torch: [(label, m, k, n, ours s, torch s)]."""
    import jax
    import jax.numpy as jnp
    import torch

    tok, d, f = args.batch * args.seq, args.width, 3 * args.width
    shapes = [("MLP up/gate, forward   [tok, D] @ [D, F]", (tok, d), (d, f), False),
              ("MLP down weight grad   [tok, D]^T @ [tok, F]", (tok, d), (tok, f), True),
              ("LM head, forward       [tok, D] @ [D, V]", (tok, d), (d, args.vocab), False)]
    rng = np.random.default_rng(0)
    rows = []
    for label, sa, sb, transpose_a in shapes:
        a = rng.standard_normal(sa).astype(np.float32)
        b = rng.standard_normal(sb).astype(np.float32)
        fn = jax.jit((lambda x, y: x.T @ y) if transpose_a else (lambda x, y: x @ y))
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tfn = (lambda: ta.T @ tb) if transpose_a else (lambda: ta @ tb)
        jax.block_until_ready(fn(ja, jb))
        tfn()
        ours_ts, torch_ts = alternate([lambda: jax.block_until_ready(fn(ja, jb)), tfn], repeats)
        m, k = (sa[1], sa[0]) if transpose_a else sa
        rows.append((label, m, k, sb[1], min(ours_ts), min(torch_ts)))
    return rows


def attention_rows(args, repeats: int):
    """One layer's causal GQA attention at the step's shape, forward and forward+backward: our layers.attention
    (with the additive causal bias the model builds) vs torch SDPA with is_causal (its fast path) and SDPA as
    transformers calls it in this step (K/V repeated to every query head, an explicit boolean mask).
    Returns {(side, pass): seconds (min)}."""
    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.functional as F
    from molmoact2_jax.models import layers

    b, t, hq, hkv = args.batch, args.seq, args.heads, args.kv_heads
    hd = args.width // hq
    rng = np.random.default_rng(1)
    q, g = (rng.standard_normal((b, t, hq, hd)).astype(np.float32) for _ in range(2))
    k, v = (rng.standard_normal((b, t, hkv, hd)).astype(np.float32) for _ in range(2))
    causal = np.tril(np.ones((t, t), bool))
    bias = jnp.asarray(np.broadcast_to(np.where(causal, 0.0, layers.NEG_INF), (b, 1, t, t)).astype(np.float32))
    jq, jk, jv, jg = map(jnp.asarray, (q, k, v, g))
    fwd = jax.jit(lambda q, k, v: layers.attention(q, k, v, bias))
    fwd_bwd = jax.jit(jax.grad(lambda q, k, v: jnp.sum(layers.attention(q, k, v, bias) * jg), argnums=(0, 1, 2)))

    # torch layout [B, H, T, hd]
    tq, tk, tv, tg = (torch.from_numpy(x).transpose(1, 2).contiguous() for x in (q, k, v, g))
    mask = torch.from_numpy(causal)[None, None].expand(b, 1, t, t)
    rep = hq // hkv

    def sdpa_causal(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=rep > 1)

    def sdpa_as_transformers(q, k, v):
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def torch_fwd(attn):
        with torch.no_grad():
            return attn(tq, tk, tv)

    def torch_fwd_bwd(attn):
        x = [a.detach().requires_grad_(True) for a in (tq, tk, tv)]
        attn(*x).backward(tg)
        return x[0].grad

    ref = torch_fwd(sdpa_causal).transpose(1, 2).numpy()
    err = float(np.abs(np.asarray(fwd(jq, jk, jv)) - ref).max() / np.abs(ref).max())
    fns = {("ours", "fwd"): lambda: jax.block_until_ready(fwd(jq, jk, jv)),
           ("ours", "fwd+bwd"): lambda: jax.block_until_ready(fwd_bwd(jq, jk, jv)),
           ("sdpa causal", "fwd"): lambda: torch_fwd(sdpa_causal),
           ("sdpa causal", "fwd+bwd"): lambda: torch_fwd_bwd(sdpa_causal),
           ("sdpa as transformers", "fwd"): lambda: torch_fwd(sdpa_as_transformers),
           ("sdpa as transformers", "fwd+bwd"): lambda: torch_fwd_bwd(sdpa_as_transformers)}
    for fn in fns.values():
        fn()
    times = alternate(list(fns.values()), repeats)
    return {key: min(ts) for key, ts in zip(fns, times)}, err


# ---------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=512, help="LLM width (default 512)")
    ap.add_argument("--layers", type=int, default=6, help="LLM layers (default 6)")
    ap.add_argument("--heads", type=int, default=8, help="query heads (head_dim = width / heads)")
    ap.add_argument("--kv-heads", type=int, default=2, help="key/value heads")
    ap.add_argument("--vocab", type=int, default=3072, help="LM vocabulary rows (tiny recipe's size)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side (also repeats of the splits)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side after the two parity steps")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--b1", type=float, default=0.9)
    ap.add_argument("--b2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-kernels", action="store_true", help="skip the matmul / attention kernel timings")
    args = ap.parse_args(argv)
    if args.width % args.heads or args.heads % args.kv_heads:
        ap.error("--width must be a multiple of --heads, and --heads of --kv-heads")

    import jax
    import torch
    from molmoact2_jax.convert import molmo2
    from molmoact2_jax.training import trainer

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"WARNING: load average {load:.2f} before the run: another process is using the CPUs, and torch's "
              f"OpenMP threads slow down many-fold when they share cores, so these timings are not representative")
    if (os.cpu_count() or 1) != args.threads:
        print(f"note: XLA uses all {os.cpu_count()} cores, torch {args.threads} threads (--threads)")
    d = tempfile.mkdtemp(prefix="train_step_vs_torch_")
    hf_dir, ckpt = os.path.join(d, "hf"), os.path.join(d, "ckpt")
    random_molmo2(hf_dir, args)
    molmo2.import_molmo2(hf_dir, ckpt)

    ids = make_batches(max(2, min(args.steps, 4)), args.batch, args.seq, args.vocab, args.seed + 1)
    host = [ours_batch(x) for x in ids]
    t_in = [torch_inputs(x) for x in ids]
    model, opt, trainable = torch_model(hf_dir, args)
    initial = {name: x.detach().clone() for name, x in model.state_dict().items()}
    setup, params = ours_setup(ckpt, args, host[0])
    shutil.rmtree(d, ignore_errors=True)  # both sides hold their weights in memory now
    dev = [trainer.global_batch(h, setup.batch_shardings, args.batch) for h in host]
    n_ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    n_torch = sum(p.numel() for p in trainable)
    print(f"LLM {args.width} wide x {args.layers} layers ({args.heads} query / {args.kv_heads} K/V heads, MLP "
          f"{3 * args.width}, vocab {args.vocab}): trainable params ours {n_ours / 1e6:.2f}M, torch "
          f"{n_torch / 1e6:.2f}M; batch {args.batch} x {args.seq} tokens; AdamW lr {args.lr} betas ({args.b1}, "
          f"{args.b2}) eps {args.eps}, no weight decay, no clipping")
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform} ({len(jax.devices())} device, {os.cpu_count()} "
          f"cores); torch {torch.__version__} with {torch.get_num_threads()} threads; transformers SDPA attention")
    if n_ours != n_torch:
        raise SystemExit(f"trainable parameter counts differ: ours {n_ours}, torch {n_torch}")

    state = setup.state_from_params(params)
    t0 = time.perf_counter()
    with setup.context():
        step = setup.train_step.lower(state, dev[0]).compile()
    compile_s = time.perf_counter() - t0
    k = [0, 0]

    def ours_step():
        nonlocal state
        state, m = step(state, dev[k[0] % len(dev)])
        k[0] += 1
        jax.block_until_ready((state, m))
        return float(m["loss"])

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = model(**t_in[k[1] % len(t_in)]).loss
        loss.backward()
        opt.step()
        k[1] += 1
        return float(loss.detach())

    # Parity: step 1's loss is the same weights on the same batch; step 2's follows one AdamW update on each side.
    for i in (1, 2):
        lo, lt = ours_step(), torch_step()
        rel = abs(lo - lt) / abs(lt)
        print(f"step {i} loss: ours {lo:.7f}, torch {lt:.7f}, relative difference {rel:.2e}"
              + (" (after one AdamW update on each side)" if i == 2 else ""))
        if i == 1 and not rel <= LOSS_TOL:
            raise SystemExit(f"loss parity failed on the first batch: relative difference {rel:.2e} > {LOSS_TOL:g}; "
                             f"the two sides do not compute the same step, so no timing is reported")
        if i == 2 and not rel <= 1e-3:
            print(f"  WARNING: after one update the losses differ by {rel:.2e} (> 1e-3): the optimizers disagree")
    for _ in range(args.warmup):
        ours_step()
        torch_step()
    ours_ts, torch_ts = alternate([ours_step, torch_step], args.steps)
    print(f"train step ({args.steps} timed steps per side, alternating, after {2 + args.warmup} untimed; ours "
          f"compiled in {compile_s:.1f} s): {speed(ours_ts, torch_ts)}")

    # ---- where our step's time goes: loss forward+backward with / without attention, the rest is the update
    register_no_attention()
    model.load_state_dict(initial)  # both sides at the imported weights again
    jparams = jax.device_put(params)
    rng = jax.random.PRNGKey(0)

    def grad_fn():
        return jax.jit(jax.value_and_grad(lambda p, b: setup.loss_fn(p, b, rng)[0]))

    with setup.context():
        full = grad_fn().lower(jparams, dev[0]).compile()
        with no_attention_ours():
            no_attn = grad_fn().lower(jparams, dev[0]).compile()

    text_cfg = model.config.get_text_config()  # the config every LLM attention layer and its mask read

    def torch_fwd_bwd(impl):
        def run():
            text_cfg._attn_implementation_internal = impl
            try:
                model.zero_grad(set_to_none=True)
                loss = model(**t_in[0]).loss
                loss.backward()
            finally:
                text_cfg._attn_implementation_internal = "sdpa"
            return float(loss.detach())
        return run

    fns = [lambda: float(jax.block_until_ready(full(jparams, dev[0]))[0]), torch_fwd_bwd("sdpa"),
           lambda: float(jax.block_until_ready(no_attn(jparams, dev[0]))[0]), torch_fwd_bwd(NO_ATTN)]
    lo, lt, lo_na, lt_na = (fn() for fn in fns)
    print(f"loss of batch 1 at the initial weights, with / without attention: ours {lo:.7f} / {lo_na:.7f}, torch "
          f"{lt:.7f} / {lt_na:.7f} (relative differences {abs(lo - lt) / abs(lt):.1e} / "
          f"{abs(lo_na - lt_na) / abs(lt_na):.1e})")
    if not abs(lo - lt) / abs(lt) <= LOSS_TOL:
        raise SystemExit("the forward+backward functions of the split do not compute the same loss")
    if lo_na == lo or lt_na == lt:
        raise SystemExit("removing attention did not change a loss: the no-attention variant is not in effect")
    o_fb, t_fb, o_na, t_na = (med_min(ts)[0] for ts in alternate(fns, args.steps))
    o_step, t_step = med_min(ours_ts)[0], med_min(torch_ts)[0]
    print(f"split (medians of {args.steps}; each side's own pieces):")
    print(f"  loss forward+backward:                  ours {o_fb:7.1f} ms, torch {t_fb:7.1f} ms -> JAX "
          f"{t_fb / o_fb:.2f}x torch's speed")
    print(f"  ... with attention removed (q passed):  ours {o_na:7.1f} ms, torch {t_na:7.1f} ms -> JAX "
          f"{t_na / o_na:.2f}x")
    print(f"  attention (difference), {args.layers} layers:    ours {o_fb - o_na:7.1f} ms "
          f"({(o_fb - o_na) / o_step:.0%} of our step), torch {t_fb - t_na:7.1f} ms "
          f"({(t_fb - t_na) / t_step:.0%} of its step)")
    print(f"  optimizer update + rest (step - f+b):   ours {o_step - o_fb:7.1f} ms "
          f"({(o_step - o_fb) / o_step:.0%}), torch {t_step - t_fb:7.1f} ms ({(t_step - t_fb) / t_step:.0%})")
    if args.no_kernels:
        return

    # ---- the kernels alone, at the step's shapes (min of the repeats)
    reps = max(args.steps, 5)
    print(f"fp32 matmuls alone (min of {reps}):")
    for label, m, kk, n, os_, ts_ in matmul_rows(args, reps):
        gf = 2 * m * kk * n / 1e9
        print(f"  {label} ({m}x{kk}x{n}): XLA {os_ * 1e3:6.2f} ms = {gf / os_:6.1f} GFLOP/s, torch "
              f"{ts_ * 1e3:6.2f} ms = {gf / ts_:6.1f} GFLOP/s -> XLA {ts_ / os_:.2f}x torch's speed")
    att, err = attention_rows(args, reps)
    hd = args.width // args.heads
    print(f"causal GQA attention alone, one layer [{args.batch}, {args.seq}, {args.heads}/{args.kv_heads} heads, "
          f"{hd}] (min of {reps}; outputs agree to {err:.1e}):")
    for p in ("fwd", "fwd+bwd"):
        o = att[("ours", p)]
        c, tr = att[("sdpa causal", p)], att[("sdpa as transformers", p)]
        print(f"  {p:7s}: XLA {o * 1e3:6.2f} ms; SDPA is_causal {c * 1e3:6.2f} ms -> XLA {c / o:.2f}x its speed; "
              f"SDPA as transformers calls it {tr * 1e3:6.2f} ms -> XLA {tr / o:.2f}x its speed; x {args.layers} "
              f"layers: XLA {o * args.layers * 1e3:.1f} ms, SDPA as called {tr * args.layers * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
