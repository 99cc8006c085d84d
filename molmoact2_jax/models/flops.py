"""Analytic FLOPs of a MolmoAct2 training step, from the model config and the batch.

Why not XLA's `cost_analysis()`: it counts the body of a while loop once, and every scanned layer stack is a while
loop, so it under-counts by about the layer count. This module walks the architecture instead (ViT, connector,
LLM, LM head, action expert with K flow samples), counting 2*M*N*K per matmul:

  hardware FLOPs  what the compiled step executes: dense shapes (padding tokens, missing cameras and masked
                  attention entries included, as the einsum attention computes them; under splash attention the
                  tiles the kernel computes, read from the batch's masks), forward + backward, plus the forward
                  recomputed by the remat policy. This is what `step_time_floor` and HFU use.
  model FLOPs     the useful work: only valid tokens and images, attention over the entries its masks allow
                  (causal, bidirectional image blocks, padding, packed segments), forward + backward, no remat.
                  This is what MFU uses.

Backward = 2x forward for a matmul whose input and weight both need gradients, 1x when only one does: frozen groups
compute no weight gradient (optimizer.freeze, the base LLM under LoRA), nothing upstream of the first trainable
layer computes an input gradient, and `flow.detach_vlm` stops the flow loss's gradient at the K/V it reads.
Elementwise work (norms, softmax, RoPE, activations) is not counted; it is a few percent at full size.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from molmoact2_jax.models import attention
from molmoact2_jax.models.layers import SAVED_NAMES
from molmoact2_jax.models.llm import attention_allowed
from molmoact2_jax.models.action_expert import expert_mlp_dim
from molmoact2_jax.models.vit import num_built_layers

GROUP_ORDER = ("vit", "connector", "llm", "action_expert")
# token_type_ids == 1 in the backbone: tokens that attend bidirectionally among themselves.
IMAGE_FAMILY = ("image_start", "image_end", "image_patch", "image_col", "low_res_image_start", "frame_start",
                "frame_end", "image_low")


@dataclasses.dataclass(frozen=True)
class Counts:
    """How much of each kind of work a batch holds (dense shapes for hardware FLOPs, masked for model FLOPs)."""
    images: float            # ViT images run
    patches: int             # patches per image
    image_tokens: float      # connector output tokens
    tokens: float            # LLM tokens
    llm_pairs: float         # (query, key) pairs the LLM attention computes, summed over the batch
    action_examples: float   # examples the action expert runs on
    horizon: int
    context_tokens: float    # backbone tokens whose K/V the expert projects
    cross_pairs: float       # (action step, context key) pairs of the expert's cross-attention, per flow sample
    vit_pairs: float = 0.0   # (query, key) pairs per image in the ViT's attention (0: patches ** 2)


@dataclasses.dataclass(frozen=True)
class Op:
    group: str
    block: str | None        # remat unit ("vit", "llm", "expert") or None
    flops: float             # forward FLOPs
    weight: bool             # a parameter matmul (dW exists) vs activation x activation (attention)
    input_grad: bool = True  # False where the input can never need a gradient (images, noise, time)
    from_context: bool = False  # reads the backbone K/V (the gradient `detach_vlm` stops)
    elementwise: bool = False   # softmax work per logit: in hardware FLOPs only, recomputed by any remat
    name: str = ""           # the checkpoint_name of a block op's output (layers.REMAT_NAMES; "" elsewhere)


# Per attention or LM-head logit: scale, bias, max, subtract, sum, divide forward (exp is a transcendental, which
# XLA does not count as a FLOP), about as many backward. At tiny widths this is ~4% of the step.
SOFTMAX_FLOPS = 5.0


def _mm(m, k, n) -> float:
    return 2.0 * float(m) * float(k) * float(n)


def forward_ops(cfg, c: Counts, num_flow_samples: int) -> list[Op]:
    """Every matmul of one forward pass of the training loss."""
    ops: list[Op] = []
    v = cfg.vit
    vw, vq = v.hidden_size, v.num_heads * v.head_dim
    rows = c.images * c.patches
    vit_pairs = c.vit_pairs or float(c.patches) ** 2
    ops.append(Op("vit", None, _mm(rows, 3 * v.patch_size ** 2, vw), True, input_grad=False))
    for _ in range(num_built_layers(v)):
        ops += [Op("vit", "vit", _mm(rows, vw, 3 * vq), True, name="qkv_proj"),
                Op("vit", "vit", 2 * 2.0 * c.images * vit_pairs * vq, False, name="attention_out"),  # QK^T, AV
                Op("vit", "vit", SOFTMAX_FLOPS * c.images * vit_pairs * v.num_heads, False, elementwise=True),
                Op("vit", "vit", _mm(rows, vq, vw), True, name="out_proj"),
                Op("vit", "vit", _mm(rows, vw, v.mlp_dim), True, name="mlp_in"),
                Op("vit", "vit", _mm(rows, v.mlp_dim, vw), True, name="mlp_out")]

    cn = cfg.connector
    cin, cq, n = vw * len(v.feature_layers), cn.num_heads * cn.head_dim, c.image_tokens
    pool = cn.pool_size ** 2
    ops += [Op("connector", None, _mm(n, cin, cq) + 2 * _mm(n * pool, cin, cq), True),  # q from the mean; k, v
            Op("connector", None, 2 * _mm(n, pool, cq), False),
            Op("connector", None, _mm(n, cq, cn.hidden_size), True),
            Op("connector", None, 2 * _mm(n, cn.hidden_size, cn.mlp_dim), True),
            Op("connector", None, _mm(n, cn.mlp_dim, cfg.llm.hidden_size), True)]

    m = cfg.llm
    d, q, kv = m.hidden_size, m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    for _ in range(m.num_layers):
        ops += [Op("llm", "llm", _mm(c.tokens, d, q + 2 * kv), True, name="qkv_proj"),
                Op("llm", "llm", 2 * 2.0 * c.llm_pairs * q, False, name="attention_out"),
                Op("llm", "llm", SOFTMAX_FLOPS * c.llm_pairs * m.num_heads, False, elementwise=True),
                Op("llm", "llm", _mm(c.tokens, q, d), True, name="out_proj"),
                Op("llm", "llm", _mm(c.tokens, d, 2 * m.mlp_dim), True, name="mlp_in"),
                Op("llm", "llm", _mm(c.tokens, m.mlp_dim, d), True, name="mlp_out")]
    ops += [Op("llm", None, _mm(c.tokens, d, m.vocab_size), True),
            Op("llm", None, SOFTMAX_FLOPS * c.tokens * m.vocab_size, False, elementwise=True)]  # CE, z-loss

    if not cfg.use_action_expert:
        return ops
    ae = cfg.action_expert
    de, mlp, ks = ae.hidden_size, expert_mlp_dim(ae), float(num_flow_samples)
    b, h = c.action_examples, c.horizon
    ops.append(Op("action_expert", None, ae.num_layers * 2 * _mm(c.context_tokens, ae.context_dim, de), True,
                  from_context=True))
    ops += [Op("action_expert", None, ks * _mm(b, ae.timestep_embed_dim, de), True, input_grad=False),
            Op("action_expert", None, ks * _mm(b, de, de), True),
            Op("action_expert", None, ks * _mm(b * h, ae.max_action_dim, de), True, input_grad=False)]
    rows = ks * b * h
    for _ in range(ae.num_layers):
        ops += [Op("action_expert", "expert", ks * _mm(b, de, 9 * de), True, name="modulation"),
                Op("action_expert", "expert", _mm(rows, de, 3 * de), True, name="qkv_proj"),
                Op("action_expert", "expert", 2 * _mm(rows, h, de), False, name="attention_out"),
                Op("action_expert", "expert", SOFTMAX_FLOPS * rows * h * ae.num_heads, False, elementwise=True),
                Op("action_expert", "expert", _mm(rows, de, de), True, name="out_proj"),
                Op("action_expert", "expert", _mm(rows, de, de), True, name="qkv_proj"),  # cross-attention query
                Op("action_expert", "expert", 2 * 2.0 * ks * c.cross_pairs * de, False, from_context=True,
                   name="attention_out"),
                Op("action_expert", "expert", SOFTMAX_FLOPS * ks * c.cross_pairs * ae.num_heads, False,
                   elementwise=True),
                Op("action_expert", "expert", _mm(rows, de, de), True, name="out_proj"),
                Op("action_expert", "expert", _mm(rows, de, 2 * mlp), True, name="mlp_in"),
                Op("action_expert", "expert", _mm(rows, mlp, de), True, name="mlp_out")]
    ops += [Op("action_expert", None, ks * _mm(b, de, 2 * de), True),
            Op("action_expert", None, _mm(rows, de, ae.max_action_dim), True)]
    return ops


def _recomputed(op: Op, policy: str) -> bool:
    """Whether the remat policy recomputes this op's forward in the backward pass."""
    if op.block is None or policy == "none":
        return False
    if policy == "full" or op.elementwise:
        return True
    if policy in SAVED_NAMES:   # a named policy: what it does not keep is recomputed
        return op.name not in SAVED_NAMES[policy]
    if policy == "dots_no_batch":
        return not op.weight  # attention einsums carry batch dims, so they are not saved
    return False              # "dots": every matmul output is saved


