"""Flow matching for the action expert (docs/model_notes.md, "Flow matching"): the training loss and the Euler sampler.

Convention: t = 0 is noise, t = 1 is data; x_t = (1 - t) * eps + t * a; the expert predicts u = a - eps.

Every function here is pure (params in, arrays out). `expert` is an `ActionExpert` module (it carries the model
config, whose `.flow` holds the defaults); `params` is the expert's parameter tree (the contents of
`variables["params"]`, or the whole `{"params": ...}` dict). The composed model passes the backbone's per-layer
K/V ([L, B, T, context_dim]) and the encoder mask (`encoder_mask.encoder_attention_mask`).
"""
from __future__ import annotations


import numpy as np
import jax
import jax.numpy as jnp

from molmoact2_jax.models import rtc
from molmoact2_jax.models.action_expert import ActionExpert


def _variables(params) -> dict:
    if isinstance(params, dict) and set(params.keys()) == {"params"}:
        return params
    try:  # FrozenDict / other mappings
        if set(params.keys()) == {"params"}:
            return dict(params)
    except AttributeError:
        pass
    return {"params": params}


def sample_flow_time(rng, shape, flow_cfg):
    """t = time_offset + time_scale * Beta(beta_alpha, beta_beta), fp32 of `shape`."""
    beta = jax.random.beta(rng, flow_cfg.beta_alpha, flow_cfg.beta_beta, shape, dtype=jnp.float32)
    return (flow_cfg.time_offset + flow_cfg.time_scale * beta).astype(jnp.float32)


def draw_flow_samples(rng, num_samples: int, actions_shape, flow_cfg):
    """The random draws of `flow_matching_loss`: (t fp32 [K, B], eps fp32 [K, *actions_shape]).

    Exposed so the loss can be reproduced outside (tests, debugging) from the same rng."""
    k_t, k_eps = jax.random.split(rng)
    t = sample_flow_time(k_t, (num_samples, actions_shape[0]), flow_cfg)
    eps = jax.random.normal(k_eps, (num_samples, *actions_shape), jnp.float32)
    return t, eps


def project_context(expert: ActionExpert, params, context_k, context_v, encoder_mask, depth_positions=None):
    """The expert's projected cross-attention context (dict of arrays), computed once per observation."""
    return expert.apply(_variables(params), context_k, context_v, encoder_mask, depth_positions,
                        method=ActionExpert.project_context)


def flow_matching_loss(expert: ActionExpert, params, actions, action_dim_valid, horizon_valid, context_k, context_v,
                       encoder_mask, rng, num_samples: int | None = None, *, depth_positions=None,
                       example_weight=None, flow_cfg=None):
    """The flow-matching loss. Returns (scalar fp32 loss, metrics dict of fp32 scalars).

    actions: [B, H, D] normalized, padded chunk (D = max_action_dim); action_dim_valid: bool [B, D];
    horizon_valid: bool [B, H]; context_k/context_v: [L, B, T, context_dim]; encoder_mask: bool [B, T];
    num_samples: K (t, eps) pairs per chunk, all reading one projected context (default flow_cfg.num_samples);
    example_weight: optional [B] (packed data: valid-chunk-weighted mean; default: plain mean over B).

    Per element (pred - u)^2, times the horizon mask (padded steps stay in the denominator), mean over the valid
    action dims, then mean over (B, K, H). eps, x_t and u are zeroed on padded dims (mask_action_dim_padding).
    """
    flow_cfg = expert.config.flow if flow_cfg is None else flow_cfg
    k = flow_cfg.num_samples if num_samples is None else int(num_samples)
    if flow_cfg.detach_vlm:
        context_k, context_v = jax.lax.stop_gradient(context_k), jax.lax.stop_gradient(context_v)
    variables = _variables(params)
    ctx = expert.apply(variables, context_k, context_v, encoder_mask, depth_positions,
                       method=ActionExpert.project_context)

    a = actions.astype(jnp.float32)
    dim_f = action_dim_valid.astype(jnp.float32)[:, None, :]            # [B, 1, D]
    hor_f = horizon_valid.astype(jnp.float32)                          # [B, H]
    t, eps = draw_flow_samples(rng, k, a.shape, flow_cfg)              # [K, B], [K, B, H, D]
    tt = t[:, :, None, None]
    if flow_cfg.mask_action_dim_padding:
        eps = eps * dim_f
        x_t = ((1.0 - tt) * eps + tt * a) * dim_f
        target = (a - eps) * dim_f
    else:
        x_t = (1.0 - tt) * eps + tt * a
        target = a - eps

    def predict(x, ts):
        return expert.apply(variables, ctx, x, ts, horizon_valid, method=ActionExpert.velocity)

    pred = jax.vmap(predict)(x_t, t)                                   # [K, B, H, D], one context for all K
    se = jnp.square(pred - target) * hor_f[None, :, :, None]
    n_dims = jnp.maximum(jnp.sum(dim_f, axis=-1), 1.0)                 # [B, 1]
    per_step = jnp.sum(se * dim_f[None], axis=-1) / n_dims[None]       # [K, B, H]
    per_example = jnp.mean(per_step, axis=(0, 2))                      # [B]
    if example_weight is None:
        loss = jnp.mean(per_example)
    else:
        w = example_weight.astype(jnp.float32)
        loss = jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1e-6)
    metrics = {
        "flow_loss": loss,
        "flow_t_mean": jnp.mean(t),
        "flow_valid_step_frac": jnp.mean(hor_f),
        "flow_pred_rms": jnp.sqrt(jnp.sum(jnp.square(pred) * dim_f[None] * hor_f[None, :, :, None])
                                  / jnp.maximum(k * jnp.sum(dim_f[:, 0, :, None] * hor_f[:, None, :]), 1.0)),
    }
    return loss, metrics


