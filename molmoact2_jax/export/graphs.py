"""The policy split into the graphs an export serializes (docs/export.md, "Deploy without JAX").

A single graph from images to actions would redo the backbone at every flow step or carry a loop around it; the
split keeps what an observation computes once apart from what each Euler step computes:

  prefix:  input_ids, image patches, pooled patch indices, attention mask -> the action expert's projected
           cross-attention context (per-layer K/V over the prompt and its key bias): the backbone runs once.
  flow:    "loop": context + starting noise + valid action dims -> the action chunk (all Euler steps in the graph);
           "step": context + x + t + valid action dims -> the masked velocity (the runtime does the Euler update).
  guided:  ("step" exports) real-time chunking's velocity: context + x + t + valid dims + the previous chunk
           (model space), the inference delay, the overlap end and the guidance clip -> the guided velocity, with
           the vector-Jacobian product of the denoiser inside the graph (models/rtc.py).

Both are pure functions of arrays with the parameters bound as constants, traced from the same model code
`Policy` runs (MolmoAct2.context, flow.project_context, flow.sample_actions_from_context), so an export computes
what the policy computes.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from molmoact2_jax.models import flow, rtc
from molmoact2_jax.models.molmoact2 import MolmoAct2
from molmoact2_jax.models.action_expert import ActionExpert
from molmoact2_jax.runtime.export_folder import FLOW_KINDS



@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple            # ints; a str names a symbolic dimension (e.g. "batch")
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def struct(self, dims: dict | None = None) -> jax.ShapeDtypeStruct:
        shape = tuple(dims[d] if isinstance(d, str) else d for d in self.shape)
        return jax.ShapeDtypeStruct(shape, jnp.dtype(self.dtype))


@dataclasses.dataclass
class PolicyGraphs:
    """The functions and their input/output specs for one (batch, prompt length, cameras, horizon) shape."""
    prefix: callable
    flow: callable
    flow_kind: str
    prefix_inputs: list
    context: list           # the prefix's outputs, in order; also the flow's first inputs
    flow_inputs: list
    flow_outputs: list
    num_steps: int
    guided: callable = None      # step exports: the RTC-guided velocity
    guided_inputs: list = None


def _with_attention(cfg, impl: str):
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.attention_impl = impl
    return c


def _context_names(tree) -> list[str]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return ["context." + ".".join(str(getattr(k, "key", k)) for k in path) for path, _ in leaves]


def policy_graphs(policy, prompt_tokens: int, num_cameras: int, horizon: int, batch=1,
                  flow_kind: str = "loop", num_steps: int | None = None) -> PolicyGraphs:
    """`policy`: an inference.Policy (continuous mode); `batch`: an int, or a str naming a symbolic batch dimension.
    The prefix's image inputs take the shapes the policy's image preprocessing gives `num_cameras` images."""
    if flow_kind not in FLOW_KINDS:
        raise ValueError(f"flow kind {flow_kind!r}: expected one of {FLOW_KINDS}")
    params, cfg = policy.params, policy.cfg
    # Exported graphs hold portable ops: the einsum attention, whichever kernel the exporting host would pick
    # (a Pallas or cuDNN call has no ONNX or portable StableHLO form). Same parameters, same numbers.
    model = MolmoAct2(_with_attention(cfg, "xla"))
    if model.expert is None:
        raise ValueError("this checkpoint has no action expert: only the continuous (flow) policy exports")
    steps = int(cfg.flow.num_steps if num_steps is None else num_steps)
    d = int(cfg.action_expert.max_action_dim)
    patches, pooled = policy.model_inputs.image_inputs([np.zeros((8, 8, 3), np.uint8)] * num_cameras)
    b = batch
    prefix_inputs = [TensorSpec("input_ids", (b, prompt_tokens), "int32"),
                     TensorSpec("images", (b, *patches.shape), "float32"),
                     TensorSpec("pooled_idx", (b, *pooled.shape), "int32"),
                     TensorSpec("attention_mask", (b, prompt_tokens), "bool")]
    expert_params = params["action_expert"]

    def prefix(input_ids, images, pooled_idx, attention_mask):
        batch_ = dict(input_ids=input_ids, images=images, pooled_idx=pooled_idx, attention_mask=attention_mask)
        _, k, v, enc, depth = model.context(params, batch_)
        ctx = flow.project_context(model.expert, expert_params, k, v, enc, depth)
        return tuple(jax.tree.leaves(ctx))

    def context_shapes(n):
        ids = jax.ShapeDtypeStruct((n, prompt_tokens), jnp.int32)
        return jax.eval_shape(lambda i: flow.project_context(model.expert, expert_params,
                                                             *_fake_context(i, cfg)), ids)

    two, three = context_shapes(2), context_shapes(3)
    treedef = jax.tree.structure(two)
    context = []
    for name, s2, s3 in zip(_context_names(two), jax.tree.leaves(two), jax.tree.leaves(three)):
        # the batch axis is where the shapes of two batch sizes differ ([B, ...] bias, [L, B, ...] K/V)
        shape = tuple(b if x != y else x for x, y in zip(s2.shape, s3.shape))
        context.append(TensorSpec(name, shape, str(s2.dtype)))
    x_spec = TensorSpec("noise" if flow_kind == "loop" else "x", (b, horizon, d), "float32")
    valid_spec = TensorSpec("action_dim_valid", (b, d), "bool")

    if flow_kind == "loop":
        def flow_fn(*args):
            ctx = jax.tree.unflatten(treedef, args[:len(context)])
            noise, dim_valid = args[len(context):]
            return flow.sample_actions_from_context(model.expert, expert_params, ctx, noise, dim_valid, steps)
        flow_inputs = context + [x_spec, valid_spec]
        flow_outputs = [TensorSpec("actions", (b, horizon, d), "float32")]
    else:
        def flow_fn(*args):
            ctx = jax.tree.unflatten(treedef, args[:len(context)])
            x, t, dim_valid = args[len(context):]
            v = model.expert.apply({"params": expert_params}, ctx, x, t, None, method=ActionExpert.velocity)
            return v * dim_valid.astype(jnp.float32)[:, None, :]
        flow_inputs = context + [x_spec, TensorSpec("t", (b,), "float32"), valid_spec]
        flow_outputs = [TensorSpec("velocity", (b, horizon, d), "float32")]
    graphs = PolicyGraphs(prefix=prefix, flow=flow_fn, flow_kind=flow_kind, prefix_inputs=prefix_inputs,
                          context=context, flow_inputs=flow_inputs, flow_outputs=flow_outputs, num_steps=steps)
    if flow_kind == "step":
        def guided(*args):
            ctx = jax.tree.unflatten(treedef, args[:len(context)])
            x, t, dim_valid, target, delay, end, beta = args[len(context):]
            dim_f = dim_valid.astype(jnp.float32)[:, None, :]
            t_rows = jnp.broadcast_to(t, x.shape[:1])

            def velocity(z):
                v = model.expert.apply({"params": expert_params}, ctx, z, t_rows, None, method=ActionExpert.velocity)
                return v * dim_f

            return rtc.guided_velocity(velocity, x, t, rtc.make_guidance(target, delay, end, beta), dim_f)
        graphs.guided = guided
        graphs.guided_inputs = context + [x_spec, TensorSpec("t", (), "float32"), valid_spec,
                                          TensorSpec("target", (b, horizon, d), "float32"),
                                          TensorSpec("inference_delay", (b,), "int32"),
                                          TensorSpec("overlap_end", (b,), "int32"),
                                          TensorSpec("max_guidance_weight", (), "float32")]
    return graphs


def _fake_context(ids, cfg):
    """Shapes only (under eval_shape): the backbone's per-layer K/V and masks for prompt ids [B, T]."""
    b, t = ids.shape
    layers, c = cfg.llm.num_layers, cfg.action_expert.context_dim
    kv = jnp.zeros((layers, b, t, c), jnp.float32)
    depth = jnp.zeros((b, t), bool) if cfg.action_expert.depth_gate else None
    return kv, kv, jnp.ones((b, t), bool), depth
