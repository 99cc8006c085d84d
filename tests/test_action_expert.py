"""Action expert: torch-reference parity through the HF key converter, context reuse,
encoder-mask rules, depth gate, flow-matching loss, Euler sampler, full-size parameter count, partition specs."""
import math

import chex
import numpy as np
import pytest
import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
import torch

from molmoact2_jax.models.config import get_model_config
from molmoact2_jax.convert.action_expert_keys import expert_params_to_hf, hf_to_expert_params
from molmoact2_jax.convert.torch_ref.action_expert import ActionExpertRef
from molmoact2_jax.models.action_expert import ActionExpert, make_action_expert
from molmoact2_jax.models.encoder_mask import action_span_mask, depth_positions, encoder_attention_mask
from molmoact2_jax.models import flow

pytestmark = pytest.mark.torch

B, H, T = 2, 6, 9


def small_config(depth_gate=False):
    """Tiny config with pairwise-distinct widths so any transpose/reshape mistake shows up."""
    cfg = get_model_config("tiny")
    ae = cfg.action_expert
    ae.hidden_size, ae.num_heads, ae.num_layers = 48, 4, 3
    ae.context_dim, ae.timestep_embed_dim, ae.max_action_horizon = 40, 24, H
    ae.depth_gate = depth_gate
    return cfg


def random_inputs(cfg, seed=0):
    ae = cfg.action_expert
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, H, ae.max_action_dim)).astype(np.float32)
    t = np.array([0.13, 0.77], np.float32)
    k = rng.standard_normal((ae.num_layers, B, T, ae.context_dim)).astype(np.float32)
    v = rng.standard_normal((ae.num_layers, B, T, ae.context_dim)).astype(np.float32)
    enc = np.ones((B, T), bool)
    enc[0, :3] = False
    enc[1, 5:] = False
    valid = np.ones((B, H), bool)
    valid[1, 4:] = False
    return x, t, k, v, enc, valid


def randomised_reference(cfg, seed=0):
    torch.manual_seed(seed)
    ref = ActionExpertRef.from_config(cfg.action_expert)
    with torch.no_grad():  # the release init zeroes modulation / final layer: randomise so parity is not trivial
        for name, p in ref.named_parameters():
            if "modulation" in name or "final_layer.linear" in name or name.endswith(".bias"):
                p.normal_(0.0, 0.2)
    return ref


@pytest.fixture(scope="module")
def ref_setup():
    cfg = small_config()
    ref = randomised_reference(cfg)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    params = hf_to_expert_params({"model.action_expert." + k: v for k, v in sd.items()}, cfg)
    return cfg, ref, sd, params


# ----------------------------------------------------------------------------------------------- (a) parity
def test_torch_reference_keys_match_spec(ref_setup):
    cfg, ref, sd, _ = ref_setup
    ae = cfg.action_expert
    d, inner = ae.hidden_size, 4 * ae.hidden_size  # mlp_ratio 4, 192 is a multiple of 16
    expected = {"time_embed.1.weight": (d, ae.timestep_embed_dim), "time_embed.1.bias": (d,),
                "time_embed.3.weight": (d, d), "time_embed.3.bias": (d,),
                "action_embed.weight": (d, 32), "action_embed.bias": (d,),
                "context_k_proj.weight": (d, ae.context_dim), "context_v_proj.weight": (d, ae.context_dim),
                "final_layer.modulation.linear.weight": (2 * d, d), "final_layer.modulation.linear.bias": (2 * d,),
                "final_layer.linear.weight": (32, d), "final_layer.linear.bias": (32,)}
    for e in range(ae.num_layers):
        for name, shape in {"self_attn.qkv": (3 * d, d), "self_attn.out_proj": (d, d), "cross_attn.q_proj": (d, d),
                            "cross_attn.out_proj": (d, d), "mlp.up_proj": (inner, d), "mlp.gate_proj": (inner, d),
                            "mlp.down_proj": (d, inner), "modulation.linear": (9 * d, d)}.items():
            expected[f"blocks.{e}.{name}.weight"] = shape
            expected[f"blocks.{e}.{name}.bias"] = (shape[0],)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def test_parity_with_torch_reference(ref_setup):
    cfg, ref, _, params = ref_setup
    x, t, k, v, enc, valid = random_inputs(cfg)
    expert = make_action_expert(cfg)
    for av in (valid, None):
        with torch.no_grad():
            want = ref(torch.tensor(x), torch.tensor(t), torch.tensor(k), torch.tensor(v), torch.tensor(enc),
                       None if av is None else torch.tensor(av)).numpy()
        got = np.asarray(jax.jit(expert.apply)({"params": params}, x, t, k, v, enc, av))
        abs_err = np.abs(got - want).max()
        rel_err = abs_err / np.abs(want).max()
        print(f"parity action_valid={'mask' if av is not None else None}: max|ref|={np.abs(want).max():.3f} "
              f"max abs err={abs_err:.2e} rel={rel_err:.2e}")
        assert np.abs(want).max() > 0.5  # non-trivial output
        assert abs_err <= 1e-5 and rel_err <= 1e-5
        if av is not None:  # padded horizon steps come out as final_layer(0): identical rows
            assert np.allclose(want[1, 4], want[1, 5]) and not np.allclose(want[1, 3], want[1, 4])


