"""Inference: `Policy` (observation -> robot actions), MolmoThink depth decoding, the HTTP policy server and
client. Imported lazily so `import molmoact2_jax.inference` stays cheap."""
from __future__ import annotations

__all__ = ["Policy", "ActionResult", "PolicyClient"]


def __getattr__(name):
    if name == "Policy":
        from molmoact2_jax.inference.policy import Policy
        return Policy
    if name == "ActionResult":   # no JAX: the ONNX runtime returns it too
        from molmoact2_jax.inference.observation import ActionResult
        return ActionResult
    if name == "PolicyClient":
        from molmoact2_jax.inference.client import PolicyClient
        return PolicyClient
    raise AttributeError(f"module 'molmoact2_jax.inference' has no attribute {name!r}")
