"""Smoke run of `molmoact2-demo` at a toy size: every stage runs and writes its outputs."""
import json
import os

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.sim]

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco


def test_demo_end_to_end_small(tmp_path):
    from molmoact2_jax.demo import main
    wd = tmp_path / "demo"
    code = main(["--workdir", str(wd), "--tasks", "reach-v3", "--train-episodes", "2", "--heldout-episodes", "1",
                 "--steps", "8", "--eval-episodes", "1", "--max-steps", "8", "--workers", "0"])
    assert code in (0, 1)  # 1 only says the 8-step model is not yet better than the mean action
    summary = json.loads((wd / "demo_summary.json").read_text())
    assert summary["heldout_action_error"] > 0 and summary["mean_action_error"] > 0
    assert {r[0] for r in summary["closed_loop"]} == {"molmoact2-tiny", "mean-action", "random"}
    for path in ("demo_summary.png", "hf_export/config.json", "hf_export/norm_stats.json", "hf_export/openfast",
                 "train/metrics.jsonl", "shards/train/index.json", "lerobot/train/meta/info.json"):
        assert (wd / path).exists(), path
