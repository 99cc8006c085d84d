"""LIBERO under one tag and one horizon, end to end with the console scripts: a LIBERO-format LeRobot dataset (the
built-in `libero` embodiment: 8-D state, 7-D delta end-effector action, cameras image / wrist_image, 10 Hz) ->
convert -> stats -> tokenizers -> 2 steps of `finetune.py:libero_tiny` -> `molmoact2-eval --suite libero:...` of
the run directory in the LIBERO simulator, which asks the checkpoint for tag `libero` and gets 10-step chunks.
The episode itself is short (4 policy steps): this checks the plumbing, not the policy."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from test_sim_eval import ROOT, _libero, _render_backend, needs_libero  # noqa: F401 - fixtures of needs_libero

pytestmark = [pytest.mark.slow, pytest.mark.sim]


def _run(*cmd, cwd, env, timeout=900):
    r = subprocess.run(list(cmd), cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}\nexit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


@needs_libero
def test_libero_data_trains_and_evaluates_under_one_tag(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    data, shards, run, out = (tmp_path / n for n in ("libero_data", "libero_shards", "run", "eval"))
    _run("molmoact2-data", "fixture", "--format", "lerobot-v3.0", "--embodiment", "libero", "--out", str(data),
         "--episodes", "3", cwd=tmp_path, env=env)
    _run("molmoact2-data", "convert", "--source", f"lerobot:{data}", "--embodiment", "libero", "--out", str(shards),
         "--image-size", "64", cwd=tmp_path, env=env)
    index = json.loads((shards / "index.json").read_text())
    assert (index["tag"], index["horizon"]) == ("libero", 10)
    for cmd in ("stats", "tokenizer", "openfast"):
        _run("molmoact2-data", cmd, str(shards), cwd=tmp_path, env=env)
    _run("molmoact2-train", f"--config={ROOT / 'configs' / 'finetune.py'}:libero_tiny", f"--workdir={run}",
         f"--config.data.sources[0].path={shards}", "--config.total_steps=2", "--config.checkpoint.every_steps=2",
         "--config.trainer.eval_every_steps=0", cwd=tmp_path, env=env)
    stats = json.loads((run / "checkpoints" / "2" / "assets" / "norm_stats.json").read_text()) \
        if (run / "checkpoints" / "2" / "assets" / "norm_stats.json").exists() else \
        json.loads((run / "assets" / "norm_stats.json").read_text())
    meta = stats["metadata_by_tag"]["libero"]
    assert (meta["action_horizon"], meta["action_dim"]) == (10, 7)

    r = _run("molmoact2-eval", "--checkpoint", str(run), "--suite", "libero:libero_spatial:0", "--episodes", "1",
             "--max-steps", "4", "--image-size", "128", "128", "--out", str(out), "--quiet",
             cwd=tmp_path, env=env)
    report = json.loads((out / "report.json").read_text())
    assert report["simulator"] == "libero" and list(report["tasks"]) == ["libero_spatial/0"]
    assert (report["norm_tag"], report["n_action_steps"]) == ("libero", 10)
    (episode,) = report["episodes"]
    assert episode["length"] == 4 and "black bowl" in episode["instruction"]
    print(r.stdout[-1500:])
