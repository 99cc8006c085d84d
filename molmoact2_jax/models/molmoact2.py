"""MolmoAct2 = backbone + flow-matching action expert reading the backbone's per-layer K/V (spec 1, 9-11, 15).

Params tree: {"backbone": {"vit", "connector", "llm"}, "action_expert": {...}} (the expert is absent when
`model.use_action_expert` is False, i.e. the discrete-only Pretrain model).

Training batch (numpy or jax arrays; B examples, T tokens, H = max_action_horizon, D = max_action_dim):
  input_ids [B,T] int32, attention_mask [B,T] bool, optional position_ids / segment_ids [B,T],
  images [B,N,P,588] + pooled_idx [B,Nt,4] (optional),
  target_ids [B,T] int32 (next token at each position, -1 none) + loss_mask [B,T] float (CE weights),
  actions [B,H,D] + action_dim_valid [B,D] + horizon_valid [B,H] + has_actions [B] (flow loss),
  optional action_segment [B] (packed rows: the segment the action chunk belongs to).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from molmoact2_jax.models import encoder_mask as em
from molmoact2_jax.models import flow
from molmoact2_jax.models.action_expert import make_action_expert
from molmoact2_jax.models.backbone import Backbone
from molmoact2_jax.models.llm import flatten_heads


def _image_args(batch):
    if batch.get("images") is None:
        return {}
    return dict(images=batch["images"], pooled_idx=batch["pooled_idx"])


class MolmoAct2:
    def __init__(self, cfg):
        self.cfg = ml_collections.FrozenConfigDict(cfg)
        self.backbone = Backbone(self.cfg)
        self.expert = make_action_expert(self.cfg) if self.cfg.use_action_expert else None

    # ---- parameters
    def init(self, rng, batch):
        """Boxed (logically annotated) params for `batch`'s shapes."""
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
            acc = jnp.sum((jnp.argmax(logits, -1) == batch["target_ids"]) * mask) / n
            metrics.update(ce_loss=ce, z_loss=z, token_accuracy=acc, loss_tokens=mask.sum())
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
    def sample_actions(self, params, batch, *, rng=None, noise=None, num_steps=None, horizon=None):
        """Prefills once, projects the context once, runs the Euler loop in one `fori_loop`.
        `noise`: explicit starting noise, (horizon, 32) per example -> [B, H, 32]."""
        if self.expert is None:
            raise ValueError("config.model.use_action_expert is False: this model has no flow head")
        _, k, v, enc, depth = self.context(params, batch)
        return flow.sample_actions(self.expert, params["action_expert"], k, v, enc,
                                   action_dim_valid=batch.get("action_dim_valid"), noise=noise, rng=rng,
                                   num_steps=num_steps, horizon=horizon, depth_positions=depth)

    def generate(self, params, batch, max_new_tokens: int, cache_size: int | None = None):
        """Greedy decoding with the KV cache (discrete actions / depth codes), stopping per row at EOS.
        Returns (tokens [B, max_new_tokens] int32 with -1 after EOS, number generated [B])."""
        ids = batch["input_ids"]
        b, t = ids.shape
        size = cache_size or (t + max_new_tokens)
        variables = {"params": params["backbone"]}
        logits, cache = self.backbone.apply(variables, ids, **_image_args(batch),
                                            attention_mask=batch.get("attention_mask"), cache_size=size,
                                            method=Backbone.prefill)
        eos = self.cfg.tokens.eos_token_id
        first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
        out = jnp.full((b, max_new_tokens), -1, jnp.int32).at[:, 0].set(first)

        def cond(s):
            i, _, _, done, _ = s
            return (i < max_new_tokens) & ~jnp.all(done)

        def body(s):
            i, cache, out, done, last = s
            logits, cache = self.backbone.apply(variables, last[:, None], cache, method=Backbone.decode)
            nxt = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
            nxt = jnp.where(done, -1, nxt)
            return i + 1, cache, out.at[:, i].set(nxt), done | (nxt == eos), nxt

        state = (jnp.asarray(1), cache, out, first == eos, first)
        _, _, out, _, _ = jax.lax.while_loop(cond, body, state)
        count = jnp.sum(out >= 0, axis=-1)
        return out, count