def sample_actions_from_context(expert: ActionExpert, params, ctx, noise, action_dim_valid=None,
                                num_steps: int | None = None, horizon_valid=None, guidance: rtc.Guidance | None = None):
    """Euler integration from a projected context: x0 = noise (pad dims zeroed), then for k in
    0..N-1 with t = k/N: v = expert(x, t); v[pad] = 0; x = x + v / N; x[pad] = 0. Returns fp32 [B, H, D].
    guidance: real-time chunking towards a previous chunk (models/rtc.py): v is replaced by the guided velocity."""
    flow_cfg = expert.config.flow
    n = int(flow_cfg.num_steps if num_steps is None else num_steps)
    if n < 1:
        raise ValueError(f"num_steps={n}: expected >= 1")
    variables = _variables(params)
    x = jnp.asarray(noise, jnp.float32)
    b = x.shape[0]
    if action_dim_valid is None or not flow_cfg.mask_action_dim_padding:
        dim_f = jnp.ones((b, 1, x.shape[-1]), jnp.float32)
    else:
        dim_f = jnp.broadcast_to(jnp.asarray(action_dim_valid), (b, x.shape[-1])).astype(jnp.float32)[:, None, :]
    times = jnp.asarray(np.array([i / n for i in range(n)], np.float32))  # t = k/N, rounded once to fp32
    dt = 1.0 / n
    x = x * dim_f
    # The time conditioning of every step at once (it does not depend on x): batched, not N matrix-vector passes.
    cond = expert.apply(variables, jnp.broadcast_to(times[:, None], (n, b)), method=ActionExpert.conditioning)

    def step(i, x):
        t = jnp.full((b,), times[i], jnp.float32)
        step_cond = jax.tree.map(lambda a: a[i], cond)

        def velocity(z):
            return expert.apply(variables, ctx, z, t, horizon_valid, step_cond, method=ActionExpert.velocity) * dim_f

        v = velocity(x) if guidance is None else rtc.guided_velocity(velocity, x, times[i], guidance, dim_f)
        return (x + dt * v) * dim_f

    return jax.lax.fori_loop(0, n, step, x)


def sample_actions(expert: ActionExpert, params, context_k, context_v, encoder_mask, *, action_dim_valid=None,
                   noise=None, rng=None, num_steps: int | None = None, horizon: int | None = None,
                   depth_positions=None, guidance: rtc.Guidance | None = None):
    """Sample an action chunk by Euler flow integration. Returns fp32 [B, H, max_action_dim].

    context_k/context_v: [L, B, T, context_dim]; encoder_mask: bool [B, T]; action_dim_valid: bool [B, D] or [D]
    (None = all dims valid); noise: the starting noise, shape (horizon, D) per example, i.e. [B, H, D] (takes
    precedence over rng); rng: PRNG key to draw it from N(0, I) as [B, horizon, D] (horizon defaults to
    action_expert.max_action_horizon); num_steps: Euler steps (default flow.num_steps); guidance: real-time
    chunking (`rtc.make_guidance`), target shaped like the noise. The context is projected once and reused by
    every step.
    """
    ae = expert.config.action_expert
    b = encoder_mask.shape[0]
    if noise is None:
        if rng is None:
            raise ValueError("sample_actions: pass `noise` [B, H, D] or an `rng` key")
        h = ae.max_action_horizon if horizon is None else int(horizon)
        noise = jax.random.normal(rng, (b, h, ae.max_action_dim), jnp.float32)
    noise = jnp.asarray(noise)
    if noise.ndim != 3 or noise.shape[0] != b or noise.shape[-1] != ae.max_action_dim:
        raise ValueError(f"sample_actions: noise shape {noise.shape}, expected [B={b}, H, {ae.max_action_dim}]")
    if guidance is not None and guidance.target.shape != noise.shape:
        raise ValueError(f"sample_actions: RTC target shape {guidance.target.shape} differs from the noise's "
                         f"{noise.shape}")
    ctx = project_context(expert, params, context_k, context_v, encoder_mask, depth_positions)
    return sample_actions_from_context(expert, params, ctx, noise, action_dim_valid, num_steps, guidance=guidance)
