"""MolmoAct2 = backbone + flow-matching action expert reading the backbone's per-layer K/V (docs/model_notes.md).

Params tree: {"backbone": {"vit", "connector", "llm"}, "action_expert": {...}} (the expert is absent when
`model.use_action_expert` is False, i.e. the discrete-only Pretrain model).

Training batch (numpy or jax arrays; B examples, T tokens, H = max_action_horizon, D = max_action_dim):
  input_ids [B,T] int32, attention_mask [B,T] bool, optional position_ids / segment_ids [B,T],
  images [B,N,P,588] + pooled_idx [B,Nt,4] (optional),
  target_ids [B,T] int32 (next token at each position, -1 none) + loss_mask [B,T] float (CE weights),
  actions [B,H,D] + action_dim_valid [B,D] + horizon_valid [B,H] + has_actions [B] (flow loss),
  optional action_segment [B] (packed rows: the segment the action chunk belongs to).
`inputs_spec` gives these shapes for a config and `fake_batch` a consistent batch of them (init, tests, AOT).

Inference API: `sample_actions` (prefill + flow), `generate` (prefill + greedy); the pieces for callers that drive
the decoding themselves (MolmoThink): `prefill`, `decode`, `greedy`, `actions_from_cache`.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from molmoact2_jax.models import encoder_mask as em
from molmoact2_jax.models import flow
from molmoact2_jax.models.action_expert import make_action_expert
from molmoact2_jax.models.backbone import Backbone
from molmoact2_jax.models.llm import flatten_heads
from molmoact2_jax.preprocessing.image import pooled_grid, pooling_index
from molmoact2_jax.token_layout import TokenLayout, expand_image_tokens


def _image_args(batch):
    if batch.get("images") is None:
        return {}
    return dict(images=batch["images"], pooled_idx=batch["pooled_idx"])


class MolmoAct2:
    def __init__(self, cfg):
        self.cfg = ml_collections.FrozenConfigDict(cfg)
        self.backbone = Backbone(self.cfg)
        self.expert = make_action_expert(self.cfg) if self.cfg.use_action_expert else None

    # ---- inputs
    def image_tokens(self) -> int:
        """Pooled image tokens (<im_patch> slots) per camera image."""
        v = self.cfg.vit
        g = pooled_grid(v.image_size, v.patch_size, self.cfg.connector.pool_size)
        return g[0] * g[1]

    def inputs_spec(self, batch_size: int = 1, seq_len: int | None = None, num_images: int = 1,
                    training: bool = False) -> dict:
        """{field: jax.ShapeDtypeStruct} of a batch (module docstring). `training` adds the loss fields."""
        v, ae = self.cfg.vit, self.cfg.action_expert
        b, n = int(batch_size), int(num_images)
        t = int(seq_len or self.image_tokens() * n + 2 * n + 8)
        patches = (v.image_size // v.patch_size) ** 2
        sds = jax.ShapeDtypeStruct
        spec = dict(input_ids=sds((b, t), jnp.int32), attention_mask=sds((b, t), jnp.bool_))
        if n:
            spec.update(images=sds((b, n, patches, v.patch_size * v.patch_size * 3), jnp.float32),
                        pooled_idx=sds((b, n * self.image_tokens(), self.cfg.connector.pool_size ** 2), jnp.int32))
        if training:
            h, d = ae.max_action_horizon, ae.max_action_dim
            spec.update(target_ids=sds((b, t), jnp.int32), loss_mask=sds((b, t), jnp.float32),
                        actions=sds((b, h, d), jnp.float32), action_dim_valid=sds((b, d), jnp.bool_),
                        horizon_valid=sds((b, h), jnp.bool_), has_actions=sds((b,), jnp.bool_))
        return spec

    def fake_batch(self, batch_size: int = 1, seq_len: int | None = None, num_images: int = 1,
                   training: bool = False, seed: int = 0, abstract_arrays: bool = False) -> dict:
        """A consistent numpy batch of `inputs_spec`'s shapes: BOS, each image's token block, then text tokens
        (all valid); random patches in [-1, 1] with the real pooling index; random targets / actions.
        `abstract_arrays`: pixels and actions stay ShapeDtypeStructs (nothing allocated; token ids and masks are
        still concrete, so FLOP counts over the masks can be taken, as molmoact2-compile does)."""
        spec = self.inputs_spec(batch_size, seq_len, num_images, training)
        b, t = spec["input_ids"].shape
        tok, rng = self.cfg.tokens, np.random.default_rng(seed)
        layout, v = TokenLayout.from_model_tokens(tok), self.cfg.vit
        grid = pooled_grid(v.image_size, v.patch_size, self.cfg.connector.pool_size)
        row = expand_image_tokens([layout.eos] + [layout.image_placeholder] * num_images, layout,
                                  [grid] * num_images)
        if len(row) > t:
            raise ValueError(f"seq_len={t} is shorter than the {len(row)} tokens of {num_images} image(s)")
        ids = np.asarray(rng.integers(2, min(200, tok.base_vocab), (b, t)), np.int32)
        ids[:, :len(row)] = row
        out = dict(input_ids=ids, attention_mask=np.ones((b, t), bool))
        if num_images:
            out["images"] = spec["images"] if abstract_arrays else \
                rng.uniform(-1, 1, spec["images"].shape).astype(np.float32)
            one = pooling_index(v.image_size // v.patch_size, v.image_size // v.patch_size,
                                self.cfg.connector.pool_size)
            p = spec["images"].shape[2]
            idx = np.concatenate([np.where(one >= 0, one + j * p, -1) for j in range(num_images)])
            out["pooled_idx"] = np.broadcast_to(idx, spec["pooled_idx"].shape).astype(np.int32)
        if training:
            out["target_ids"] = np.concatenate([ids[:, 1:], np.full((b, 1), -1, np.int32)], 1)
            out["loss_mask"] = np.zeros((b, t), np.float32)
            out["loss_mask"][:, len(row):-1] = 1.0
            out["actions"] = spec["actions"] if abstract_arrays else \
                rng.uniform(-1, 1, spec["actions"].shape).astype(np.float32)
            out["action_dim_valid"] = np.ones(spec["action_dim_valid"].shape, bool)
            out["horizon_valid"] = np.ones(spec["horizon_valid"].shape, bool)
            out["has_actions"] = np.ones((b,), bool)
        return out

    def check_batch(self, batch) -> None:
        """Shape and dtype checks at the model's input boundary (traced or concrete arrays)."""
        ids = batch["input_ids"]
        chex.assert_rank(ids, 2)
        chex.assert_type(ids, int)
        if batch.get("attention_mask") is not None:
            chex.assert_equal_shape([ids, batch["attention_mask"]])
        if batch.get("actions") is not None:
            ae = self.cfg.action_expert
            chex.assert_rank(batch["actions"], 3)
            chex.assert_axis_dimension(batch["actions"], 0, ids.shape[0])
            chex.assert_axis_dimension(batch["actions"], 2, ae.max_action_dim)
            if batch.get("action_dim_valid") is not None:
                chex.assert_shape(batch["action_dim_valid"], (ids.shape[0], ae.max_action_dim))

    # ---- parameters
    def init(self, rng, batch=None):
        """Boxed (logically annotated) params for `batch`'s shapes (default: `fake_batch()`)."""
        batch = self.fake_batch() if batch is None else batch
        k1, k2 = jax.random.split(rng)
        params = {"backbone": self.backbone.init(k1, batch["input_ids"], **_image_args(batch))["params"]}
        if self.expert is not None:
            b, t = batch["input_ids"].shape
            c, layers = self.cfg.action_expert.context_dim, self.cfg.llm.num_layers
            ae = self.cfg.action_expert
            x = jnp.zeros((b, ae.max_action_horizon, ae.max_action_dim), jnp.float32)
            ctx = jnp.zeros((layers, b, t, c), jnp.float32)
            params["action_expert"] = self.expert.init(k2, x, jnp.zeros((b,)), ctx, ctx,
                                                       jnp.ones((b, t), bool))["params"]
        return params

    # ---- pieces
    def context(self, params, batch):
        """One backbone pass: (logits [B,T,V], K, V [L,B,T,C], encoder mask [B,T], depth positions or None)."""
        self.check_batch(batch)
        out = self.backbone.apply({"params": params["backbone"]}, batch["input_ids"], **_image_args(batch),
                                  attention_mask=batch.get("attention_mask"), position_ids=batch.get("position_ids"),
                                  segment_ids=batch.get("segment_ids"))
        attn = batch.get("attention_mask")
        seg, ex = batch.get("segment_ids"), batch.get("action_segment")
        if seg is None or ex is None:
            seg = ex = None
        enc = em.encoder_attention_mask(batch["input_ids"], attn, self.cfg.tokens, self.cfg.action_mode, seg, ex)
        depth = em.depth_positions(batch["input_ids"], enc, self.cfg.tokens) if self.cfg.action_expert.depth_gate \
            else None
        return out["logits"], flatten_heads(out["keys"]), flatten_heads(out["values"]), enc, depth

    # ---- training
    def compute_loss(self, params, batch, rng):
        """Weighted sum of next-token CE (+ z-loss) and the flow-matching loss, with per-term metrics."""
        w = self.cfg.loss
        logits, k, v, enc, depth = self.context(params, batch)
        metrics = {}
        total = jnp.zeros((), jnp.float32)
        if "target_ids" in batch and w.ce_weight:
            target = batch["target_ids"]
            in_vocab = (target >= 0) & (target < logits.shape[-1])  # the LM head cannot emit the extra tokens
            mask = batch["loss_mask"].astype(jnp.float32) * in_vocab
            n = jnp.maximum(mask.sum(), 1.0)
            lse = jax.nn.logsumexp(logits, axis=-1)
            tgt = jnp.take_along_axis(logits, jnp.where(in_vocab, target, 0)[..., None], -1)[..., 0]
            ce = jnp.sum((lse - tgt) * mask) / n
            z = jnp.sum(jnp.square(lse) * mask) / n
            total = total + w.ce_weight * ce + w.z_loss_weight * z
            hit = jnp.argmax(logits, -1) == batch["target_ids"]
            acc = jnp.sum(hit * mask) / n
            metrics.update(ce_loss=ce, z_loss=z, token_accuracy=acc, loss_tokens=mask.sum())
            # The same CE split by what is predicted, so a Think run shows its depth reasoning being learned.
            tok = self.cfg.tokens
            for name, start, count in (("depth", tok.depth_token_start, tok.num_depth_tokens),
                                       ("action", tok.action_token_start, tok.num_action_tokens)):
                part = mask * ((target >= start) & (target < start + count))
                m = jnp.maximum(part.sum(), 1.0)
                metrics[f"{name}_ce"] = jnp.sum((lse - tgt) * part) / m
                metrics[f"{name}_token_accuracy"] = jnp.sum(hit * part) / m
                metrics[f"{name}_tokens"] = part.sum()
        if self.expert is not None and "actions" in batch and w.flow_weight:
            fl, fm = flow.flow_matching_loss(
                self.expert, params["action_expert"], batch["actions"], batch["action_dim_valid"],
                batch["horizon_valid"], k, v, enc, rng, depth_positions=depth,
                example_weight=batch.get("has_actions"))
            total = total + w.flow_weight * fl
            metrics.update(fm)
        metrics["total_loss"] = total
        return total, metrics

    # ---- inference
    def sample_actions(self, params, batch, *, rng=None, noise=None, num_steps=None, horizon=None, guidance=None):
        """Prefills once, projects the context once, runs the Euler loop in one `fori_loop`.
        `noise`: explicit starting noise, (horizon, 32) per example -> [B, H, 32]; `guidance`: real-time chunking
        towards a previous chunk (`models.rtc.make_guidance`)."""
        if self.expert is None:
            raise ValueError("config.model.use_action_expert is False: this model has no flow head")
        _, k, v, enc, depth = self.context(params, batch)
        return flow.sample_actions(self.expert, params["action_expert"], k, v, enc,
                                   action_dim_valid=batch.get("action_dim_valid"), noise=noise, rng=rng,
                                   num_steps=num_steps, horizon=horizon, depth_positions=depth, guidance=guidance)

    def prefill(self, params, batch, cache_size: int | None = None):
        """The prompt through the backbone into a KV cache with room for `cache_size` tokens in all.
        Returns (logits [B, T, V], cache)."""
        self.check_batch(batch)
        return self.backbone.apply({"params": params["backbone"]}, batch["input_ids"], **_image_args(batch),
                                   attention_mask=batch.get("attention_mask"), cache_size=cache_size,
                                   method=Backbone.prefill)

    def decode(self, params, tokens, cache):
        """Feeds tokens [B, t] after the cached ones (causal). Returns (logits [B, t, V], cache)."""
        return self.backbone.apply({"params": params["backbone"]}, tokens, cache, method=Backbone.decode)

    def greedy(self, params, cache, logits, max_new_tokens: int, stop_id=None):
        """Greedy decoding from `logits` [B, V] (those after the last fed token): every chosen token is fed, the
        stop token too (so the cache holds it), until each row has stopped or `max_new_tokens`.
        Returns (tokens [B, max_new_tokens] int32, -1 after the stop token; count [B]; cache; logits [B, V])."""
        stop = jnp.asarray(self.cfg.tokens.eos_token_id if stop_id is None else stop_id, jnp.int32)
        b = logits.shape[0]
        out = jnp.full((b, max_new_tokens), -1, jnp.int32)

        def cond(s):
            i, _, _, _, done = s
            return (i < max_new_tokens) & ~jnp.all(done)

        def body(s):
            i, cache, logits, out, done = s
            tok = jnp.argmax(logits, -1).astype(jnp.int32)
            out = out.at[:, i].set(jnp.where(done, -1, tok))
            new_logits, cache = self.decode(params, jnp.where(done, stop, tok)[:, None], cache)
            return i + 1, cache, new_logits[:, -1], out, done | (tok == stop)

        state = (jnp.asarray(0), cache, logits, out, jnp.zeros((b,), bool))
        _, cache, logits, out, _ = jax.lax.while_loop(cond, body, state)
        return out, jnp.sum(out >= 0, axis=-1), cache, logits

    def generate(self, params, batch, max_new_tokens: int, cache_size: int | None = None):
        """Greedy decoding with the KV cache (discrete actions / depth codes), stopping per row at EOS.
        Returns (tokens [B, max_new_tokens] int32 with -1 after EOS, number generated [B])."""
        t = batch["input_ids"].shape[1]
        logits, cache = self.prefill(params, batch, cache_size or (t + max_new_tokens))
        out, count, _, _ = self.greedy(params, cache, logits[:, -1], max_new_tokens)
        return out, count

    def actions_from_cache(self, params, cache, slot_ids, *, noise, action_dim_valid=None, num_steps=None,
                           guidance=None):
        """The flow expert on a KV cache (prompt + generated tokens, e.g. MolmoThink's depth codes).
        slot_ids: int [B, cache_size], the token in each cache slot (pad where unused); the encoder mask and
        depth positions are computed from them and the cache's validity. Returns actions [B, H, max_action_dim]."""
        if self.expert is None:
            raise ValueError("config.model.use_action_expert is False: this model has no flow head")
        cfg = self.cfg
        k, v = flatten_heads(cache["keys"]), flatten_heads(cache["values"])
        enc = em.encoder_attention_mask(slot_ids, cache["valid"], cfg.tokens, cfg.action_mode)
        depth = em.depth_positions(slot_ids, enc, cfg.tokens) if cfg.action_expert.depth_gate else None
        return flow.sample_actions(self.expert, params["action_expert"], k, v, enc,
                                   action_dim_valid=action_dim_valid, noise=noise, num_steps=num_steps,
                                   depth_positions=depth, guidance=guidance)