def test_converter_round_trip_bit_exact(ref_setup):
    cfg, _, sd, params = ref_setup
    hf = expert_params_to_hf(params, cfg)
    assert set(hf) == {"model.action_expert." + k for k in sd}
    for k, val in sd.items():
        assert hf["model.action_expert." + k].dtype == val.dtype
        assert np.array_equal(hf["model.action_expert." + k], val)
    # Flax-initialised (boxed) params -> HF -> Flax, bit for bit
    cfgd = small_config(depth_gate=True)
    expert = make_action_expert(cfgd)
    x, t, k, v, enc, _ = random_inputs(cfgd)
    variables = expert.init(jax.random.PRNGKey(1), x, t, k, v, enc)
    hf2 = expert_params_to_hf(variables, cfgd)
    assert "model.action_expert_depth_gate.2.weight" in hf2 and hf2["model.action_expert_depth_gate.0.bias"][0] == -4
    back = hf_to_expert_params(hf2, cfgd)
    orig = nn.meta.unbox(variables)["params"]
    chex.assert_trees_all_equal(orig, back)
    # native training-only keys are skipped, anything else unknown is refused
    extra = dict(hf)
    extra["model.action_expert.blocks.0.cross_attn.kv_proj.weight"] = np.zeros((96, 48), np.float32)
    extra["model.transformer.ln_f.weight"] = np.zeros((8,), np.float32)
    hf_to_expert_params(extra, cfg)
    extra["model.action_expert.bogus.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(ValueError, match="unexpected"):
        hf_to_expert_params(extra, cfg)
    missing = dict(hf)
    del missing["model.action_expert.blocks.1.mlp.up_proj.bias"]
    with pytest.raises(KeyError, match="blocks.1.mlp.up_proj.bias"):
        hf_to_expert_params(missing, cfg)


# ----------------------------------------------------------------------------------------------- (b) context reuse
def test_context_reuse_equals_direct(ref_setup):
    cfg, _, _, params = ref_setup
    x, t, k, v, enc, valid = random_inputs(cfg)
    expert = make_action_expert(cfg)
    variables = {"params": params}
    direct = expert.apply(variables, x, t, k, v, enc, valid)
    ctx = expert.apply(variables, k, v, enc, method=ActionExpert.project_context)
    assert ctx["k"].shape == (3, B, T, 4, 12) and ctx["bias"].shape == (B, 1, 1, T)
    vel = jax.jit(lambda c, xx, tt: expert.apply(variables, c, xx, tt, valid, method=ActionExpert.velocity))
    eager = expert.apply(variables, ctx, x, t, valid, method=ActionExpert.velocity)
    np.testing.assert_array_equal(np.asarray(eager), np.asarray(direct))   # same ops: bit-identical
    reused = vel(ctx, x, t)                                                # jitted: XLA may fuse differently
    print(f"context reuse (jit) vs direct: max abs diff {np.abs(np.asarray(reused) - np.asarray(direct)).max():.1e}")
    np.testing.assert_allclose(np.asarray(reused), np.asarray(direct), rtol=0, atol=5e-6)
    # a second step with another t on the same projected context
    np.testing.assert_allclose(np.asarray(vel(ctx, x, t[::-1])),
                               np.asarray(expert.apply(variables, x, t[::-1], k, v, enc, valid)), atol=5e-6)


# ----------------------------------------------------------------------------------------------- (c) encoder mask
def test_encoder_mask_rules():
    tk = get_model_config("tiny").tokens
    eos, s, e = tk.eos_token_id, tk.action_start, tk.action_end
    ids = np.array([
        [eos, 10, 11, eos, s, 600, 601, e, 12, eos],   # BOS + im_end hidden; matched span hidden inclusive
        [eos, 10, s, 600, 601, 12, 13, 14, 15, 16],    # unmatched start: hidden to the end of the row
        [eos, 10, e, 11, s, 600, e, 12, 13, -1],       # stray end stays; -1 = padding
    ])
    att = ids != -1
    got = np.asarray(jax.jit(lambda i, m: encoder_attention_mask(i, m, tk, "both"))(ids, att))
    want = np.array([
        [0, 1, 1, 0, 0, 0, 0, 0, 1, 0],
        [0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0, 1, 1, 0],
    ], bool)
    np.testing.assert_array_equal(got, want)
    # attention_mask=None falls back to ids != -1; other modes only use the base mask
    np.testing.assert_array_equal(np.asarray(encoder_attention_mask(ids, None, tk, "both")), want)
    np.testing.assert_array_equal(np.asarray(encoder_attention_mask(ids, att, tk, "continuous")), att)
    # nested starts inside an open span and two spans in a row
    row = np.array([[10, s, s, 600, e, 11, s, e, 12]])
    np.testing.assert_array_equal(np.asarray(action_span_mask(row, s, e))[0],
                                  np.array([0, 1, 1, 1, 1, 0, 1, 1, 0], bool))
    # packing: only the chunk's own example stays visible
    seg = np.array([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]] * 3)
    got = np.asarray(encoder_attention_mask(ids, att, tk, "both", segment_ids=seg, example_segment=np.array([1, 0, 1])))
    np.testing.assert_array_equal(got, want & (seg == np.array([1, 0, 1])[:, None]))
    with pytest.raises(ValueError):
        encoder_attention_mask(ids, att, tk, "bogus")


