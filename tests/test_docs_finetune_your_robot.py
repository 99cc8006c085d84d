"""docs/finetune_your_robot.md as a user follows it.

The page's ```bash blocks run as written, in order, from a fresh home folder, on a LeRobot v3.0 dataset of a robot
no built-in embodiment describes (tests/fixtures/arm7.json: 6 joints + gripper, cameras `front` and `hand`):
embodiment file -> convert -> stats -> tokenizers -> tiny training -> a served `/act` reply (the page's Python
client) -> HF export.
```shell blocks (the released model, pods) need what this machine does not have: tests/test_docs_commands.py checks
their commands and flags, as it does for every page.
The one liberty taken: the server's port 8000 becomes a free port.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from molmoact2_jax.inference.server import LISTENING
from molmoact2_jax.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "finetune_your_robot.md"
ARM7 = ROOT / "tests" / "fixtures" / "arm7.json"


def page_blocks() -> list[tuple[str, str]]:
    """(language, body) of every fenced block on the page, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", PAGE.read_text(), re.S)]


def shell_lines(body: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = body.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(line)
    return out


def test_page_is_linked_from_the_readme():
    assert "docs/finetune_your_robot.md" in (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_page_runs_as_written_for_a_robot_that_is_not_built_in(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    blocks = [(lang, body) for lang, body in page_blocks() if lang in ("bash", "python")]
    assert blocks[0][0] == "bash" and "DATA=" in blocks[0][1]
    variables = blocks[0][1]

    def sh(script: str, timeout: float = 900) -> subprocess.CompletedProcess:
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", variables + "\n" + script], cwd=str(ROOT), env=env,
                           capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"{script}\nexit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
        return r

    data = Path(sh('echo "$DATA"').stdout.strip())
    assert data.is_relative_to(home)
    # The user's dataset: a robot no built-in embodiment describes, written in LeRobot v3.0 by our fixture writer.
    subprocess.run(["molmoact2-data", "fixture", "--format", "lerobot-v3.0", "--embodiment", str(ARM7), "--out",
                    str(data), "--episodes", "4"], check=True, env=env, capture_output=True, timeout=300)
    info = json.loads((data / "meta" / "info.json").read_text())
    assert {"observation.images.front", "observation.images.hand"} <= set(info["features"])

    served = None
    for i, (lang, body) in enumerate(blocks[1:], start=1):
        if lang == "bash" and "molmoact2-serve" in body:
            (line,) = shell_lines(body)
            served = subprocess.Popen(["bash", "-euo", "pipefail", "-c", variables + "\nexec " +
                                       line.replace("--port 8000", "--port 0")],
                                      cwd=str(home), env=env, stdout=subprocess.PIPE, text=True,
                                      stderr=open(tmp_path / "serve.log", "w"))   # a file: a full pipe blocks
            url = None
            for out_line in served.stdout:
                if out_line.startswith(LISTENING):
                    url = out_line[len(LISTENING):].split()[0]
                    break
            assert url, (tmp_path / "serve.log").read_text()[-5000:]
        elif lang == "python":
            assert served is not None, "the client block comes after the server block"
            script = body.replace("http://127.0.0.1:8000", url)
            r = subprocess.run([sys.executable, "-c", script + "\nprint('FINITE', bool(np.isfinite(actions).all()))"],
                               cwd=str(home), env=env, capture_output=True, text=True, timeout=300)
            served.terminate()
            served.wait(timeout=30)
            assert r.returncode == 0, r.stderr[-5000:]
            assert r.stdout.split() == ["(20,", "7)", "FINITE", "True"], r.stdout   # arm7: horizon 20, 7 dims
        else:
            sh(body)

    run = Path(sh('echo "$RUN"').stdout.strip())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == load_recipe(f"{ROOT}/configs/finetune.py:robot_tiny").total_steps
    robot = json.loads(Path(sh('echo "$ROBOT"').stdout.strip()).read_text())
    norm = json.loads((Path(sh('echo "$SHARDS"').stdout.strip()) / "norm_stats.json").read_text())
    assert list(norm["metadata_by_tag"]) == [robot["tag"]]
    export = run / "hf_export"
    assert {"model.safetensors", "config.json", "norm_stats.json"} <= {p.name for p in export.iterdir()}
