"""PolicyGraphs -> serialized StableHLO (jax.export), with a symbolic batch dimension when asked.

The artifact is the compiled-to-be program with the parameters inside as constants: `jax.export.deserialize`
reads it back and `.call(...)` runs it on any JAX of a compatible version (jax.export keeps 6 months of backward
and 1 month of forward compatibility), without this package's model code. Exported for CPU and CUDA, and TPU when
asked (`platforms`)."""
from __future__ import annotations

import jax

from molmoact2_jax.export.graphs import TensorSpec

DEFAULT_PLATFORMS = ("cpu", "cuda")


def serialize(fn, inputs: list[TensorSpec], platforms=DEFAULT_PLATFORMS) -> bytes:
    """fn(*arrays) traced with the specs' shapes (a str dimension is symbolic, shared by every input naming it)."""
    names = sorted({d for s in inputs for d in s.shape if isinstance(d, str)})
    symbols = dict(zip(names, jax.export.symbolic_shape(", ".join(names)))) if names else {}
    structs = [s.struct(symbols) for s in inputs]
    exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(*structs)
    return exported.serialize()


def deserialize(data: bytes):
    """-> jax.export.Exported; `.call(*arrays)` runs it."""
    return jax.export.deserialize(bytearray(data))
