"""Every console script's usage, config and input errors, as a user meets them: exactly one line on stderr naming
the field / file / key and the fix, exit 2, nothing written (the folder the command ran in is unchanged: no file
added, removed or modified). The cases live per area in tests/user_errors/."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from user_errors import Case
from user_errors import data as data_cases
from user_errors import serving as serving_cases
from user_errors import training as training_cases

CASES: list[Case] = [*data_cases.CASES, *training_cases.CASES, *serving_cases.CASES]


def _snapshot(root) -> dict:
    """Every file and folder under root with a digest of its bytes (permissions restored where a case removed
    them, so a read-only folder can be walked)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), root)] = "dir"
        for name in files:
            p = os.path.join(d, name)
            try:
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
            except PermissionError:
                out[os.path.relpath(p, root)] = "unreadable"
    return out


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_user_error_is_one_line_exit_2_and_writes_nothing(case: Case, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    command = case.command(work)
    exe = shutil.which(command[0])
    assert exe, f"console script {command[0]} is not installed (pip install -e .)"
    before = _snapshot(work)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **case.env}
    r = subprocess.run([exe, *command[1:]], cwd=str(work), env=env, capture_output=True, text=True,
                       timeout=case.timeout, stdin=subprocess.DEVNULL)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, f"exit {r.returncode}\nstdout:\n{r.stdout[-2000:]}\nstderr:\n{r.stderr[-4000:]}"
    assert len(lines) == 1, r.stderr[-4000:]
    assert lines[0].startswith(f"{command[0]}: error: "), lines[0]
    assert case.expect in lines[0], lines[0]
    assert _snapshot(work) == before, "the failed command changed files under its folder"