def step_flops(cfg, c: Counts, *, num_flow_samples: int, trainable=GROUP_ORDER, lora: bool = False,
               detach_vlm: bool = False, remat_policy: str = "none", elementwise: bool = True) -> dict:
    """{"forward", "backward", "recompute", "total"} FLOPs of a training step for these counts (`elementwise`:
    include the softmax work, as hardware FLOPs do)."""
    dw = set(trainable) | ({"llm"} if lora else set())
    # The flow loss reaches the backbone through the K/V it reads, unless knowledge insulation stops it there.
    context_needs = not detach_vlm and any(g in dw for g in GROUP_ORDER[:3])
    fwd = bwd = rec = 0.0
    for op in forward_ops(cfg, c, num_flow_samples):
        if op.elementwise and not elementwise:
            continue
        if op.group == "action_expert":
            chain = "action_expert" in dw or context_needs
        else:
            chain = any(g in dw for g in GROUP_ORDER[:GROUP_ORDER.index(op.group) + 1])
        if op.elementwise:
            grads = float(chain or op.from_context and "action_expert" in dw)
        elif op.weight:
            x_grad = context_needs if op.from_context else (op.input_grad and chain)
            grads = (op.group in dw) + x_grad
        else:  # activation x activation: each operand needs its gradient if anything before it trains
            grads = chain + (("action_expert" in dw or context_needs) if op.from_context else chain)
        fwd += op.flops
        bwd += grads * op.flops
        if grads and _recomputed(op, remat_policy):
            rec += op.flops
    return {"forward": fwd, "backward": bwd, "recompute": rec, "total": fwd + bwd + rec}


