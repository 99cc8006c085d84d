"""Cases for tests/test_user_errors.py, one module per area (data, training, serving and export).

A case is a command a user could type that is wrong in one way. It must fail with exactly one line on stderr that
names the field / file / key (the `expect` text), exit 2, and leave the folder it ran in exactly as it was.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    # Given a fresh folder (also the command's working directory), writes the inputs the command needs there and
    # returns the command: a console script name (e.g. "molmoact2-data") and its arguments.
    command: Callable[[Path], list[str]]
    expect: str                     # a substring of the one stderr line
    env: dict = dataclasses.field(default_factory=dict)
    timeout: float = 240.0