def test_depth_positions_and_gate():
    cfg = small_config(depth_gate=True)
    tk = cfg.tokens
    ids = np.array([[tk.eos_token_id, 10, tk.depth_output, tk.depth_start, tk.depth_token_start,
                     tk.depth_token_start + 127, tk.depth_end, 11, 12],
                    [tk.eos_token_id, 10, 11, tk.depth_start, tk.depth_token_start + 3, tk.depth_end, 12, 13, -1]])
    enc = encoder_attention_mask(ids, ids != -1, tk, "both")
    dpos = np.asarray(depth_positions(ids, enc, tk))
    np.testing.assert_array_equal(dpos, np.array([[0, 0, 1, 1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0, 0]], bool))

    # gate = sigmoid(w . mean(V_l over valid non-depth) + b) scales raw K/V at depth positions, per layer
    expert = make_action_expert(cfg)
    x, t, k, v, _, _ = random_inputs(cfg)
    variables = nn.meta.unbox(expert.init(jax.random.PRNGKey(0), x, t, k, v, enc, depth_positions=dpos))
    p = dict(variables["params"])
    assert p["depth_gate_kernel"].shape == (3, 40, 1) and np.all(np.asarray(p["depth_gate_bias"]) == -4.0)
    p["depth_gate_kernel"] = jax.random.normal(jax.random.PRNGKey(3), (3, 40, 1)) * 0.3
    gated = expert.apply({"params": p}, k, v, enc, dpos, method=ActionExpert.project_context)
    enc_np = np.asarray(enc)
    sel = (enc_np & ~dpos).astype(np.float32)
    pooled = np.einsum("lbtc,bt->lbc", v, sel) / sel.sum(-1)[None, :, None]
    g = 1 / (1 + np.exp(-(np.einsum("lbc,lco->lbo", pooled, np.asarray(p["depth_gate_kernel"])) - 4.0)))
    scale = np.where(dpos[None, :, :, None], g[:, :, None, :], 1.0)
    plain_cfg = small_config(depth_gate=False)
    plain = make_action_expert(plain_cfg)
    q = {kk: vv for kk, vv in p.items() if not kk.startswith("depth_gate")}
    manual = plain.apply({"params": q}, k * scale, v * scale, enc, method=ActionExpert.project_context)
    for key in ("k", "v"):
        np.testing.assert_allclose(np.asarray(gated[key]), np.asarray(manual[key]), atol=1e-5)
    ungated = plain.apply({"params": q}, k, v, enc, method=ActionExpert.project_context)
    assert not np.allclose(np.asarray(gated["v"]), np.asarray(ungated["v"]), atol=1e-3)


