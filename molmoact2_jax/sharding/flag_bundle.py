"""What tpu_flags and cpu_flags share: a bundle of XLA flags merged into an environment variable the user may have
set already (their value of a flag wins), and an opt-out variable."""
from __future__ import annotations

from collections.abc import Mapping


def missing(existing: str, bundle) -> list[str]:
    """The flags of `bundle` ((flag, why) pairs) whose names `existing` (a flag string) does not set."""
    have = {a.split("=", 1)[0] for a in existing.split()}
    return [f for f, _ in bundle if f.split("=", 1)[0] not in have]


def enabled(environ: Mapping[str, str], opt_out: str) -> bool:
    """False when the opt-out variable says 0 / false / no."""
    return environ.get(opt_out, "1").strip() not in ("0", "false", "no")
