"""A self-describing params checkpoint: `CKPT_DIR/params/` (Orbax) + `CKPT_DIR/model_config.json` beside it.

CKPT_DIR may be a local folder or a `gs://` URI: every path goes through `storage.as_path` (etils epath, which
Orbax takes as it is), and files are written whole.

Used by the converters and by params-only restores; the training CheckpointManager writes the same two entries
inside each step directory, so any step directory is also a valid CKPT_DIR here.
"""
from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from molmoact2_jax import storage
from molmoact2_jax.models.config import model_config_from_saved

PARAMS = "params"
MODEL_CONFIG = "model_config.json"


def save_params(ckpt_dir: str, params, model_cfg) -> None:
    """Writes params and the model config. Orbax commits the params atomically; the config is written whole
    (locally a temp file renamed, on a bucket one object), so neither entry is ever half-written."""
    ckpt = storage.as_path(ckpt_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(ckpt / PARAMS, params, force=True)
        ckptr.wait_until_finished()
    write_model_config(ckpt, model_cfg)


def write_model_config(ckpt_dir: str, model_cfg) -> None:
    """CKPT_DIR/model_config.json, written whole (locally a temp file renamed; on object storage one object)."""
    text = ml_collections.ConfigDict(model_cfg).to_json(indent=2)
    storage.write_text(storage.as_path(ckpt_dir) / MODEL_CONFIG, text)


def is_training_step(ckpt_dir: str) -> bool:
    """A trainer step directory (WORKDIR/checkpoints/<step>/ with state/ and meta/ items)."""
    ckpt = storage.as_path(ckpt_dir)
    return (ckpt / "state").is_dir() and (ckpt / "meta" / "metadata").exists()


def load_model_config(ckpt_dir: str) -> ml_collections.ConfigDict:
    ckpt = storage.as_path(ckpt_dir)
    if is_training_step(ckpt):
        d = json.loads((ckpt / "meta" / "metadata").read_text())["config"]["model"]
    else:
        path = ckpt / MODEL_CONFIG
        if not path.exists():
            raise FileNotFoundError(f"{ckpt_dir}: no {MODEL_CONFIG} (not a molmoact2-jax params checkpoint)")
        d = json.loads(path.read_text())
    return model_config_from_saved(d)


class IncompleteCheckpointError(FileNotFoundError):
    """An Orbax item directory that cannot be restored (a save cut short, a partial copy): one line naming it."""


OCDBT_MANIFEST = "manifest.ocdbt"
ORBAX_METADATA = "_METADATA"


def check_item_complete(item_dir) -> None:
    """Raises IncompleteCheckpointError naming `item_dir` (params/ or a step's state/) when it lacks the files a
    restore needs: the item directory, Orbax's `_METADATA` (the tree) and, for an OCDBT checkpoint (Orbax's default),
    `manifest.ocdbt` (the index of every array). Without this check the restore fails deep inside Orbax with a
    TypeError or a tensorstore error that does not name the missing file. Costs one `exists` on a good checkpoint."""
    item = storage.as_path(item_dir)
    if (item / OCDBT_MANIFEST).exists():
        return
    hint = ("the save was cut short or the folder was copied partly; use another step (or the run directory, which "
            "resolves to its newest complete step) or copy the checkpoint again")
    if not item.is_dir():
        raise IncompleteCheckpointError(f"{item}: missing (not a complete checkpoint); {hint}")
    meta = item / ORBAX_METADATA
    if not meta.exists():
        raise IncompleteCheckpointError(f"{item}: no {ORBAX_METADATA} (an incomplete Orbax checkpoint); {hint}")
    try:
        use_ocdbt = bool(json.loads(meta.read_text()).get("use_ocdbt", True))
    except (ValueError, AttributeError):
        raise IncompleteCheckpointError(f"{meta}: unreadable Orbax metadata; {hint}") from None
    if use_ocdbt:
        raise IncompleteCheckpointError(f"{item / OCDBT_MANIFEST}: missing (an incomplete Orbax checkpoint); {hint}")


def training_config(ckpt_dir: str) -> dict | None:
    """The whole run config a trainer step directory was saved with (meta/metadata), or None for any other layout."""
    ckpt = storage.as_path(ckpt_dir)
    if not is_training_step(ckpt):
        return None
    try:
        return json.loads((ckpt / "meta" / "metadata").read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return None


WEIGHTS = ("auto", "ema", "raw")


def load_params(ckpt_dir: str, target=None, weights: str = "auto"):
    """Returns (params as numpy/jax arrays, model config). `target` (e.g. from jax.eval_shape with shardings)
    restores directly onto devices in that layout. `weights` (trainer step directories): "ema" the EMA of the params
    (config.ema.decay > 0), "raw" the trained params, "auto" the EMA when the run kept one, else the params."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: expected one of {WEIGHTS}")
    ckpt = storage.as_path(ckpt_dir)
    cfg = load_model_config(ckpt)
    if is_training_step(ckpt):
        check_item_complete(ckpt / "state")
        return _params_from_train_state(ckpt / "state", target, weights), cfg
    if weights == "ema":
        raise ValueError(f"{ckpt_dir}: a params checkpoint holds one set of weights; --weights ema needs a trainer "
                         f"step directory of a run with config.ema.decay > 0")
    path = ckpt / PARAMS
    if not path.is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: no {PARAMS}/ directory")
    check_item_complete(path)
    with ocp.StandardCheckpointer() as ckptr:
        if target is None:
            meta = ckptr.metadata(path)
            tree = getattr(meta, "item_metadata", meta)
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
        params = ckptr.restore(path, target)
    return params, cfg


def _params_from_train_state(path, target=None, weights: str = "auto"):
    """Restores only the params (or their EMA) out of a saved TrainState (optimizer state is never read)."""
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        if "params" not in tree:
            raise ValueError(f"{path}: the saved state has no params")
        has_ema = isinstance(tree.get("ema_params"), dict) and bool(tree.get("ema_params"))
        if weights == "ema" and not has_ema:
            raise ValueError(f"{path}: this run kept no EMA weights (config.ema.decay was 0); use --weights raw")
        key = "ema_params" if has_ema and weights != "raw" else "params"
        if target is None:
            target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree[key])
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        else:
            restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        out = ckptr.restore(path, args=ocp.args.PyTreeRestore(item={key: target}, restore_args={key: restore_args},
                                                              partial_restore=True))
    return out[key]


def saved_param_metadata(ckpt_dir: str) -> dict:
    """{"a/b/kernel": (shape, dtype)} of every saved parameter, read from the checkpoint's metadata only (no
    tensor is loaded), for either layout (params checkpoint or trainer step directory)."""
    path, prefix = _params_location(ckpt_dir)
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    if prefix:
        if prefix not in tree:
            raise ValueError(f"{path}: the saved state has no {prefix}")
        tree = tree[prefix]
    flat = traverse_util.flatten_dict(_plain_dict(tree), sep="/")
    return {k: (tuple(m.shape), np.dtype(m.dtype)) for k, m in flat.items()}


def restore_params_sharded(ckpt_dir: str, target: dict) -> dict:
    """Restores the parameters named in `target` (a nested dict of jax.ShapeDtypeStruct with `.sharding`, a
    subset of the saved tree) straight into those shardings: each process reads only the slices its devices
    hold, and no full copy of the tree exists on any host. Saved dtypes are cast to the target's."""
    path, prefix = _params_location(ckpt_dir)
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    item, args = (target, restore_args) if not prefix else ({prefix: target}, {prefix: restore_args})
    with ocp.PyTreeCheckpointer() as ckptr:
        out = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
    return out[prefix] if prefix else out


def check_checkpoint(ckpt_dir: str) -> ml_collections.ConfigDict:
    """The model config of a params checkpoint or step directory, after checking that its weights are restorable
    (one-line FileNotFoundError / IncompleteCheckpointError naming the path otherwise); reads no tensor."""
    cfg = load_model_config(ckpt_dir)
    _params_location(ckpt_dir)
    return cfg


def _params_location(ckpt_dir: str) -> tuple:
    """(Orbax item directory as an epath, key of the params inside it or "")."""
    ckpt = storage.as_path(ckpt_dir)
    if is_training_step(ckpt):
        check_item_complete(ckpt / "state")
        return ckpt / "state", "params"
    path = ckpt / PARAMS
    if not path.is_dir():
        raise FileNotFoundError(f"{ckpt}: no {PARAMS}/ directory (not a params checkpoint or step directory)")
    check_item_complete(path)
    return path, ""


def _plain_dict(tree):
    if hasattr(tree, "items"):
        return {k: _plain_dict(v) for k, v in tree.items()}
    return tree


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)
