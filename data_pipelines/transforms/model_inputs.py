"""Prompt + images -> model inputs: prompt tokens (with image blocks), an optional discrete action answer, and
image patches. The same object serves a training example (`__call__`, right-padded to `seq_len`) and a live
observation (`prompt_ids` / `image_inputs`, which `Policy` left-pads to its bucket), so the two cannot drift.

Token features are aligned with input_ids: `loss_mask[i] = 1` when token i is an answer token the LM must predict
(the trainer shifts). Robot examples in "continuous" action_format are prompt-only (no LM loss);
"both"/"discrete" append <action_start> OpenFAST tokens <action_end> EOS. Think styles (an example's `style`,
transforms/think_styles.py) put the depth span `<depth_start>` codes `<depth_end>` first: robot_depth ends it with
EOS; robot_depth_action follows it with the action answer (none in "continuous": the expert reads the depth K/V).
"""
from __future__ import annotations

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.transforms import think_styles
from molmoact2_jax.preprocessing.image import pooled_grid, preprocess_images

ACTION_FORMATS = ("continuous", "discrete", "both")


class ModelInputs:
    def __init__(self, tokenizer, *, seq_len: int | None, image_size: int = 378, patch: int = 14, pool: int = 2,
                 openfast=None, action_format: str = "continuous", use_col_tokens: bool = False,
                 keep_uint8_images: bool = False):
        if action_format not in ACTION_FORMATS:
            raise ValueError(f"action_format must be continuous, discrete or both, got {action_format!r}")
        if action_format != "continuous" and openfast is None:
            raise ValueError(f"action_format={action_format!r} needs an OpenFAST tokenizer")
        self.tok, self.openfast, self.action_format = tokenizer, openfast, action_format
        self.seq_len, self.image_size, self.patch, self.pool = seq_len, image_size, patch, pool
        self.use_col_tokens, self.keep_uint8_images = use_col_tokens, keep_uint8_images
        self.grid = pooled_grid(image_size, patch, pool)
        backend = getattr(tokenizer, "backend", None)
        pad = backend.token_to_id("<|endoftext|>") if hasattr(backend, "token_to_id") else None
        self.pad_id = int(pad) if pad is not None else 0

    @classmethod
    def for_model(cls, tokenizer, model_cfg, **kwargs) -> "ModelInputs":
        """Image geometry from a model config (`vit.image_size`, `vit.patch_size`, `connector.pool_size`)."""
        return cls(tokenizer, image_size=int(model_cfg.vit.image_size), patch=int(model_cfg.vit.patch_size),
                   pool=int(model_cfg.connector.pool_size), **kwargs)

    def prompt_ids(self, prompt: str, num_images: int) -> list[int]:
        """BOS + the prompt with each image placeholder expanded to its token block."""
        return self.tok.encode_prompt(str(prompt), image_grids=[self.grid] * int(num_images),
                                      use_col_tokens=self.use_col_tokens)

    def image_inputs(self, images) -> tuple[np.ndarray, np.ndarray]:
        """uint8 camera images of one example -> (patches [N, P, V] in [-1, 1], pooled_idx [N*Nt, pool*pool])."""
        return preprocess_images(list(images), self.image_size, self.patch, self.pool)

    def answer_ids(self, ex: dict) -> list[int]:
        """<action_start> OpenFAST tokens of the normalized chunk <action_end> EOS (discrete / both)."""
        L = self.tok.layout
        H = int(ex["action_horizon"])
        chunk = np.asarray(ex["actions"])[:H, ~np.asarray(ex["action_dim_is_pad"])]
        bpe = self.openfast.encode(chunk[None])[0]
        return [L.action_start] + [L.action_token(int(k)) for k in bpe] + [L.action_end, L.eos]

    def depth_ids(self, ex: dict) -> list[int]:
        """<depth_start> + the example's 100 depth codes + <depth_end> (Think styles)."""
        L = self.tok.layout
        try:
            return think_styles.depth_span(ex["depth_codes"], L.depth_start, L.depth_end, L.depth_token(0),
                                           L.num_depth_tokens)
        except (KeyError, ValueError) as e:
            raise DataError(f"style {ex.get('style')}: bad depth codes: {e}", episode=ex.get("episode_id"),
                            key="depth_codes") from None

    def tokens(self, ex: dict) -> tuple[np.ndarray, np.ndarray]:
        ids = self.prompt_ids(ex["prompt"], int(np.asarray(ex["image_mask"]).sum()))
        loss = [0] * len(ids)
        style = str(ex.get("style") or "robot_action")
        answer = []
        if style in think_styles.DEPTH_STYLES:
            answer = self.depth_ids(ex)
        if style == "robot_depth":
            answer.append(self.tok.layout.eos)
        elif self.action_format != "continuous":
            answer += self.answer_ids(ex)
        ids, loss = ids + answer, loss + [1] * len(answer)
        return np.asarray(ids, np.int32), np.asarray(loss, np.float32)

    def __call__(self, ex: dict) -> dict:
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
        patches, pooled = self.image_inputs(images[mask])
        n_max, n_tok = len(mask), pooled.shape[0] // max(1, mask.sum())
        ex["image_patches"] = np.zeros((n_max,) + patches.shape[1:], np.float32)
        ex["image_patches"][: len(patches)] = patches
        ex["pooled_idx"] = np.full((n_max * n_tok, pooled.shape[1]), -1, np.int32)
        ex["pooled_idx"][: len(pooled)] = pooled
        if not self.keep_uint8_images:
            del ex["images"]
        return ex
