"""`StableHLOPolicy`: a StableHLO export folder (`molmoact2-export --format stablehlo`) behind the same interface as
`OnnxPolicy`, run by `jax.export.deserialize(...).call` with no model code of ours: the graphs carry the weights.

It needs JAX (any version that reads the serialization: jax.export keeps 6 months of backward compatibility) but
not Flax or this package's models. A symbolic-batch export serves any batch size through `run_batch` (OnnxPolicy's);
`predict_action` feeds one observation.
"""
from __future__ import annotations

import numpy as np

from molmoact2_jax.runtime.export_folder import REEXPORT, ExportFolder, ExportFolderError
from molmoact2_jax.runtime.onnx_policy import OnnxPolicy


class _Input:
    def __init__(self, name: str):
        self.name = name


class _ExportedGraph:
    """A deserialized jax.export program with the two methods OnnxPolicy uses of an onnxruntime session."""

    def __init__(self, exported, names):
        self.exported = exported
        self._inputs = [_Input(n) for n in names]

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return list(self.exported.out_avals)

    def get_providers(self):
        return list(self.exported.platforms)

    def run(self, _output_names, feeds: dict) -> list:
        out = self.exported.call(*[feeds[i.name] for i in self._inputs])
        return [np.asarray(x) for x in (out if isinstance(out, (tuple, list)) else [out])]


class StableHLOPolicy(OnnxPolicy):
    """An export folder of graph_format "stablehlo" (batch 1 per predict_action call; the graphs may take any)."""

    @classmethod
    def load(cls, export_dir, strict_camera_count=None, **_ignored) -> "StableHLOPolicy":
        import jax   # lazy: the runtime package imports no JAX; only this class needs it

        export = ExportFolder.load(export_dir)
        if export.graph_format != "stablehlo":
            raise ExportFolderError(f"{export.path}: graph_format {export.graph_format!r}; StableHLOPolicy runs "
                                    f"StableHLO exports ({REEXPORT} --format stablehlo)")
        codec = cls._codec(export, strict_camera_count)
        graphs = []
        for name, spec in (("prefix", export.prefix), ("flow", export.flow), ("guided", export.guided)):
            if spec is None:
                continue
            try:
                exported = jax.export.deserialize(bytearray(spec.file.read_bytes()))
            except Exception as e:  # noqa: BLE001 - a corrupt file fails inside flatbuffers / MLIR with their types
                raise ExportFolderError(f"{spec.file}: jax.export cannot read the {name} graph "
                                        f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
                                        f"; {REEXPORT}") from None
            if len(exported.in_avals) != len(spec.inputs):
                raise ExportFolderError(f"{spec.file}: the graph takes {len(exported.in_avals)} inputs; export.json "
                                        f"says {len(spec.inputs)} ({REEXPORT})")
            graphs.append(_ExportedGraph(exported, [s.name for s in spec.inputs]))
        return cls(export, codec, *graphs)
