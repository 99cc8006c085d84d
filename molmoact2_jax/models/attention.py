"""One attention call, three implementations with the same semantics (config `model.attention_impl`).

Every attention of the model (LLM, ViT, action expert self- and cross-attention) calls `attend(q, k, v, mask)`:
q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D] (Hq a multiple of Hkv: grouped K/V heads), `mask` a boolean (True = may attend)
or an additive fp32 bias (NEG_INF = masked), broadcastable to [B, 1, Tq, Tk], or None. Returns [B, Tq, Hq, D].

- `xla`: einsum + fp32 softmax (models/layers.py `attention`): materialises the [B, Hkv, G, Tq, Tk] scores.
- `splash`: Pallas splash attention (TPU), a flash kernel that never holds the scores. Its mask is the model's own
  boolean mask, blocked per example ("dynamic" splash mask): each [block_q, block_kv] tile of it is empty (skipped:
  no DMA, no FLOPs), full (no mask applied) or partial (the tile's booleans applied). Splash's static masks cannot say
  what the LLM needs: causal OR (both tokens image-typed), AND same packed example, AND key valid, where the image
  blocks of one example are separated by text ("Image 1<|image|>Image 2<|image|>"), so no single causal-with-horizon
  or segment-id rule matches it (an image token sees the next image but not the text before it). Blocking the exact
  mask keeps the image-bidirectional term exact and skips, from the data, the tiles packing and causality leave
  empty: with several examples per row most tiles off the diagonal blocks are empty. Cost: the mask tiles, one
  byte per (query, key) pair per example (256 MiB at 16384), built once per forward pass (`prepare_mask`).
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (GPU flash attention) with the mask as a dense
  additive bias in the compute dtype: exact, including rows with nothing to attend to, but no tile skipping (cuDNN's
  packed-segment form, q/kv offsets, is not reachable through that API). cuDNN runs in bf16/fp16 only.
- `auto`: splash on TPU, cudnn on GPU, xla elsewhere (the platform of the mesh being traced for, so an AOT compile
  for a TPU topology from a CPU host picks splash).

A query row with no allowed key (padding) is never read by anything downstream; xla and cudnn give it uniform
weights, splash lets it attend to one key (a row with nothing to attend to would divide by zero in the kernel, and
the NaN would reach valid rows through the next layer's keys). Valid rows agree to fp32 rounding
(tests/test_attention.py).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask_info as mi
from jax.sharding import PartitionSpec as P

from molmoact2_jax.models import layers as L

IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn")
# Splash tiles. 512 x 512 is what MaxText runs on v4/v5e/v5p/v6e (fits every generation's VMEM with head_dim 128
# in bf16, forward and backward); shorter sequences take the largest of 256 / 128 that divides them. Sequences
# are padded to a multiple of 128 (the TPU lane width; padded keys are masked out).
SPLASH_BLOCKS = (512, 256, 128)
# Fewer queries than one tile (decode steps, the action expert's horizon) run the einsum path under splash: their
# scores are [B, H, Tq < 128, Tk], small, and a kernel would pad the queries to a whole tile.
SPLASH_MIN_QUERIES = 128


def platform() -> str:
    """The platform being compiled for: the mesh in context (jax.set_mesh), else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()   # the abstract mesh is readable under jit and names its device kind
    device = None if mesh.empty else mesh.abstract_device
    return device.platform if device is not None else jax.default_backend()


def resolve(impl: str) -> str:
    """'auto' -> splash on TPU, cudnn on GPU, xla elsewhere; any other name is checked and returned."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"config model.attention_impl={impl!r}: expected one of {list(IMPLEMENTATIONS)}")
    if impl != "auto":
        return impl
    return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn", "rocm": "cudnn"}.get(platform(), "xla")


def attend(q, k, v, mask, impl: str = "xla", dtype=jnp.float32):
    """The model's attention under `impl` (see the module docstring)."""
    impl = resolve(impl)
    if isinstance(mask, SplashMask) or impl == "splash" and q.shape[1] >= SPLASH_MIN_QUERIES:
        return splash_attention(q, k, v, mask if isinstance(mask, SplashMask) else _as_bool(mask),
                                interpret=platform() != "tpu")
    if impl == "cudnn" and jnp.dtype(dtype).itemsize == 2:
        return cudnn_attention(q, k, v, mask, dtype, implementation="cudnn")
    # xla, and cudnn asked for in fp32 (cuDNN's flash kernels take bf16/fp16 only): the einsum path
    return L.attention(q, k, v, mask, dtype=dtype)