# ----------------------------------------------------------------------------------------------- (d) flow loss
def _flow_batch(cfg, seed=0):
    ae = cfg.action_expert
    rng = np.random.default_rng(seed)
    actions = rng.standard_normal((B, H, 32)).astype(np.float32)
    dim_valid = np.zeros((B, 32), bool)
    dim_valid[0, :7] = True
    dim_valid[1, :14] = True
    hor_valid = np.ones((B, H), bool)
    hor_valid[0, 4:] = False
    k = rng.standard_normal((ae.num_layers, B, T, ae.context_dim)).astype(np.float32)
    v = rng.standard_normal((ae.num_layers, B, T, ae.context_dim)).astype(np.float32)
    enc = np.ones((B, T), bool)
    enc[1, 6:] = False
    return actions, dim_valid, hor_valid, k, v, enc


def test_flow_loss_matches_numpy_and_ignores_padding(ref_setup):
    cfg, _, _, params = ref_setup
    expert = make_action_expert(cfg)
    actions, dim_valid, hor_valid, k, v, enc = _flow_batch(cfg)
    rng = jax.random.PRNGKey(7)
    n_samples = 3
    loss_fn = jax.jit(lambda a, r: flow.flow_matching_loss(expert, params, a, dim_valid, hor_valid, k, v, enc, r,
                                                            num_samples=n_samples))
    loss, metrics = loss_fn(actions, rng)
    assert set(metrics) >= {"flow_loss", "flow_t_mean"} and np.isfinite(float(loss))

    # the flow-matching loss hand-written in numpy from the same draws
    t, eps = (np.asarray(a) for a in flow.draw_flow_samples(rng, n_samples, actions.shape, cfg.flow))
    assert t.shape == (n_samples, B) and eps.shape == (n_samples, B, H, 32)
    assert np.all((t >= 0.001) & (t <= 1.0))
    dm = dim_valid[:, None, :].astype(np.float32)
    total = 0.0
    for s in range(n_samples):
        e = eps[s] * dm
        ts = t[s][:, None, None]
        x_t = ((1 - ts) * e + ts * actions) * dm
        u = (actions - e) * dm
        pred = np.asarray(expert.apply({"params": params}, x_t, t[s], k, v, enc, hor_valid))
        se = (pred - u) ** 2 * hor_valid[:, :, None]
        per_step = (se * dm).sum(-1) / dim_valid.sum(-1)[:, None]   # mean over valid dims, [B, H]
        total += per_step.sum()
    want = total / (n_samples * B * H)                             # padded steps stay in the denominator
    print(f"flow loss: jax={float(loss):.7f} numpy={want:.7f}")
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)

    # changing actions on padded dims / padded steps leaves the loss unchanged
    noisy = actions.copy()
    noisy[~dim_valid[:, None, :].repeat(H, 1)] = 123.0
    noisy[0, 4:] = -55.0
    loss2, _ = loss_fn(noisy, rng)
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
    changed = actions.copy()
    changed[1, 0, 3] += 1.0                                          # a valid entry does change it
    assert abs(float(loss_fn(changed, rng)[0]) - float(loss)) > 1e-4


