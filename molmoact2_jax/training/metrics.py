"""What a run reports: WORKDIR/metrics.jsonl (one JSON object per step), TensorBoard event files (both on process
0) and WORKDIR/run_info.json (cluster, mesh, parameter and state bytes, compiled memory, FLOPs per step, goodput,
and `resolved`: the config fields the run decided at start-up, with where its assets came from).

WORKDIR may be a bucket. Object storage has no append, so metrics.jsonl is appended in a local file (a temporary
folder on this host) and the whole file is uploaded as one object: every `upload_every_s` seconds, at every
checkpoint save and at the end (as MaxText uploads its metrics). On a local WORKDIR the file is appended in place
and flushed every step. TensorBoard writes to the bucket through tensorboardX's own GCS writer (the `gcs` extra).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

from molmoact2_jax import storage


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when it is installed (only
    to accept torch tensors, which we never pass), 1.5 s and ~300 MB in every training process. Marking torch
    unimportable for that one import makes tensorboardX take its numpy path; torch stays importable afterwards."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter  # lazy: see the docstring
        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter  # lazy: see the docstring
    finally:
        del sys.modules["torch"]
    return SummaryWriter

METRICS_FILE = "metrics.jsonl"
RUN_INFO_FILE = "run_info.json"


class MetricWriter:
    """JSONL + TensorBoard on process 0; no-ops elsewhere."""

    def __init__(self, workdir: str, resume_step: int = 0, upload_every_s: float = 60.0):
        self.primary = jax.process_index() == 0
        self.jsonl = None
        self.tb = None
        self.remote = storage.is_remote(workdir)
        self.target = storage.as_path(workdir) / METRICS_FILE
        self.upload_every_s = upload_every_s
        self._last_upload = time.monotonic()
        self._staging = None
        if not self.primary:
            return
        if self.remote:
            self._staging = tempfile.mkdtemp(prefix="molmoact2-metrics-")
            self.path = os.path.join(self._staging, METRICS_FILE)
            if self.target.exists():
                with self.target.open("rb") as src, open(self.path, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        else:
            self.path = str(self.target)
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        _truncate_metrics(self.path, resume_step)
        self.jsonl = open(self.path, "a")
        self.tb = _summary_writer_class()(str(storage.as_path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict):
        if not self.primary:
            return
        row = {"step": int(step), **{k: _py(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, step)
        if self.remote and time.monotonic() - self._last_upload >= self.upload_every_s:
            self.upload()

    def upload(self):
        """A remote WORKDIR's metrics.jsonl replaced by the whole local file (one object write)."""
        if not (self.primary and self.remote):
            return
        self.jsonl.flush()
        storage.upload_file(self.path, self.target)
        self._last_upload = time.monotonic()

    def close(self):
        if self.primary:
            self.jsonl.close()
            self.tb.close()
            if self.remote:
                storage.upload_file(self.path, self.target)
                shutil.rmtree(self._staging, ignore_errors=True)


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


def write_run_info(workdir: str, setup, state, cluster: dict | None = None, resolved: dict | None = None) -> None:
    """`resolved`: what run_setup.prepare decided (its DataPlan's `resolved` fields, asset origins and notes)."""
    info = {"mesh": {k: int(v) for k, v in setup.mesh.shape.items()}, "devices": jax.device_count(),
            "processes": jax.process_count(), "cluster": cluster or {}, "resolved": resolved or {},
            "attention": setup.attention_impl(),
            "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "params": state_bytes(state.params), "params_and_optimizer": state_bytes((state.params,
                                                                                       state.opt_state))}
    storage.write_text(storage.as_path(workdir) / RUN_INFO_FILE, json.dumps(info, indent=2))


def update_run_info(workdir: str, fields: dict) -> None:
    path = storage.as_path(workdir) / RUN_INFO_FILE
    info = json.loads(path.read_text())
    info.update(fields)
    storage.write_text(path, json.dumps(info, indent=2))


class Goodput:
    """Where a run's wall time went: train steps, waiting for data, compiling, saving and restoring checkpoints,
    evaluation; the rest (start-up, logging) is `other_s`. `step_fraction` is the share spent in train steps, the
    run's goodput as MaxText reports it. Times are this process's (process 0 writes them)."""

    KINDS = ("step", "data_wait", "compile", "checkpoint_save", "checkpoint_restore", "eval")

    def __init__(self):
        self.start = time.perf_counter()
        self.seconds = {k: 0.0 for k in self.KINDS}

    def add(self, kind: str, seconds: float) -> None:
        self.seconds[kind] += seconds

    def timed(self, kind: str):
        return _Timer(self, kind)

    def report(self) -> dict:
        wall = time.perf_counter() - self.start
        out = {f"{k}_s": round(v, 4) for k, v in self.seconds.items()}
        out["wall_s"] = round(wall, 4)
        out["other_s"] = round(max(wall - sum(self.seconds.values()), 0.0), 4)
        out["step_fraction"] = round(self.seconds["step"] / wall, 4) if wall > 0 else 0.0
        return out


class _Timer:
    def __init__(self, goodput: Goodput, kind: str):
        self.goodput, self.kind = goodput, kind

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.goodput.add(self.kind, self.seconds)
