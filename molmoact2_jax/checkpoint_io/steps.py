"""A run directory where a checkpoint is expected: `WORKDIR` (or `WORKDIR/checkpoints`) stands for its newest
complete step, `WORKDIR/checkpoints/<step>/`.

Used by every reader that takes a checkpoint (Policy.load, molmoact2-serve, molmoact2-convert export-hf,
molmoact2-eval), so none of them needs the trainer: this module reads the folder layout only. A step counts when

  * Orbax finalized it (`ocp.step.is_path_finalized`: locally the temporary `<step>.orbax-checkpoint-tmp-*` folder
    was renamed to `<step>`; on a bucket the step holds its commit marker), and
  * it is restorable: `state/` with its Orbax metadata and OCDBT manifest, and the run config in `meta/metadata`
    (what `checkpoint_io.params` reads).

Quarantined steps (`<step>.corrupt-<time>`, see training/checkpointing.py) and temporary folders are skipped by
name. Works on `gs://` through molmoact2_jax.storage (etils epath), like the rest of checkpoint_io.
"""
from __future__ import annotations

import sys

import orbax.checkpoint as ocp

from molmoact2_jax import storage
from molmoact2_jax.checkpoint_io import params as params_io

CHECKPOINTS = "checkpoints"


def _is_checkpoint_itself(path) -> bool:
    """A folder a checkpoint reader takes as it is: a params checkpoint or a step directory. (An HF folder has no
    checkpoints/ subfolder, so it is never mistaken for a run.)"""
    return (path / params_io.MODEL_CONFIG).exists() or (path / params_io.PARAMS).is_dir() or (path / "state").is_dir()


def steps_folder(path):
    """The folder holding `<step>/` directories when `path` is a run directory (WORKDIR, or WORKDIR/checkpoints
    itself), else None."""
    p = storage.as_path(path)
    if not p.is_dir() or _is_checkpoint_itself(p):
        return None
    if (p / CHECKPOINTS).is_dir():
        return p / CHECKPOINTS
    if p.name == CHECKPOINTS:
        return p
    return None


def step_problem(step_dir) -> str | None:
    """None for a complete step directory, else why it is not one (a few words)."""
    step_dir = storage.as_path(step_dir)
    if not ocp.step.is_path_finalized(step_dir):
        return "not committed"
    if not params_io.is_training_step(step_dir):
        return "no state/ or meta/metadata"
    try:
        params_io.check_item_complete(step_dir / "state")
    except params_io.IncompleteCheckpointError:
        return f"no state/{params_io.OCDBT_MANIFEST}"
    return None


def list_steps(folder) -> list[tuple[int, object]]:
    """(step, path) of every `<step>/` directory under `folder`, oldest first (temporary and quarantined folders,
    whose names are not plain integers, are left out)."""
    out = []
    for child in storage.as_path(folder).iterdir():
        if child.name.isdigit() and child.is_dir():
            out.append((int(child.name), child))
    return sorted(out, key=lambda s: s[0])


def newest_complete_step(folder, given=None) -> tuple[int, object, list[str]]:
    """(step, path, skipped) of the newest complete step under `folder`; `skipped` describes newer steps passed
    over. Raises FileNotFoundError (one line, naming `given`: what the user typed) when there is none."""
    steps = list_steps(folder)
    skipped = []
    for step, path in reversed(steps):
        why = step_problem(path)
        if why is None:
            return step, path, skipped
        skipped.append(f"{step} ({why})")
    found = f"its steps: {', '.join(reversed(skipped))}" if skipped else f"no <step>/ folders in {folder}"
    raise FileNotFoundError(f"{given or folder}: a run directory with no complete checkpoint step ({found}); train "
                            f"until a checkpoint is saved, or name a step directory {folder}/<step>")


def resolve_checkpoint(path, log=None) -> str:
    """`path` itself unless it is a run directory; then its newest complete step directory, announced by one line
    through `log` (default: stderr) naming the step and any newer incomplete steps skipped."""
    folder = steps_folder(path)
    if folder is None:
        return str(path)
    step, step_dir, skipped = newest_complete_step(folder, path)
    note = f"; skipped newer incomplete step(s) {', '.join(skipped)}" if skipped else ""
    line = f"{path}: a run directory; using its newest complete step {step} ({step_dir}){note}"
    if log is None:
        print(line, file=sys.stderr, flush=True)
    else:
        log(line)
    return str(step_dir)
