"""Fault-tolerant training checkpoints: Orbax CheckpointManager under WORKDIR/checkpoints/<step>/.

Each step directory holds the items
  state/               TrainState (params, optimizer state, step, RNG key, bad-step counters), sharded arrays
  data/                the data iterator's state (JSON), so a resumed run sees exactly the remaining batches
  meta/                the run config (JSON) and run assets (norm stats, tokenizer files) by name
  assets/              a copy of WORKDIR/assets (norm_stats.json, tokenizer.json, openfast/), made once the step
                       has committed, so the step directory serves on its own (copied elsewhere, too)
so a step directory is self-describing (molmoact2_jax.checkpoint_io.params reads params + model config from it).

The directory can be local or a bucket (`gs://`, through molmoact2_jax.storage / etils epath, as Orbax uses).
Orbax commits a step atomically (a temp directory renamed on commit locally, a commit marker on object storage), so
a crash mid-save leaves no half-written step. Restores are agreed between processes: every process tries the same
step and all of them learn whether it restored everywhere; a step that failed on any process (truncated or corrupt
files, perhaps read by that process only) is moved aside to `checkpoints/<step>.corrupt-<time>` by process 0 with a
warning naming it, and every process tries the next older one. Retention keeps the
last `keep_last` steps plus every `keep_every`-th; Orbax deletes old steps only after the new one has committed.
"""
from __future__ import annotations

import json
import logging
import sys
import time
import uuid

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from molmoact2_jax import storage
from molmoact2_jax.checkpoint_io import params as params_io
from molmoact2_jax.sharding import distributed

log = logging.getLogger("molmoact2_jax.checkpointing")
JSON_ITEM_FILE = "metadata"   # the file Orbax's JsonSave writes inside an item directory (data/, meta/)


class Checkpointer:
    def __init__(self, workdir: str, ckpt_cfg, assets_dir: str | None = None):
        """`ckpt_cfg`: config.checkpoint (keep_last, keep_every: 0 = all / none; async_save)."""
        self.directory = storage.as_path(workdir) / "checkpoints"
        self.assets_dir = storage.as_path(assets_dir) if assets_dir else None
        self._assets_done: set = set()
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=int(ckpt_cfg.keep_last) or None,
            keep_period=int(ckpt_cfg.keep_every) or None,
            enable_async_checkpointing=bool(ckpt_cfg.async_save),
            create=True,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "data", "meta"), options=opts)

    def save(self, step: int, state, data_state: dict, config, assets: dict | None = None, force=False) -> bool:
        self._copy_assets()
        meta = {"config": json.loads(ml_collections.ConfigDict(config).to_json()),
                "assets": assets or {}, "saved_at": time.time()}
        saved = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(_jsonable(data_state)),
            meta=ocp.args.JsonSave(meta)), force=force)
        return saved

    def wait(self):
        self.manager.wait_until_finished()
        self._copy_assets()

    def _copy_assets(self):
        """Copies the run's assets into every committed step directory (process 0), so each step serves on its own.
        A step is only copied into after Orbax has committed it; the copy goes file by file and skips files already
        there, so one cut short (a crash) is finished by the next call."""
        if self.assets_dir is None or jax.process_index() != 0 or not self.assets_dir.is_dir():
            return
        for step in self.manager.all_steps():
            if step in self._assets_done:
                continue
            step_dir = self.directory / str(step)
            if step_dir.is_dir():
                storage.copy_tree(self.assets_dir, step_dir / "assets")
                self._assets_done.add(step)

    def all_steps(self):
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state):
        """Returns (step, state, data_state, meta) of the newest step that restores cleanly on every process, or
        None. Each process reads its shards of the same step with no cross-process barrier inside the read (Orbax's
        own restore ends in one: a process whose read failed would never reach it and would leave the others
        waiting there); then all agree (a host allgather) before any of them moves on, so a file only one process
        reads cannot leave the processes on different steps."""
        for step in reversed(self.all_steps()):
            error = None
            # Before the read, not after it failed: the first leftover reads finish while the exception is still
            # on its way out of Orbax.
            _quiet_failed_read(self.directory / str(step))
            try:
                restored = self._restore_here(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any read failure means this step is unusable
                error = e
            ok = distributed.all_agree(error is None)
            if all(ok):
                return restored
            self._quarantine(step, error, [i for i, good in enumerate(ok) if not good])
        return None

    def _restore_here(self, step: int, abstract_state):
        """This process's part of `step`: its shards of the train state (an Orbax restore whose barriers span this
        process only) and the data iterator state and meta (JSON written by process 0)."""
        step_dir = self.directory / str(step)
        params_io.check_item_complete(step_dir / "state")   # a partial copy: named, without entering Orbax
        here = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                                  active_processes={jax.process_index()})
        with ocp.Checkpointer(ocp.StandardCheckpointHandler(multiprocessing_options=here),
                              multiprocessing_options=here) as checkpointer:
            state = checkpointer.restore(step_dir / "state", args=ocp.args.StandardRestore(abstract_state))
        data = json.loads((step_dir / "data" / JSON_ITEM_FILE).read_text())
        meta = json.loads((step_dir / "meta" / JSON_ITEM_FILE).read_text())
        return step, state, data, meta

    def _quarantine(self, step: int, err: Exception | None, failed: list[int]):
        src = self.directory / str(step)
        dst = self.directory / f"{step}.corrupt-{int(time.time())}"
        if jax.process_index() == 0 and src.exists():
            storage.move_tree(src, dst)
        distributed.barrier(f"quarantine_{step}")
        why = (f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}" if err is not None
               else "restored here")
        log.warning("checkpoint %s is incomplete or corrupt (failed on process(es) %s; this process: %s); moved "
                    "aside to %s, trying an older one", src, failed, why, dst)
        self.manager.reload()

    def close(self):
        self.wait()
        self.manager.close()


