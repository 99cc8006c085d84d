"""Pipeline batches -> the model's training batch: what both data sources (training/data_source.py's Grain pipeline
over shards, training/synthetic_data.py's generated task) hand the trainer."""
from __future__ import annotations

import numpy as np


def to_model_batch(b: dict) -> dict:
    """Pipeline batch (ModelInputs examples stacked; loss_mask aligned with the predicted token) -> model batch
    (targets shifted by one)."""
    ids = np.asarray(b["input_ids"], np.int32)
    valid = np.asarray(b.get("token_mask", ids >= 0), bool)
    ids = np.where(valid, ids, -1)
    target = np.full_like(ids, -1)
    target[:, :-1] = np.where(valid[:, 1:], ids[:, 1:], -1)
    loss = np.zeros(ids.shape, np.float32)
    loss[:, :-1] = np.asarray(b["loss_mask"], np.float32)[:, 1:]
    out = dict(input_ids=ids, attention_mask=valid, target_ids=target, loss_mask=loss,
               images=np.asarray(b["image_patches"], np.float32), pooled_idx=np.asarray(b["pooled_idx"], np.int32),
               actions=np.asarray(b["actions"], np.float32),
               action_dim_valid=~np.asarray(b["action_dim_is_pad"], bool),
               horizon_valid=~np.asarray(b["action_is_pad"], bool),
               has_actions=np.asarray(b["has_actions"], bool) if "has_actions" in b else np.ones(ids.shape[0], bool))
    return out
