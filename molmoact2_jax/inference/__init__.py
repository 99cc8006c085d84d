"""Inference: `Policy` (observation -> robot actions), MolmoThink depth decoding, the HTTP policy server and
client. Imported lazily so `import molmoact2_jax.inference` stays cheap."""
from __future__ import annotations

__all__ = ["Policy", "ActionResult", "PolicyClient"]


def __getattr__(name):
    if name in ("Policy", "ActionResult"):
        from molmoact2_jax.inference import policy
        return getattr(policy, name)
    if name == "PolicyClient":
        from molmoact2_jax.inference.client import PolicyClient
        return PolicyClient
    raise AttributeError(f"module 'molmoact2_jax.inference' has no attribute {name!r}")