# ---------------------------------------------------------------- counts from a batch
def _shape(x):
    return tuple(x.shape)


def dense_counts(cfg, batch) -> Counts:
    """What the compiled step computes for a batch of these shapes (arrays or ShapeDtypeStructs). Under splash
    attention (cfg.attention_impl, resolved for the platform in context) the LLM's pairs are those of the tiles the
    kernel computes when the batch's token ids and masks are host arrays (tiles over padded lengths otherwise),
    and the ViT's its padded square."""
    b, t = _shape(batch["input_ids"])
    images = batch.get("images")
    n_img, patches = (0, 0) if images is None else (_shape(images)[1], _shape(images)[2])
    n_tok = 0 if images is None else _shape(batch["pooled_idx"])[1]
    h = _shape(batch["actions"])[1] if "actions" in batch else cfg.action_expert.max_action_horizon
    llm_pairs, vit_pairs = float(b * t * t), 0.0
    if attention.resolve(cfg.attention_impl) == "splash":
        if t >= attention.SPLASH_MIN_QUERIES:
            llm_pairs = splash_llm_pairs(cfg, batch)
        if patches >= attention.SPLASH_MIN_QUERIES:
            vit_pairs = float(-(-patches // 128) * 128) ** 2
    return Counts(images=b * n_img, patches=patches, image_tokens=b * n_tok, tokens=b * t, llm_pairs=llm_pairs,
                  action_examples=b, horizon=h, context_tokens=b * t, cross_pairs=b * h * t, vit_pairs=vit_pairs)


def splash_llm_pairs(cfg, batch) -> float:
    """(query, key) pairs in the tiles splash computes for the LLM over `batch`: the model's mask per row, tiled
    as models/attention.py tiles it (rows with the same ids, mask and segments are counted once)."""
    ids = batch["input_ids"]
    b, t = _shape(ids)
    tp = -(-t // 128) * 128
    tile = attention.splash_block(tp) ** 2
    if not isinstance(ids, np.ndarray):    # abstract: every tile over the padded length
        return float(b * tp * tp)
    valid = np.asarray(batch.get("attention_mask", ids >= 0), bool)
    segments = batch.get("segment_ids")
    family = np.array([cfg.tokens[f] for f in IMAGE_FAMILY])
    seen: dict = {}
    total = 0.0
    for i in range(b):
        seg = None if segments is None else np.asarray(segments[i])
        key = (ids[i].tobytes(), valid[i].tobytes(), None if seg is None else seg.tobytes())
        if key not in seen:   # on the host, in numpy (the model's mask function is plain array arithmetic)
            slots = np.arange(t)[None]
            img = np.isin(ids[i], family)[None]
            s = None if seg is None else seg[None]
            allowed = attention_allowed(slots, slots, img, img, valid[i][None], s, s,
                                        cfg.llm.bidirectional_image_attention)
            tiles = attention.splash_tiles(allowed, t, t, xp=np)
            seen[key] = attention.splash_tile_counts(tiles)["computed"] * tile
        total += seen[key]
    return float(total)


def masked_counts(cfg, batch) -> Counts:
    """The useful part of a host batch: valid tokens and images, attention entries the masks allow. Token ids,
    masks and `pooled_idx` must be host arrays; images and actions may be abstract (only shapes are read)."""
    ids = np.asarray(batch["input_ids"])
    b, t = ids.shape
    valid = np.asarray(batch["attention_mask"], bool) if "attention_mask" in batch else ids >= 0
    family = np.array([cfg.tokens[f] for f in IMAGE_FAMILY])
    image = np.isin(ids, family) & valid
    segments = batch.get("segment_ids")
    if segments is None:  # one sequence per row: keys at or before each valid query, plus later image keys
        later_images = image.sum(-1, keepdims=True) - np.cumsum(image, -1)
        pairs = float((np.cumsum(valid, -1) * valid).sum() + (later_images * image).sum())
    else:                 # packed rows: the same within each segment
        pairs = 0.0
        for i in range(b):
            seg = np.asarray(segments[i])
            for s in np.unique(seg[valid[i]]):
                sel = valid[i] & (seg == s)
                img = image[i][sel]
                pairs += float(np.cumsum(sel)[sel].sum() + (img.sum() - np.cumsum(img))[img].sum())
    patches, n_img, n_tok = 0, 0.0, 0.0
    if batch.get("images") is not None:  # only the shape of the pixels is read (they may be abstract)
        n_per, patches = _shape(batch["images"])[1:3]
        pooled = np.asarray(batch["pooled_idx"])
        n_tok = float((pooled >= 0).any(-1).sum())
        used = np.zeros((b, n_per + 1), bool)  # images some pooled token reads (last column: out of range)
        rows = np.broadcast_to(np.arange(b)[:, None, None], pooled.shape)
        used[rows[pooled >= 0], np.minimum(pooled[pooled >= 0] // patches, n_per)] = True
        n_img = float(used[:, :n_per].sum())
    has = np.asarray(batch.get("has_actions", np.ones(b, bool)), bool) if "actions" in batch else np.zeros(b, bool)
    h = _shape(batch["actions"])[1] if "actions" in batch else cfg.action_expert.max_action_horizon
    keys = valid.sum(-1)
    return Counts(images=n_img, patches=patches, image_tokens=n_tok, tokens=float(valid.sum()), llm_pairs=pairs,
                  action_examples=float(has.sum()), horizon=h, context_tokens=float(valid.sum()),
                  cross_pairs=float((keys * has).sum() * h))


def _step_kwargs(cfg, trainable, lora) -> dict:
    return dict(num_flow_samples=int(cfg.flow.num_samples), trainable=trainable, lora=lora,
                detach_vlm=bool(cfg.flow.detach_vlm))


def hardware_flops(cfg, batch, *, trainable=GROUP_ORDER, lora: bool = False) -> float:
    """FLOPs the compiled step executes over the whole `batch` (arrays or ShapeDtypeStructs: shapes only)."""
    return step_flops(cfg, dense_counts(cfg, batch), remat_policy=cfg.remat_policy,
                      **_step_kwargs(cfg, trainable, lora))["total"]


def model_flops(cfg, batch, *, trainable=GROUP_ORDER, lora: bool = False) -> float:
    """Useful FLOPs of one step over a host `batch` (its masks are read)."""
    return step_flops(cfg, masked_counts(cfg, batch), remat_policy="none", elementwise=False,
                      **_step_kwargs(cfg, trainable, lora))["total"]


def train_step_flops(cfg, batch, *, trainable=GROUP_ORDER, lora: bool = False) -> dict:
    """{"hardware", "model"} FLOPs of one step over the whole `batch`; "model" is None when the batch holds
    ShapeDtypeStructs (no masks to read)."""
    kw = dict(trainable=trainable, lora=lora)
    readable = hasattr(batch["input_ids"], "__array__")  # host or device arrays, not abstract shapes
    return {"hardware": hardware_flops(cfg, batch, **kw), "model": model_flops(cfg, batch, **kw) if readable else None}
