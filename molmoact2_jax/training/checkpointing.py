"""Fault-tolerant training checkpoints: Orbax CheckpointManager under WORKDIR/checkpoints/<step>/.

Each step directory holds the items
  state/               TrainState (params, optimizer state, step, RNG key, bad-step counters), sharded arrays
  data/                the data iterator's state (JSON), so a resumed run sees exactly the remaining batches
  meta/                the run config (JSON) and run assets (norm stats, tokenizer files) by name
  assets/              a copy of WORKDIR/assets (norm_stats.json, tokenizer.json, openfast/), made once the step
                       has committed, so the step directory serves on its own (copied elsewhere, too)
so a step directory is self-describing (molmoact2_jax.checkpoint_io.params reads params + model config from it).

Orbax writes each step to a temporary directory and renames it on commit, so a crash mid-save leaves no
half-written step. A step that fails to restore (truncated or corrupt files) is moved aside to
`checkpoints/<step>.corrupt-<time>` with a warning naming it, and the next older one is tried. Retention keeps the
last `keep_last` steps plus every `keep_every`-th; Orbax deletes old steps only after the new one has committed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger("molmoact2_jax.checkpointing")


class Checkpointer:
    def __init__(self, workdir: str, ckpt_cfg, async_save: bool = True, assets_dir: str | None = None):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.assets_dir = assets_dir
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=int(ckpt_cfg.get("keep_last", 3)) or None,
            keep_period=ckpt_cfg.get("keep_every") or None,
            enable_async_checkpointing=async_save,
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
        """Copies the run's assets into every committed step directory that lacks them (process 0). A step is
        only copied into after Orbax has committed it, so the copy never races the rename."""
        if not self.assets_dir or not os.path.isdir(self.assets_dir) or jax.process_index() != 0:
            return
        for step in self.manager.all_steps():
            step_dir = os.path.join(self.directory, str(step))
            target = os.path.join(step_dir, "assets")
            if not os.path.isdir(step_dir) or os.path.exists(target):
                continue
            tmp = target + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.assets_dir, tmp)
            os.replace(tmp, target)

    def all_steps(self):
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state):
        """Returns (step, state, data_state, meta) of the newest step that restores cleanly, or None."""
        for step in reversed(self.all_steps()):
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore()))
                return step, out.state, out.data, out.meta
            except Exception as e:  # noqa: BLE001 - any read failure means this step is unusable
                self._quarantine(step, e)
        return None

    def _quarantine(self, step: int, err: Exception):
        src = os.path.join(self.directory, str(step))
        dst = f"{src}.corrupt-{int(time.time())}"
        if jax.process_index() == 0 and os.path.exists(src):
            shutil.move(src, dst)
        _sync(f"quarantine_{step}")
        log.warning("checkpoint %s is incomplete or corrupt (%s: %s); moved aside to %s, trying an older one",
                    src, type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "", dst)
        self.manager.reload()

    def close(self):
        self.wait()
        self.manager.close()


def _jsonable(state):
    if isinstance(state, bytes):
        return {"__bytes__": state.decode("utf-8")}
    return state


def from_jsonable(state):
    if isinstance(state, dict) and set(state) == {"__bytes__"}:
        return state["__bytes__"].encode("utf-8")
    return state


def _sync(name: str):
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
