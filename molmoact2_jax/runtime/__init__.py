"""Deployment runtime: runs an export folder (`molmoact2-export`): ONNX graphs with numpy and onnxruntime only,
without JAX, Flax or torch installed; StableHLO graphs with JAX but none of our model code (`pip install 'molmoact2-jax[runtime]'`; docs/export.md, "Deploy without JAX").

    from molmoact2_jax.runtime import OnnxPolicy
    policy = OnnxPolicy.load("export_dir")
    out = policy.predict_action(images, "put the cup on the plate", state, "franka_droid")
    out.actions                                   # float32 [n_action_steps, action_dim], robot units

The request checks, the prompt and image encoding and the un-normalization are the JAX Policy's own
(molmoact2_jax.inference.observation.ObservationCodec), so a request means the same thing to both; the
`molmoact2-serve` HTTP server (inference/server.py) serves either. Imported lazily so `import molmoact2_jax.runtime`
stays cheap and loads onnxruntime only when OnnxPolicy is used.
"""
from __future__ import annotations

__all__ = ["OnnxPolicy", "StableHLOPolicy", "ExportFolder", "ExportFolderError", "load_exported"]


def load_exported(export_dir, **kwargs):
    """The runtime policy of an export folder, by its graph_format: "onnx" -> OnnxPolicy.load(export_dir, **kwargs)
    (no JAX); "stablehlo" -> StableHLOPolicy.load (JAX, without our model code). ExportFolderError (one line) for
    a folder that cannot be used."""
    from molmoact2_jax.runtime.export_folder import ExportFolder, ExportFolderError  # lazy: cheap package import
    export = ExportFolder.load(export_dir)
    if export.graph_format == "onnx":
        from molmoact2_jax.runtime.onnx_policy import OnnxPolicy  # lazy: loads onnxruntime
        return OnnxPolicy.load(export_dir, **kwargs)
    if export.graph_format == "stablehlo":
        from molmoact2_jax.runtime.stablehlo_policy import StableHLOPolicy  # lazy: imports jax
        return StableHLOPolicy.load(export_dir, **kwargs)
    raise ExportFolderError(f"{export.path}: graph_format {export.graph_format!r} has no runtime in "
                            f"molmoact2_jax.runtime; re-run molmoact2-export")


def __getattr__(name):
    if name == "OnnxPolicy":
        from molmoact2_jax.runtime.onnx_policy import OnnxPolicy  # lazy: loads onnxruntime
        return OnnxPolicy
    if name == "StableHLOPolicy":
        from molmoact2_jax.runtime.stablehlo_policy import StableHLOPolicy  # lazy: imports jax when used
        return StableHLOPolicy
    if name in ("ExportFolder", "ExportFolderError"):
        from molmoact2_jax.runtime import export_folder  # lazy: the package import stays cheap
        return getattr(export_folder, name)
    raise AttributeError(f"module 'molmoact2_jax.runtime' has no attribute {name!r}")
