"""Logical axis rules (MaxText style): every logical name the models use -> mesh axes.

Parameters carry logical names (flax `nn.with_logical_partitioning`); these rules turn them into NamedShardings.
A dimension whose size does not divide the mesh axes it maps to is replicated instead (tiny configs on big
meshes), and a logical name without a rule is an error that names it.
"""
from __future__ import annotations

import jax
import flax.linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

DEFAULT_RULES = (
    # activations
    ("activation_batch", ("slice", "data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    # parameters
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("vit_embed", "fsdp"),
    ("vit_mlp", "tensor"),
    ("vit_pos", None),
    ("patch", None),
    ("expert_embed", "fsdp"),
    ("expert_mlp", "tensor"),
    ("expert_ctx", None),
    ("action_dim", None),
    ("time_embed", None),
    ("lora_rank", None),
)


def rules_from_config(rules_cfg=None) -> tuple:
    """config.sharding.rules: a list of [logical_name, mesh_axis | [mesh_axes] | None] pairs."""
    if rules_cfg is None:
        return DEFAULT_RULES
    out = []
    for pair in rules_cfg:
        name, axes = pair[0], pair[1]
        out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
    return tuple(out)


def logical_to_spec(logical: tuple, shape: tuple, mesh, rules) -> P:
    table = dict(rules)
    used: set = set()
    spec = []
    for name, dim in zip(logical, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no entry in config.sharding.rules")
        axes = table[name]
        axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
        size = 1
        for a in axes:
            size *= mesh.shape[a]
        if not axes or dim % size:
            spec.append(None)  # replicate dims that do not divide evenly
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def tree_shardings(boxed_tree, mesh, rules):
    """NamedSharding for every leaf of an (abstract) tree of nn.Partitioned / LogicallyPartitioned values;
    unannotated leaves are replicated."""
    def one(x):
        if isinstance(x, nn.Partitioned):
            return NamedSharding(mesh, logical_to_spec(tuple(x.names), x.value.shape, mesh, rules))
        return NamedSharding(mesh, P())
    return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def check_rules_cover(boxed_tree, rules):
    """Fails before compiling when a parameter uses a logical name the rules do not know."""
    known = {n for n, _ in rules}
    for x in jax.tree.leaves(boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        if isinstance(x, nn.Partitioned):
            missing = [n for n in x.names if n is not None and n not in known]
            if missing:
                raise ValueError(f"logical axis {missing[0]!r} has no entry in config.sharding.rules")


def batch_sharding(mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dim over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, P(("slice", "data", "fsdp"), *([None] * (ndim - 1))))
