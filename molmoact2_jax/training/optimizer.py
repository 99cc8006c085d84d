"""Optax optimizer with the reference parameter groups (docs/model_notes.md, "Training recipe").

Each group (vit, connector, llm, action_expert, and lora when adapters are on) has its own peak LR, its own
warmup -> cosine-to-floor schedule and its own global-norm clipping, or is frozen (zero updates and no gradient
computed, see `stop_frozen`). Weight decay applies to matrices only (`kernel` leaves), never to norms, biases,
embeddings or position tables.
"""
from __future__ import annotations

import jax
import optax
from flax import traverse_util

GROUPS = ("vit", "connector", "llm", "action_expert")
FROZEN = "frozen"


def group_of(path: tuple[str, ...]) -> str:
    """The first group name found along a parameter path ('lora' adapters are their own group)."""
    for name in path:
        if name == "lora":
            return "lora"
        if name in GROUPS:
            return name
    raise ValueError(f"parameter {'/'.join(path)} belongs to no optimizer group {GROUPS}")


def labels(params, opt_cfg, lora_enabled: bool = False):
    """Tree of group labels, FROZEN for groups listed in optimizer.freeze (and the base LLM under LoRA)."""
    frozen = set(opt_cfg.freeze)
    unknown = frozen - set(GROUPS)
    if unknown:
        raise ValueError(f"config.optimizer.freeze: unknown group(s) {sorted(unknown)}; groups are {GROUPS}")
    if lora_enabled:
        frozen.add("llm")

    def label(path, _):
        g = group_of(path)
        return FROZEN if g in frozen else g
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: label(k, v) for k, v in flat.items()})


def schedule(peak_lr: float, opt_cfg, total_steps: int):
    warmup = int(opt_cfg.warmup_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=peak_lr * float(opt_cfg.final_lr_fraction))


def _decay_mask(params):
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: k[-1] in ("kernel", "lora_a", "lora_b") for k in flat})


def make_optimizer(params, opt_cfg, total_steps: int, lora_cfg=None):
    """Returns (optax transform, label tree, {group: schedule}). `opt_cfg`: config.optimizer; `lora_cfg`:
    config.lora when adapters are on, else None."""
    tree_labels = labels(params, opt_cfg, lora_cfg is not None)
    present = set(jax.tree.leaves(tree_labels))
    schedules, transforms = {}, {FROZEN: optax.set_to_zero()}
    for g in sorted(present - {FROZEN}):  # sorted: a stable program (and compilation-cache key) per config
        peak = float(lora_cfg.lr) if g == "lora" else float(opt_cfg.lr[g])
        schedules[g] = schedule(peak, opt_cfg, total_steps)
        chain = []
        if float(opt_cfg.clip_grad_norm):   # 0: no clipping
            chain.append(optax.clip_by_global_norm(float(opt_cfg.clip_grad_norm)))
        chain.append(optax.adamw(schedules[g], b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                                 weight_decay=float(opt_cfg.weight_decay), mask=_decay_mask))
        transforms[g] = optax.chain(*chain)
    return optax.multi_transform(transforms, tree_labels), tree_labels, schedules


def stop_frozen(params, tree_labels):
    """stop_gradient on frozen leaves, so their gradients are never computed."""
    return jax.tree.map(lambda p, l: jax.lax.stop_gradient(p) if l == FROZEN else p, params, tree_labels)