def _as_bool(mask):
    if mask is None or mask.dtype == jnp.bool_:
        return mask
    return mask > 0.5 * L.NEG_INF


# ---------------------------------------------------------------------------------------------------- cuDNN
def cudnn_attention(q, k, v, mask, dtype, implementation: str = "cudnn"):
    """jax.nn.dot_product_attention with the model's mask as an additive bias in `dtype` ([B, 1, Tq, Tk],
    broadcast over heads). `implementation="xla"` runs the same call through XLA: how the semantics are tested
    where no GPU is."""
    bias = None
    if mask is not None:
        bias = L.mask_to_bias(mask) if mask.dtype == jnp.bool_ else mask
        bias = jnp.broadcast_to(bias, (q.shape[0], 1, q.shape[1], k.shape[1])).astype(dtype)
    out = jax.nn.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), bias=bias,
                                       implementation=implementation)
    return out.astype(dtype)


# ---------------------------------------------------------------------------------------------------- splash
def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def splash_block(length: int) -> int:
    """The tile size along a sequence of `length` (already a multiple of 128)."""
    return next(b for b in SPLASH_BLOCKS if length % b == 0)


def splash_tiles(mask, tq: int, tk: int, xp=jnp):
    """The boolean mask per example, padded to whole tiles: [B, Tq', Tk'] (Tq', Tk' multiples of 128; `xp=numpy`
    computes it on the host, as the FLOP count does). Padded keys
    are masked. A row with no allowed key (padding) attends to the key at its own index (key 0 past the keys'
    end): finite, and inside a tile the diagonal already computes (module docstring)."""
    b = mask.shape[0] if mask is not None else 1
    mask = xp.ones((b, 1, tq, tk), bool) if mask is None else xp.broadcast_to(mask, (b, 1, tq, tk))
    tq_p, tk_p = _round_up(tq, 128), _round_up(tk, 128)
    mask = xp.pad(mask[:, 0], ((0, 0), (0, tq_p - tq), (0, tk_p - tk)))
    rows = xp.arange(tq_p)
    own = xp.arange(tk_p)[None, :] == xp.where(rows < tk_p, rows, 0)[:, None]
    return mask | (~mask.any(-1, keepdims=True) & own)


