"""The train step: gradient accumulation over micro-batches, group-wise optax update, and a NaN/Inf guard.

`loss_fn(params, batch, rng) -> (loss, metrics)` is pure; the step is jitted by the trainer with explicit
in/out shardings and a donated state. A step whose loss or gradients are not finite leaves params and optimizer
state untouched, and counts it (`bad_steps` consecutive, `skipped_steps` in total); the trainer aborts after
`trainer.max_consecutive_bad_steps`. With `ema_decay` > 0 the state also carries an exponential moving average of
the params (ema = decay * ema + (1 - decay) * params after every good step).
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from molmoact2_jax.training.optimizer import stop_frozen


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array          # base key; step s uses fold_in(rng, s), so resuming needs nothing else
    bad_steps: jax.Array    # consecutive non-finite steps
    skipped_steps: jax.Array
    ema_params: Any = None  # EMA of params (config.ema.decay > 0), else None


def init_state(params, tx, rng, ema: bool = False) -> TrainState:
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=tx.init(params), rng=rng, bad_steps=zero,
                      skipped_steps=zero, ema_params=jax.tree.map(jnp.copy, params) if ema else None)


def split_microbatches(batch, n: int):
    def one(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} is not divisible by trainer.grad_accum_steps={n}")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])
    return jax.tree.map(one, batch)


def make_train_step(loss_fn: Callable, tx, tree_labels, grad_accum_steps: int = 1, ema_decay: float = 0.0):
    def grads_of(params, batch, rng):
        def f(p):
            return loss_fn(stop_frozen(p, tree_labels), batch, rng)
        (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
        return loss, metrics, grads

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        if grad_accum_steps == 1:
            loss, metrics, grads = grads_of(state.params, batch, rng)
        else:
            micro = split_microbatches(batch, grad_accum_steps)

            def body(carry, xs):
                mb, i = xs
                loss, metrics, grads = grads_of(state.params, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

            zeros = jax.eval_shape(grads_of, state.params, jax.tree.map(lambda x: x[0], micro), rng)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
            total, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(grad_accum_steps)))
            loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum_steps, total)

        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        ema = state.ema_params
        if ema_decay:
            ema = keep(jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, new_params), ema)
        new_state = state.replace(
            step=state.step + 1,
            ema_params=ema,
            params=keep(new_params, state.params),
            opt_state=keep(new_opt, state.opt_state),
            bad_steps=jnp.where(finite, 0, state.bad_steps + 1),
            skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)
        return new_state, metrics

    return train_step
