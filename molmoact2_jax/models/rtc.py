"""Real-time chunking (RTC) for the flow head: guided inpainting of the next chunk towards the previous one
(Black, Galliker, Levine 2025, "Real-Time Execution of Action Chunking Flow Policies", Algorithm 1).

While the robot executes the current chunk, the next is sampled from an observation taken `d` steps (the inference
delay) before the switch. Those `d` steps are executed from the previous chunk meanwhile, so the new chunk must
continue it: each Euler step adds to the velocity a correction pulling the predicted clean chunk towards the
previous chunk's remaining actions, weighted by a soft mask over the horizon (1 on the delay, decaying to 0 at the
end of the overlap), computed as a vector-Jacobian product of the denoiser (a pseudo-inverse guidance step):

    x1(x) = x + (1 - t) v(x, t)                         predicted clean chunk (t = 0 noise, t = 1 data)
    g     = [(target - x1(x)) * W]^T  d x1 / d x        one `jax.vjp` per Euler step
    v'    = v + min(beta, (t^2 + (1 - t)^2) / (t (1 - t))) g

Everything is traceable: `Guidance` is a pytree of arrays, so the delay and the overlap length are data, not
shapes, and one compilation serves every (d, overlap) pair. `flow.sample_actions_from_context(..., guidance=)`
runs this inside its `fori_loop`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

SCHEDULES = ("exp", "linear", "ones", "zeros")
MAX_GUIDANCE_WEIGHT = 5.0   # beta of the paper


@struct.dataclass
class Guidance:
    """What the next chunk is guided towards. target: fp32 [B, H, D] (model space, pad dims 0); weights: fp32
    [B, H] (the soft mask); max_weight: fp32 scalar (the guidance clip beta)."""
    target: jax.Array
    weights: jax.Array
    max_weight: jax.Array


def prefix_weights(horizon: int, inference_delay, overlap_end, schedule: str = "exp") -> jax.Array:
    """The soft mask over a chunk of `horizon` steps, fp32 [horizon]: 1 for i < d, 0 for i >= overlap_end, and in
    between (exp, the paper's eq. 5) c_i (e^c_i - 1) / (e - 1) with c_i = (end - i) / (end - d + 1); "linear" is
    c_i itself, "ones" 1 and "zeros" 0 on the overlap. `inference_delay` / `overlap_end` may be traced ints."""
    if schedule not in SCHEDULES:
        raise ValueError(f"RTC schedule must be one of {SCHEDULES}, got {schedule!r}")
    i = jnp.arange(horizon, dtype=jnp.float32)
    end = jnp.asarray(overlap_end, jnp.float32)
    d = jnp.minimum(jnp.asarray(inference_delay, jnp.float32), end)
    c = (end - i) / jnp.maximum(end - d + 1.0, 1.0)
    if schedule == "exp":
        mid = c * jnp.expm1(c) / (math.e - 1.0)
    elif schedule == "linear":
        mid = c
    elif schedule == "ones":
        mid = jnp.ones_like(c)
    else:
        mid = jnp.zeros_like(c)
    return jnp.where(i < d, 1.0, jnp.where(i >= end, 0.0, mid)).astype(jnp.float32)


def guidance_scale(t, max_weight) -> jax.Array:
    """min(beta, (1 - t) / t / r_t^2) with r_t^2 = (1 - t)^2 / (t^2 + (1 - t)^2); beta at t = 0 (and t = 1)."""
    t = jnp.asarray(t, jnp.float32)
    denom = t * (1.0 - t)
    safe = jnp.where(denom > 0, denom, 1.0)
    scale = jnp.where(denom > 0, (jnp.square(t) + jnp.square(1.0 - t)) / safe, jnp.inf)
    return jnp.minimum(jnp.asarray(max_weight, jnp.float32), scale)


def make_guidance(target, inference_delay, overlap_end, max_weight: float = MAX_GUIDANCE_WEIGHT,
                  schedule: str = "exp") -> Guidance:
    """Guidance for a batch: target [B, H, D] model-space previous-chunk actions aligned with the new chunk (step 0
    = the observation's step; rows past the previous chunk's end are ignored through the mask);
    inference_delay / overlap_end: ints or int arrays [B]."""
    target = jnp.asarray(target, jnp.float32)
    if target.ndim != 3:
        raise ValueError(f"RTC target shape {target.shape}: expected [B, H, D]")
    b, h = target.shape[:2]
    d = jnp.broadcast_to(jnp.asarray(inference_delay), (b,))
    end = jnp.broadcast_to(jnp.asarray(overlap_end), (b,))
    weights = jax.vmap(lambda di, ei: prefix_weights(h, di, ei, schedule))(d, end)
    return Guidance(target=target, weights=weights, max_weight=jnp.asarray(max_weight, jnp.float32))


def guided_velocity(velocity_fn, x, t, guidance: Guidance, dim_f) -> jax.Array:
    """One RTC-corrected velocity. velocity_fn: x [B, H, D] -> v (pad dims already zeroed); t: the step's scalar
    time; dim_f: fp32 [B, 1, D] valid action dims."""
    def denoise(z):
        v = velocity_fn(z)
        return z + (1.0 - t) * v, v

    x1, vjp_fn, v = jax.vjp(denoise, x, has_aux=True)
    error = (guidance.target - x1) * guidance.weights[:, :, None] * dim_f
    (correction,) = vjp_fn(error)
    return v + guidance_scale(t, guidance.max_weight) * correction * dim_f