class _FailedReadNoise(logging.Filter):
    """What a failed Orbax restore leaves behind, dropped: Orbax stops at the first unreadable array and closes the
    restore's asyncio loop while tensorstore's other reads of that step are still running. Each of those then calls
    into the closed loop when it finishes (a `RuntimeError: Event loop is closed` traceback per read, through
    sys.unraisablehook) and its future or task, never awaited, is logged by asyncio ("Future exception was never
    retrieved", "Task exception was never retrieved", naming the step's files). For a corrupt step that is hundreds
    of tracebacks after the one warning that matters (Checkpointer._quarantine's). Only those kinds are dropped: the
    hook passes every other unraisable exception on, and the filter only asyncio records that name a step directory
    whose restore failed."""

    def __init__(self):
        super().__init__()
        self.paths: set[str] = set()
        self._next_hook = sys.unraisablehook
        sys.unraisablehook = self._hook
        logging.getLogger("asyncio").addFilter(self)

    def _hook(self, unraisable):
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
            return
        self._next_hook(unraisable)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(("Future exception was never retrieved",
                                            "Task exception was never retrieved")):
            return True
        text = record.getMessage()
        return not any(p in text for p in self.paths)


_noise: _FailedReadNoise | None = None


def _quiet_failed_read(step_dir) -> None:
    """Drops the late noise of a failed restore of `step_dir` (see _FailedReadNoise), for the rest of the process:
    the reads finish after the restore has returned. Called before the restore is tried (a restore that succeeds
    leaves nothing for it to drop)."""
    global _noise
    if _noise is None:
        _noise = _FailedReadNoise()
    path = str(step_dir)
    _noise.paths.add(path.partition("://")[2] if "://" in path else path)


def check_shared(directory, timeout_s: int = 300) -> None:
    """Before a multi-process run writes a checkpoint: process 0 writes a marker into `directory` and every process
    must see it. A run directory that is not shared (the same local path on hosts with separate disks) would
    otherwise hang Orbax's save in its finalize step. Raises one line (storage.StorageError) on every process."""
    if jax.process_count() <= 1:
        return
    directory = storage.as_path(directory)
    token = int(multihost_utils.broadcast_one_to_all(np.int64(uuid.uuid4().int % (2 ** 62) if
                                                               jax.process_index() == 0 else 0)))
    marker = directory / f".molmoact2-shared-{token:016x}"
    if jax.process_index() == 0:
        marker.write_text("written by process 0; every process of the run must see this file")
    distributed.barrier("shared_check_written", timeout_s)
    seen = distributed.all_agree(marker.exists())
    distributed.barrier("shared_check_read", timeout_s)
    if jax.process_index() == 0:
        marker.unlink()
    if not all(seen):
        blind = [i for i, s in enumerate(seen) if not s]
        raise storage.StorageError(
            f"{directory}: the run directory is not shared between the run's processes (process(es) {blind} cannot "
            f"see a file process 0 wrote there); use a bucket (gs://...) or a filesystem every host mounts")


def _jsonable(state):
    if isinstance(state, bytes):
        return {"__bytes__": state.decode("utf-8")}
    return state


def from_jsonable(state):
    if isinstance(state, dict) and set(state) == {"__bytes__"}:
        return state["__bytes__"].encode("utf-8")
    return state
