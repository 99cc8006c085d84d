"""PyTorch forward of a full MolmoAct2 HF folder (tests / optional; needs torch + transformers).

Backbone: `transformers.Molmo2ForConditionalGeneration`, loaded straight from the MolmoAct2 folder's own
safetensors (a scratch folder holds a transformers-spelling config.json and links to the shards; the expert keys
and the RoPE buffer are left unused). Expert: `torch_ref.action_expert.ActionExpertRef` on the
`model.action_expert.*` tensors. Between them, written from docs/model_notes.md: prefill -> per-layer K (after
k-norm and RoPE, read from the KV cache) and V -> encoder mask -> Euler flow from given noise.
Depth-gated (Think) checkpoints are not covered.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch

from molmoact2_jax.convert.molmo2_config import hf_config_from_model
from molmoact2_jax.convert.molmoact2_config import molmoact2_config_from_hf
from molmoact2_jax.convert.safetensors_io import INDEX, SafetensorsReader
from molmoact2_jax.convert.torch_ref.action_expert import ActionExpertRef

EXPERT = "model.action_expert."


def encoder_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens, action_mode: str) -> torch.Tensor:
    """The encoder mask: the prompt mask; in "both" mode also hide every EOS and each <action_start>..<action_end> span
    (inclusive; an unmatched start runs to the end of the row)."""
    mask = attention_mask.bool().clone()
    if action_mode != "both":
        return mask
    mask &= input_ids != tokens.eos_token_id
    for b in range(input_ids.shape[0]):
        inside = False
        for p in range(input_ids.shape[1]):
            tok = int(input_ids[b, p])
            if tok == tokens.action_start:
                inside = True
            if inside:
                mask[b, p] = False
            if tok == tokens.action_end:
                inside = False
    return mask


class MolmoAct2Torch:
    def __init__(self, folder: str, attn_implementation: str = "eager"):
        """`attn_implementation`: "eager" (the bit-comparable path of the tests) or "sdpa" (what transformers
        runs by default, for benchmarks)."""
        from transformers import Molmo2ForConditionalGeneration  # optional: transformers (test extra)

        with open(os.path.join(folder, "config.json")) as f:
            self.hf_config = json.load(f)
        self.cfg = molmoact2_config_from_hf(self.hf_config, os.path.join(folder, "config.json"),
                                            os.path.join(folder, "tokenizer.json"))
        if self.cfg.action_expert.depth_gate:
            raise NotImplementedError("torch reference: depth-gated checkpoints are not supported")
        self._scratch = tempfile.TemporaryDirectory(prefix="molmoact2_torch_")
        scratch = self._scratch.name
        with open(os.path.join(scratch, "config.json"), "w") as f:
            json.dump(hf_config_from_model(self.cfg), f)
        for name in os.listdir(folder):
            if name.endswith(".safetensors") or name == INDEX:
                os.symlink(os.path.abspath(os.path.join(folder, name)), os.path.join(scratch, name))
        self.backbone = Molmo2ForConditionalGeneration.from_pretrained(
            scratch, attn_implementation=attn_implementation, dtype=torch.float32).float().eval()

        reader = SafetensorsReader(folder)
        self.expert = ActionExpertRef.from_config(self.cfg.action_expert).float().eval()
        state = {k[len(EXPERT):]: torch.from_numpy(np.asarray(reader[k], np.float32).copy())
                 for k in reader.keys() if k.startswith(EXPERT)}
        self.expert.load_state_dict(state, strict=True)

    @torch.no_grad()
    def prefill(self, **hf_inputs):
        """transformers inputs -> (logits [B,T,V], K, V [L, B, T, Hkv*hd]); K after k-norm and RoPE."""
        out = self.backbone(**hf_inputs, use_cache=True)
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.past_key_values
        ks, vs = [], []
        for layer in cache.layers:
            b, h, t, d = layer.keys.shape
            ks.append(layer.keys.transpose(1, 2).reshape(b, t, h * d))
            vs.append(layer.values.transpose(1, 2).reshape(b, t, h * d))
        return out.logits, torch.stack(ks), torch.stack(vs)

    @torch.no_grad()
    def sample_actions(self, noise: torch.Tensor, action_dim_valid: torch.Tensor | None = None,
                       num_steps: int | None = None, **hf_inputs):
        """Euler flow from `noise` [B, H, D]: x <- x + v/N with t = k/N, pad dims zeroed.
        Returns (actions [B, H, D], logits)."""
        logits, k, v = self.prefill(**hf_inputs)
        enc = encoder_mask(hf_inputs["input_ids"], hf_inputs["attention_mask"], self.cfg.tokens,
                           self.cfg.action_mode)
        n = int(num_steps or self.cfg.flow.num_steps)
        x = noise.float()
        dim = torch.ones(x.shape[-1]) if action_dim_valid is None else action_dim_valid.float()
        dim = dim.reshape(-1, 1, x.shape[-1]) if dim.ndim == 2 else dim.reshape(1, 1, -1)
        x = x * dim
        ctx = self.expert.project_context(k, v)
        for step in range(n):
            t = torch.full((x.shape[0],), np.float32(step / n), dtype=torch.float32)
            c = self.expert.time_embed(t)
            h = self.expert.action_embed(x)
            for blk, (kc, vc) in zip(self.expert.blocks, ctx):
                h = blk(h, c, kc, vc, enc, None)
            vel = self.expert.final_layer(h, c) * dim
            x = (x + (1.0 / n) * vel) * dim
        return x, logits
