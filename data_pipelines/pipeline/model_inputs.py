"""Example -> model inputs: prompt tokens (with image blocks), optional discrete action answer, and
image patches. Wires in molmoact2_jax's TextTokenizer, preprocess_images and OpenFAST.

Token features are aligned with input_ids: `loss_mask[i] = 1` when token i is an answer token the
LM must predict (the trainer shifts). Robot examples in "continuous" action_format are prompt-only
(no LM loss, spec 4.3); "both"/"discrete" append <action_start> OpenFAST tokens <action_end> EOS.
"""
from __future__ import annotations

import numpy as np

from data_pipelines.errors import DataError


class ModelInputs:
    def __init__(self, tokenizer, *, seq_len: int | None, image_size: int = 378, patch: int = 14, pool: int = 2,
                 openfast=None, action_format: str = "continuous", use_col_tokens: bool = False,
                 keep_uint8_images: bool = False):
        if action_format not in ("continuous", "discrete", "both"):
            raise ValueError(f"action_format must be continuous, discrete or both, got {action_format!r}")
        if action_format != "continuous" and openfast is None:
            raise ValueError(f"action_format={action_format!r} needs an OpenFAST tokenizer")
        self.tok, self.openfast, self.action_format = tokenizer, openfast, action_format
        self.seq_len, self.image_size, self.patch, self.pool = seq_len, image_size, patch, pool
        self.use_col_tokens, self.keep_uint8_images = use_col_tokens, keep_uint8_images
        g = -(-(image_size // patch) // pool)
        self.grid = (g, g)
        backend = getattr(tokenizer, "backend", None)
        pad = backend.token_to_id("<|endoftext|>") if hasattr(backend, "token_to_id") else None
        self.pad_id = int(pad) if pad is not None else 0

    def tokens(self, ex: dict) -> tuple[np.ndarray, np.ndarray]:
        n_img = int(np.asarray(ex["image_mask"]).sum())
        ids = self.tok.encode_prompt(str(ex["prompt"]), image_grids=[self.grid] * n_img,
                                     use_col_tokens=self.use_col_tokens)
        loss = [0] * len(ids)
        if self.action_format != "continuous":
            L = self.tok.layout
            H = int(ex["action_horizon"])
            chunk = np.asarray(ex["actions"])[:H, ~np.asarray(ex["action_dim_is_pad"])]
            bpe = self.openfast.encode(chunk[None])[0]
            answer = [L.action_start] + [L.action_token(int(k)) for k in bpe] + [L.action_end, L.eos]
            ids, loss = ids + answer, loss + [1] * len(answer)
        return np.asarray(ids, np.int32), np.asarray(loss, np.float32)

    def __call__(self, ex: dict) -> dict:
        from molmoact2_jax.preprocessing.image import preprocess_images
        ex = dict(ex)
        ids, loss = self.tokens(ex)
        if self.seq_len is not None:
            if len(ids) > self.seq_len:
                raise DataError(f"{len(ids)} tokens exceed seq_len {self.seq_len}", episode=ex.get("episode_id"),
                                key="seq_len")
            pad = self.seq_len - len(ids)
            ex["token_mask"] = np.arange(self.seq_len) < len(ids)
            ids = np.concatenate([ids, np.full(pad, self.pad_id, np.int32)])
            loss = np.concatenate([loss, np.zeros(pad, np.float32)])
        ex["input_ids"], ex["loss_mask"] = ids, loss
        mask = np.asarray(ex["image_mask"])
        images = np.asarray(ex["images"])
        patches, pooled = preprocess_images(list(images[mask]), self.image_size, self.patch, self.pool)
        n_max, n_tok = len(mask), pooled.shape[0] // max(1, mask.sum())
        ex["image_patches"] = np.zeros((n_max,) + patches.shape[1:], np.float32)
        ex["image_patches"][: len(patches)] = patches
        ex["pooled_idx"] = np.full((n_max * n_tok, pooled.shape[1]), -1, np.int32)
        ex["pooled_idx"][: len(pooled)] = pooled
        if not self.keep_uint8_images:
            del ex["images"]
        return ex
