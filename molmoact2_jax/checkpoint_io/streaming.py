"""Writing an Orbax params checkpoint whose leaves are produced on demand, one layer slice at a time.

A converter describes the tree with `LazyLeaf`s grouped in `LeafGroup`s (leaves computed together, e.g. the
stacked tensors of one scanned layer); `save_streaming` writes them in Orbax's standard numpy layout, so the
result restores with `checkpoint_io.params.load_params` like any other params checkpoint. Peak host memory is one
group's layer, not the whole tree. Only Orbax's public API is used.
"""
from __future__ import annotations

import math

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts


class LeafGroup:
    """Leaves converted together: `fn(i)` returns {name: array} for layer i of stacked leaves or, with
    `layers=None`, the whole arrays (`fn(None)`)."""

    def __init__(self, label: str, layers: int | None, fn):
        self.label, self.layers, self.fn = label, layers, fn


class LazyLeaf:
    """A float32 params leaf produced on demand: `group.fn(i)[name]` (layer i) or `group.fn(None)[name]`."""

    def __init__(self, shape, group: LeafGroup, name):
        self.shape, self.group, self.name = tuple(shape), group, name
        self.dtype = np.dtype(np.float32)
        self.ndim, self.size = len(self.shape), math.prod(self.shape)
        self.nbytes = self.size * 4


def produce(leaves, progress=None):
    """Yields (leaf, layer index or None, array) for every slice of `leaves`, group by group and layer-major
    inside a group, so each group's source tensors are converted once; checks each array's shape."""
    groups: dict = {}
    for leaf in leaves:
        groups.setdefault(id(leaf.group), (leaf.group, []))[1].append(leaf)
    for group, members in groups.values():
        for i in ([None] if group.layers is None else range(group.layers)):
            arrays = group.fn(i)
            for leaf in members:
                a = arrays[leaf.name]
                want = leaf.shape if i is None else leaf.shape[1:]
                if a.shape != want:
                    raise ValueError(f"{group.label}: converted leaf {leaf.name} has shape {a.shape}, "
                                     f"expected {want}")
                yield leaf, i, a
            del arrays
            if progress is not None:
                progress.update(1)


def materialize(leaves: dict) -> dict:
    """{key: LazyLeaf} -> {key: float32 array}, converted group by group into preallocated arrays (peak memory:
    the result plus one group's layer)."""
    out = {id(leaf): np.empty(leaf.shape, np.float32) for leaf in leaves.values()}
    for leaf, i, a in produce(list(leaves.values())):
        out[id(leaf)][... if i is None else i] = a
    return {key: out[id(leaf)] for key, leaf in leaves.items()}


class _StreamingHandler(ocp.type_handlers.NumpyHandler):
    """Writes `LazyLeaf`s in Orbax's numpy layout, a layer slice at a time (chunks of one layer)."""

    def __init__(self, progress=None):
        super().__init__(deepcopy_host_arrays=False)
        self.progress = progress

    async def serialize(self, values, infos, args=None):
        args = args or [ocp.SaveArgs()] * len(values)
        return [ocp.future.CommitFutureAwaitingContractedSignals(self._write(values, infos, args),
                                                                 name="molmoact2_streaming_write")]

    async def _open(self, leaf, info, arg):
        await info.await_path_creation()
        local = (1,) + leaf.shape[1:] if leaf.group.layers is not None else leaf.shape
        ocdbt = info.is_ocdbt_checkpoint
        spec = ocp.type_handlers.get_json_tspec_write(
            info, use_ocdbt=ocdbt, global_shape=leaf.shape, local_shape=local, dtype=leaf.dtype,
            process_index=ocp.multihost.process_index() if ocdbt else None, metadata_key=self._metadata_key,
            arg=arg)
        return await ts.open(ts.Spec(spec), create=True, open=True, context=info.ts_context)

    async def _write(self, values, infos, args):
        if ocp.multihost.process_index() != 0:
            return
        stores = {id(leaf): await self._open(leaf, info, arg) for leaf, info, arg in zip(values, infos, args)}
        for leaf, i, array in produce(values, self.progress):
            await (stores[id(leaf)].write(array) if i is None else stores[id(leaf)][i].write(array))


def save_streaming(path: str, tree, progress=None) -> None:
    """Writes `tree` (nested dicts of LazyLeaf / numpy / jax arrays) to the Orbax checkpoint at `path`,
    synchronously; `progress.update(1)` (if given) is called per written layer slice."""
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler()), (jax.Array, ocp.type_handlers.ArrayHandler()),
        (LazyLeaf, _StreamingHandler(progress)))
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry)) as ckptr:
        ckptr.save(path, args=ocp.args.PyTreeSave(tree), force=True)
