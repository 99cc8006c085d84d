"""Inference errors that the server needs without importing JAX (the policy module imports it)."""
from __future__ import annotations


class NonFiniteActionError(RuntimeError):
    """The model produced NaN/inf actions. Raised instead of returning them: nothing non-finite may reach a robot.
    Not a ValueError: the request was fine, the checkpoint is not (the server answers 500, not 400)."""
