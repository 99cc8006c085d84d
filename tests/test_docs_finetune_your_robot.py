"""docs/finetune_your_robot.md as a user follows it.

Every `molmoact2-*` command on the page names flags its program has (and recipe fields that exist); the page's
```bash blocks run as written, in order, from a fresh home folder, on a LeRobot v3.0 dataset of a robot no built-in
embodiment describes (tests/fixtures/arm7.json: 6 joints + gripper, cameras `front` and `hand`): embodiment file ->
convert -> stats -> tokenizers -> tiny training -> a served `/act` reply (the page's Python client) -> HF export.
```shell blocks (the released model, pods) need what this machine does not have: only their flags are checked.
The one liberty taken: the server's port 8000 becomes a free port.
"""
from __future__ import annotations

import functools
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
SUBCOMMANDS = {"molmoact2-data", "molmoact2-convert", "molmoact2-openfast"}


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


def page_commands() -> list[list[str]]:
    cmds = []
    for lang, body in page_blocks():
        if lang in ("bash", "shell"):
            cmds += [shlex.split(line, comments=True) for line in shell_lines(body)
                     if line.lstrip().startswith("molmoact2-")]
    return cmds


@functools.cache
def help_text(*prog_and_sub: str) -> str:
    r = subprocess.run([*prog_and_sub, "--help"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def _config_field_exists(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", part)
        if m is None or m.group(1) not in node:
            return False
        node = node[m.group(1)]
        if m.group(2) is not None:
            if not isinstance(node, (list, tuple)) or not node:
                return False
            node = node[0]
    return True


def test_page_is_linked_from_the_readme():
    assert "docs/finetune_your_robot.md" in (ROOT / "README.md").read_text()


def test_every_command_on_the_page_names_real_flags():
    cmds = page_commands()
    progs = {c[0] for c in cmds}
    assert {"molmoact2-data", "molmoact2-train", "molmoact2-serve", "molmoact2-convert", "molmoact2-eval"} <= progs
    for cmd in cmds:
        prog, args = cmd[0], cmd[1:]
        flags = [a.split("=", 1)[0] for a in args if a.startswith("--")]
        if prog == "molmoact2-train":
            config = None
            for a in args:
                if a.startswith("--config="):
                    path, _, variant = a.split("=", 1)[1].partition(":")
                    config = load_recipe(f"{ROOT / path}:{variant}" if variant else str(ROOT / path))
            assert config is not None, cmd
            for f in flags:
                if f.startswith("--config."):
                    assert _config_field_exists(config, f[len("--config."):]), (f, cmd)
                else:
                    assert f in ("--config", "--workdir"), (f, cmd)
            continue
        sub = (args[0],) if prog in SUBCOMMANDS else ()
        text = help_text(prog, *sub)
        for f in flags:
            assert re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text), (f, cmd)


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
