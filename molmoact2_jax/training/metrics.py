"""What a run reports: WORKDIR/metrics.jsonl (one JSON object per step), TensorBoard event files (both on process
0) and WORKDIR/run_info.json (mesh, parameter and state bytes, compiled memory, FLOPs per step)."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from tensorboardX import SummaryWriter


class MetricWriter:
    """JSONL + TensorBoard on process 0; no-ops elsewhere."""

    def __init__(self, workdir: str, resume_step: int = 0):
        self.primary = jax.process_index() == 0
        self.jsonl = None
        self.tb = None
        if self.primary:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            _truncate_metrics(path, resume_step)
            self.jsonl = open(path, "a")
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict):
        if not self.primary:
            return
        row = {"step": int(step), **{k: _py(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, step)

    def close(self):
        if self.primary:
            self.jsonl.close()
            self.tb.close()


def _truncate_metrics(path: str, keep_upto: int):
    """After a crash the rows past the restored step are recomputed: drop them so each step appears once."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip()]
    kept = []
    for line in rows:
        try:
            if json.loads(line)["step"] <= keep_upto:
                kept.append(line)
        except (ValueError, KeyError):
            continue  # a torn last line from a killed process
    if len(kept) != len(rows):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)


def _py(v):
    v = np.asarray(v)
    return bool(v) if v.dtype == bool else (int(v) if np.issubdtype(v.dtype, np.integer) else float(v))


def state_bytes(state) -> dict:
    """Total bytes of params/optimizer state and the most any single device holds."""
    per_device: dict = {}
    total = 0
    for x in jax.tree.leaves(state):
        total += x.nbytes
        for shard in x.addressable_shards:
            per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
    return {"total_bytes": int(total), "max_bytes_per_device": int(max(per_device.values()))}


def write_run_info(workdir: str, setup, state) -> None:
    info = {"mesh": {k: int(v) for k, v in setup.mesh.shape.items()}, "devices": jax.device_count(),
            "processes": jax.process_count(),
            "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "params": state_bytes(state.params), "params_and_optimizer": state_bytes((state.params,
                                                                                       state.opt_state))}
    with open(os.path.join(workdir, "run_info.json"), "w") as f:
        json.dump(info, f, indent=2)


def update_run_info(workdir: str, fields: dict) -> None:
    path = os.path.join(workdir, "run_info.json")
    with open(path) as f:
        info = json.load(f)
    info.update(fields)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, path)
