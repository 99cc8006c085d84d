"""PolicyGraphs -> ONNX models, through jax2onnx.

The graphs are traced to a jaxpr first (jax.make_jaxpr, at the export's concrete shapes) and jax2onnx converts
the jaxpr's evaluation. Converting the Flax module call directly does not work: jax2onnx patches jax.numpy during
its trace, and linen's `nn.scan` (every layer stack of ours) builds its carry shapes with it. At the jaxpr level
there is no Flax left, only lax primitives, which is what jax2onnx's rules cover. The parameters are constants of
the jaxpr, so they become ONNX initializers.

jax2onnx is pinned to 0.12.5 in the `export` extra: later releases require orbax-checkpoint < 0.11.37, older than
the checkpointing this project uses.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from molmoact2_jax.export.graphs import TensorSpec

OPSET = 21


def _quiet_jax2onnx():
    """jax2onnx imports every optional plugin (equinox, dm-pix examples) and logs a traceback for each one whose
    library is absent; none of ours needs them."""
    logging.getLogger("jax2onnx").setLevel(logging.ERROR)
    logging.getLogger("jax2onnx.plugins.plugin_system").setLevel(logging.CRITICAL)
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)


def to_onnx_model(fn, inputs: list[TensorSpec], outputs: list[TensorSpec], name: str):
    """fn(*arrays) -> array or tuple of arrays, traced at the specs' concrete shapes. Returns an onnx ModelProto
    whose inputs and outputs carry the specs' names, in order."""
    _quiet_jax2onnx()
    from jax2onnx import to_onnx

    structs = [s.struct() for s in inputs]
    closed = jax.make_jaxpr(lambda *a: tuple(_as_tuple(fn(*a))))(*structs)

    def evaluate(*args):
        return tuple(eval_unrolled(closed.jaxpr, closed.consts, *args))

    model = to_onnx(evaluate, structs, model_name=name, opset=OPSET)
    _rename(model, inputs, outputs)
    return model


def eval_unrolled(jaxpr, consts, *args) -> list:
    """jax.core.eval_jaxpr, except that every `scan` (the layer stacks, the Euler loop) runs as a Python loop and
    nested jits are inlined, so the traced program is straight-line. onnxruntime then sees each layer's weights as
    their own initializers and fuses across layers; an ONNX Loop over stacked weights slices them at every
    iteration and blocks that (measured in docs/export.md, "Deploy without JAX"). Same primitives, same order of
    operations: the numbers do not change."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jax.extend.core.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "scan" and _holds_scan(eqn.params["jaxpr"].jaxpr):
            outvals = _scan_with_flat_body(eqn, invals)
        elif name == "scan":
            outvals = _scan_unrolled(eqn.params, invals)
        elif name == "dot_general":
            outvals = [_dot_as_matmul(*invals, **eqn.params)]
        elif name in ("jit", "pjit", "closed_call") and "jaxpr" in eqn.params:
            sub = eqn.params["jaxpr"]
            outvals = eval_unrolled(sub.jaxpr, sub.consts, *invals)
        else:
            with eqn.ctx.manager:
                outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
        for v, x in zip(eqn.outvars, outvals):
            env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _dot_as_matmul(lhs, rhs, dimension_numbers, preferred_element_type=None, **_):
    """A dot_general as one batched matrix product: operands transposed to [batch..., M, K] x [batch..., K, N]
    (free and contracted axes each merged into one), the result reshaped back to dot_general's [batch..., lhs free,
    rhs free]. jax2onnx writes other contractions (several contracted or free axes: the multi-head projections, the
    attention scores) as ONNX Einsum, which onnxruntime runs at about half the speed of MatMul on a CPU; the
    transposes of weights are constants that onnxruntime folds at load."""
    (lc, rc), (lb, rb) = dimension_numbers
    lf = [a for a in range(lhs.ndim) if a not in lc and a not in lb]
    rf = [a for a in range(rhs.ndim) if a not in rc and a not in rb]
    batch = [lhs.shape[a] for a in lb]
    size = lambda x, axes: int(np.prod([x.shape[a] for a in axes], dtype=np.int64))   # noqa: E731
    a = jnp.transpose(lhs, (*lb, *lf, *lc)).reshape(*batch, size(lhs, lf), size(lhs, lc))
    b = jnp.transpose(rhs, (*rb, *rc, *rf)).reshape(*batch, size(rhs, rc), size(rhs, rf))
    nb = len(batch)
    out = jax.lax.dot_general(a, b, (((nb + 1,), (nb,)), (tuple(range(nb)), tuple(range(nb)))),
                              preferred_element_type=preferred_element_type)
    return out.reshape(*batch, *[lhs.shape[x] for x in lf], *[rhs.shape[x] for x in rf])


def _holds_scan(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            return True
        sub = eqn.params.get("jaxpr")
        if sub is not None and _holds_scan(getattr(sub, "jaxpr", sub)):
            return True
    return False


def _scan_with_flat_body(eqn, invals) -> list:
    """A scan around scans (the Euler loop around the expert's layers) stays one ONNX Loop, its body made
    straight-line: unrolling both would trace steps x layers blocks (minutes of export for 10 steps) for little
    gain, as the loop's per-iteration cost is small next to the body's."""
    body = eqn.params["jaxpr"]
    flat = jax.make_jaxpr(lambda *a: eval_unrolled(body.jaxpr, body.consts, *a))(*body.in_avals)
    params = dict(eqn.params, jaxpr=flat)
    with eqn.ctx.manager:
        return eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))


def _scan_unrolled(params, invals) -> list:
    body, n_consts, n_carry = params["jaxpr"], params["num_consts"], params["num_carry"]
    consts, carry, xs = invals[:n_consts], list(invals[n_consts:n_consts + n_carry]), invals[n_consts + n_carry:]
    steps = range(params["length"])
    ys = []
    for i in (reversed(steps) if params["reverse"] else steps):
        out = eval_unrolled(body.jaxpr, body.consts, *consts, *carry, *[x[i] for x in xs])
        carry, y = out[:n_carry], out[n_carry:]
        ys.append(y)
    if params["reverse"]:
        ys.reverse()
    n_ys = len(body.jaxpr.outvars) - n_carry
    return carry + [jnp.stack([y[j] for y in ys]) for j in range(n_ys)]


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _rename(model, inputs, outputs):
    """Gives the graph's inputs and outputs the specs' names (jax2onnx numbers them)."""
    g = model.graph
    mapping = {}
    for value, spec in zip(list(g.input), inputs):
        mapping[value.name] = spec.name
    for value, spec in zip(list(g.output), outputs):
        mapping[value.name] = spec.name
    for value in list(g.input) + list(g.output):
        value.name = mapping.get(value.name, value.name)
    _rename_uses(g, mapping)


def _rename_uses(graph, mapping):
    for node in graph.node:
        for i, n in enumerate(node.input):
            if n in mapping:
                node.input[i] = mapping[n]
        for i, n in enumerate(node.output):
            if n in mapping:
                node.output[i] = mapping[n]
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                _rename_uses(attr.g, mapping)
            for sub in attr.graphs:
                _rename_uses(sub, mapping)