def test_flow_loss_falls_under_adam():
    cfg = get_model_config("tiny")
    expert = make_action_expert(cfg)
    actions, dim_valid, hor_valid, k, v, enc = _flow_batch(cfg, seed=1)
    actions = actions[:, : cfg.action_expert.max_action_horizon]
    params = nn.meta.unbox(expert.init(jax.random.PRNGKey(0), actions, jnp.zeros((B,)), k, v, enc))["params"]
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, rng):
        (loss, _), grads = jax.value_and_grad(
            lambda p: flow.flow_matching_loss(expert, p, actions, dim_valid, hor_valid, k, v, enc, rng),
            has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    eval_rng = jax.random.PRNGKey(123)
    evaluate = jax.jit(lambda p: flow.flow_matching_loss(expert, p, actions, dim_valid, hor_valid, k, v, enc,
                                                         eval_rng, num_samples=16)[0])
    start = float(evaluate(params))
    for i in range(300):
        params, state, _ = step(params, state, jax.random.fold_in(jax.random.PRNGKey(1), i))
    end = float(evaluate(params))
    print(f"flow loss (16 fixed samples) before={start:.4f} after 300 Adam steps={end:.4f} ratio={end / start:.3f}")
    assert end < 0.5 * start


# ----------------------------------------------------------------------------------------------- (e) sampler
def test_sample_actions(ref_setup):
    cfg, _, _, params = ref_setup
    expert = make_action_expert(cfg)
    _, _, k, v, enc, _ = random_inputs(cfg)
    noise = np.random.default_rng(5).standard_normal((B, H, 32)).astype(np.float32)
    dim_valid = np.zeros((B, 32), bool)
    dim_valid[:, :7] = True
    sample = jax.jit(lambda p, n: flow.sample_actions(expert, p, k, v, enc, action_dim_valid=dim_valid, noise=n,
                                                      num_steps=10))
    a1, a2 = np.asarray(sample(params, noise)), np.asarray(sample(params, noise))
    np.testing.assert_array_equal(a1, a2)
    assert np.all(a1[:, :, 7:] == 0) and np.abs(a1[:, :, :7] - noise[:, :, :7]).max() > 1e-2

    # Python-loop Euler reference
    x = noise * dim_valid[:, None, :]
    apply = jax.jit(expert.apply)
    for i in range(10):
        vel = np.asarray(apply({"params": params}, x, np.full((B,), i / 10, np.float32), k, v, enc))
        x = (x + 0.1 * vel * dim_valid[:, None, :]) * dim_valid[:, None, :]
    np.testing.assert_allclose(a1, x, atol=1e-5)

    # a freshly initialised expert (zero gates, zero final linear) returns the noise
    fresh = expert.init(jax.random.PRNGKey(2), noise, jnp.zeros((B,)), k, v, enc)
    out = np.asarray(sample(fresh, noise))
    np.testing.assert_array_equal(out, noise * dim_valid[:, None, :])
    # rng path: shape from the config's horizon
    drawn = flow.sample_actions(expert, fresh, k, v, enc, rng=jax.random.PRNGKey(0), num_steps=2)
    assert drawn.shape == (B, cfg.action_expert.max_action_horizon, 32)


# ----------------------------------------------------------------------------------------------- (f, g) full size
def _expected_full_param_count(ae):
    """From the release's HF tensor shapes."""
    d, tdim, c, a, n = ae.hidden_size, ae.timestep_embed_dim, ae.context_dim, ae.max_action_dim, ae.num_layers
    inner = math.ceil(int(d * ae.mlp_ratio) / ae.ffn_multiple_of) * ae.ffn_multiple_of
    lin = lambda o, i, bias=True: o * i + (o if bias else 0)
    top = (lin(d, tdim) + lin(d, d) + lin(d, a) + lin(d, c, False) + lin(d, c, False)
           + lin(2 * d, d) + lin(a, d))
    block = (lin(3 * d, d) + 3 * lin(d, d) + 2 * lin(inner, d) + lin(d, inner) + lin(9 * d, d))
    return top + n * block


def test_full_size_param_count_and_partition_specs():
    cfg = get_model_config("full")
    ae = cfg.action_expert
    assert (ae.hidden_size, ae.num_heads, ae.num_layers, ae.context_dim) == (768, 8, 36, 1024)
    expert = make_action_expert(cfg)
    f32 = jnp.float32
    shapes = jax.eval_shape(
        expert.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 30, 32), f32), jax.ShapeDtypeStruct((1,), f32),
        jax.ShapeDtypeStruct((36, 1, 16, 1024), jnp.bfloat16), jax.ShapeDtypeStruct((36, 1, 16, 1024), jnp.bfloat16),
        jax.ShapeDtypeStruct((1, 16), jnp.bool_))
    leaves = jax.tree_util.tree_leaves(nn.meta.unbox(shapes))
    count = sum(math.prod(l.shape) for l in leaves)
    expected = _expected_full_param_count(ae)
    print(f"full action expert params: {count:,} (expected from the HF shapes: {expected:,})")
    assert count == expected
    assert abs(count / 1e6 - 577.6) < 0.1
    assert all(l.dtype == jnp.float32 for l in leaves)

    # (g) every leaf carries logical axis names from the expert vocabulary, one per dim
    allowed = {"expert_embed", "expert_mlp", "heads", "head_dim", "expert_ctx", "layers", "norm", "action_dim",
               "time_embed", None}
    specs = nn.get_partition_spec(shapes)
    spec_leaves = jax.tree_util.tree_leaves_with_path(
        specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    unboxed = dict(jax.tree_util.tree_leaves_with_path(nn.meta.unbox(shapes)))
    assert len(spec_leaves) == len(unboxed)
    for path, spec in spec_leaves:
        assert isinstance(spec, jax.sharding.PartitionSpec), path
        assert len(spec) == len(unboxed[path].shape), (path, spec)
        assert set(spec) <= allowed and any(s is not None for s in spec), (path, spec)
        if "blocks" in jax.tree_util.keystr(path):
            assert spec[0] == "layers", (path, spec)
