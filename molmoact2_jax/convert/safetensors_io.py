"""Reading and writing (sharded) safetensors folders tensor by tensor, as Hugging Face lays them out."""
from __future__ import annotations

import json
import os

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

INDEX = "model.safetensors.index.json"


class SafetensorsReader:
    """Lazy mapping key -> numpy array over a HF folder (single file or sharded with an index)."""

    def __init__(self, folder: str):
        self.folder = folder
        index = os.path.join(folder, INDEX)
        if os.path.exists(index):
            with open(index) as f:
                self.where = dict(json.load(f)["weight_map"])
        else:
            files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
            if not files:
                raise FileNotFoundError(f"{folder}: no *.safetensors files")
            self.where = {}
            for name in files:
                with safe_open(os.path.join(folder, name), "np") as f:
                    self.where.update({k: name for k in f.keys()})
        self._open: dict = {}

    def keys(self):
        return self.where.keys()

    def __contains__(self, key):
        return key in self.where

    def __getitem__(self, key) -> np.ndarray:
        name = self.where[key]
        if name not in self._open:
            path = os.path.join(self.folder, name)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: listed in {INDEX} for {key!r} but missing")
            self._open[name] = safe_open(path, "np")
        return self._open[name].get_tensor(key)


def write_safetensors(folder: str, tensors, max_shard_bytes: int = 5 * 1024 ** 3, dtype=None,
                      metadata: dict | None = None) -> dict:
    """Streams (key, array) pairs into shards of at most `max_shard_bytes`; returns a summary.
    One shard is written as `model.safetensors`; several as `model-0000i-of-0000n.safetensors` plus the index.
    Shards are written under temporary names and renamed once all are complete."""
    os.makedirs(folder, exist_ok=True)
    shards, current, size, total, count = [], {}, 0, 0, 0

    def flush():
        nonlocal current, size
        if current:
            tmp = os.path.join(folder, f".shard-{len(shards):05d}.tmp")
            save_file(current, tmp, metadata={"format": "pt", **(metadata or {})})
            shards.append((tmp, list(current)))
            current, size = {}, 0

    for key, arr in tensors:
        arr = np.ascontiguousarray(arr if dtype is None else np.asarray(arr).astype(dtype))
        if current and size + arr.nbytes > max_shard_bytes:
            flush()
        current[key] = arr
        size += arr.nbytes
        total += arr.nbytes
        count += 1
    flush()
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for (tmp, keys), name in zip(shards, names):
        os.replace(tmp, os.path.join(folder, name))
        weight_map.update({k: name for k in keys})
    if n > 1:
        with open(os.path.join(folder, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return {"tensors": count, "bytes": total, "shards": n}