def splash_tile_counts(tiles) -> dict:
    """How many [block_q, block_kv] tiles of `tiles` ([B, Tq', Tk'] bool) a splash kernel computes: the fraction
    it skips is what packing and causality save (models/flops.py counts FLOPs the same way)."""
    b, tq, tk = tiles.shape
    bq, bk = splash_block(tq), splash_block(tk)
    any_ = tiles.reshape(b, tq // bq, bq, tk // bk, bk).any(axis=(2, 4))
    return {"computed": int(any_.sum()), "total": int(any_.size)}


class SplashMask(NamedTuple):
    """A mask processed for splash once per forward pass and handed to every layer (`prepare_mask`): per example,
    the forward and dK/dV tile tables of splash's dynamic MaskInfo (next tile to fetch, next mask tile, tile kind
    0 empty / 1 partial / 2 full, the mask tiles), each with a leading batch axis."""
    fwd: tuple
    dkv: tuple


def _tile_tables(tiles) -> SplashMask:
    """One example's tiles [Tq', Tk'] -> its SplashMask (no batch axis)."""
    bq, bk = splash_block(tiles.shape[0]), splash_block(tiles.shape[1])
    fwd, _ = mi.process_dynamic_mask(tiles[None], (bq, bk))
    dkv, _ = mi.process_dynamic_mask_dkv(tiles[None], (bq, bk))
    arrays = lambda info: (info.data_next, info.mask_next, info.block_mask, info.partial_mask_blocks)
    return SplashMask(arrays(fwd), arrays(dkv))


def prepare_mask(mask, impl: str, tq: int, tk: int):
    """What a layer stack hands its layers as the mask: under splash (and >= one tile of queries) the tile tables,
    built once instead of once per layer (the mask is the same in every layer); otherwise the mask unchanged."""
    if resolve(impl) != "splash" or tq < SPLASH_MIN_QUERIES:
        return mask
    return jax.vmap(_tile_tables)(splash_tiles(_as_bool(mask), tq, tk))


def _splash_one(tables: SplashMask, q, k, v, interpret: bool):
    """One example: its SplashMask; q [Hq, Tq', D] (pre-scaled), k/v [Hkv, Tk', D]."""
    bq, bk = splash_block(q.shape[1]), splash_block(k.shape[1])
    sizes = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                          block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    # The kernel built here, not through make_splash_mha: that one converts MaskInfo.is_dynamic_mask (a Python flag)
    # to an array, which the kernel's __call__ then tests with `if` and fails under jit (jax 0.10.2).
    fwd = mi.MaskInfo(*tables.fwd, q_sequence=None, is_dynamic_mask=True)
    dkv = mi.MaskInfo(*tables.dkv, q_sequence=None, is_dynamic_mask=True)
    kernel = sk.SplashAttentionKernel(fwd, fwd, dkv, block_sizes=sizes, is_mqa=False, save_residuals=False,
                                      mask_value=sk.DEFAULT_MASK_VALUE, attn_logits_soft_cap=None,
                                      residual_checkpoint_name=None, mask_function=None, interpret=interpret)
    return kernel(q, k, v)


def _mesh_axes(logical: str, size: int, mesh) -> tuple | None:
    """The mesh axes the logical rules give `logical`, kept while they divide `size` (else replicated)."""
    spec = nn.logical_to_mesh_axes((logical,))
    axes = spec[0] if spec and spec[0] is not None else ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    kept, n = [], 1
    for a in axes:
        if a in mesh.axis_names and size % (n * mesh.shape[a]) == 0:
            kept.append(a)
            n *= mesh.shape[a]
    return tuple(kept) or None


def splash_attention(q, k, v, mask, interpret: bool = False):
    """Splash attention with the model's boolean mask (None = all allowed) or its `prepare_mask` tables; shapes as
    `attend`. Under a mesh the kernel runs per shard (shard_map): batch over the axes `activation_batch` maps to,
    heads over the axes `heads` maps to when both Hq and Hkv divide them (a local kernel must own whole K/V
    groups)."""
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    tables = mask if isinstance(mask, SplashMask) else jax.vmap(_tile_tables)(splash_tiles(mask, tq, tk))
    tq_p, tk_p = _round_up(tq, 128), _round_up(tk, 128)
    scale = 1.0 / np.sqrt(d)
    qt = jnp.pad((q * jnp.asarray(scale, q.dtype)), ((0, 0), (0, tq_p - tq), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    kt = jnp.pad(k, ((0, 0), (0, tk_p - tk), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    vt = jnp.pad(v, ((0, 0), (0, tk_p - tk), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    if tables.fwd[0].shape[0] != b:   # a mask without a batch axis: the same tables for every example
        tables = jax.tree.map(lambda x: jnp.broadcast_to(x, (b, *x.shape[1:])), tables)

    local = functools.partial(_splash_local, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        batch_axes = _mesh_axes("activation_batch", b, mesh)
        heads = _mesh_axes("heads", hq, mesh)
        if heads is not None and _mesh_axes("heads", hkv, mesh) != heads:
            heads = None
        qkv_spec = P(batch_axes, heads, None, None)
        local = jax.shard_map(local, in_specs=(P(batch_axes), qkv_spec, qkv_spec, qkv_spec), out_specs=qkv_spec,
                              check_vma=False)
    out = local(tables, qt, kt, vt)
    return out.transpose(0, 2, 1, 3)[:, :tq]


def _splash_local(tables, q, k, v, interpret: bool):
    return jax.vmap(functools.partial(_splash_one, interpret=interpret))(tables, q, k, v)
