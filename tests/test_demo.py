"""`molmoact2-demo` at a small size: every stage runs and writes its outputs, the short run learns (held-out action
error well below the mean action's), and the exit code is the closed-loop comparison it reports."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.sim]

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco


FIT_RATIO = 0.5


def _exit_code(argv) -> int:
    """molmoact2-demo's exit code for `argv`: what main returns, or the code of the SystemExit it raises."""
    from molmoact2_jax.cli.demo import main
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_demo_bad_settings_are_usage_errors(tmp_path, capsys):
    wd = str(tmp_path / "d")
    for override, says in (
            ("--config.demo.cameras=corner2,wristcam", "unknown MetaWorld camera(s) ['wristcam']"),
            ("--config.demo.train_episodes=40,80,10", "config.demo.train_episodes=40,80,10: 3 counts for 2 tasks "
                                                      "(reach-v3,push-v3)"),
            ("--config.demo.train_episodes=40,-1", "positive episode counts"),
            ("--config.model.flow.num_samples=0", "config.model.flow.num_samples must be >= 1"),
            ("--config.ema.decay=1", "config.ema.decay must be"),
            ("--config.demo.mode=discrete", "add --config.model.action_mode=both"),
            ("--config.demo.object_color=red", "config.demo.object_color 'red'"),
            ("--config.demo.think=True", "use --config=finetune:demo_think"),
            ("--config.demo.episodes=3", "config.demo.episodes: no such config field"),
            ("--config.demo.eval_block=heldout", "config.demo.eval_block='heldout': expected validation or test"),
            ("--config.demo.test_seed=950", "the validation block's episodes would reach into the test block"),
            ("--config=finetune:robot_tiny", "has no config.demo settings"),
            ("--steps=300", "unrecognized arguments: --steps")):
        assert _exit_code(["--workdir", wd, override]) == 2, override
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, (override, err)
    assert not (tmp_path / "d").exists()


def test_demo_help_exits_0_without_importing_jax():
    code = ("import sys\nfrom molmoact2_jax.cli.demo import main\ntry:\n    main(['--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'libtpu')]\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Examples:" in r.stdout and "--config=finetune:demo_think" in r.stdout


def test_demo_variant_ties_width_learning_rate_and_cadence():
    """One override moves what the demo's old flags moved together: --config.model.vit.hidden_size the ViT and
    connector, --config.optimizer.lr.llm every parameter group, --config.total_steps the checkpoint and eval
    cadence; the derived fields follow the demo's cameras and action mode."""
    from molmoact2_jax.cli.common import load_config
    from molmoact2_jax.demo.settings import resolve

    s = resolve(load_config("finetune:demo", ["--config.model.vit.hidden_size=64", "--config.optimizer.lr.llm=3e-4",
                                              "--config.total_steps=300", "--config.demo.cameras=corner2",
                                              "--config.demo.tasks=reach-v3", "--config.demo.train_episodes=30"]))
    m = s.cfg.model
    assert (m.vit.hidden_size, m.connector.hidden_size, m.vit.head_dim, m.connector.head_dim, m.vit.mlp_dim) == \
        (64, 64, 16, 16, 128)
    assert dict(s.cfg.optimizer.lr) == {g: 3e-4 for g in s.cfg.optimizer.lr}
    assert (s.cfg.checkpoint.every_steps, s.cfg.trainer.eval_every_steps) == (150, 75)
    assert s.cfg.data.max_cameras == 1 and m.loss.ce_weight == 0.0 and s.tasks == ("reach-v3",)
    assert s.train_episodes == 30
    think = resolve(load_config("finetune:demo_think", ["--config.optimizer.lr.vit=1e-4"]))
    assert think.cfg.model.action_mode == "both" and think.cfg.model.loss.ce_weight > 0
    assert think.cfg.optimizer.lr.vit == 1e-4 and think.cfg.optimizer.lr.llm == 1e-3   # a group alone
    assert think.train_episodes == 15 and think.cfg.data.max_cameras == 2


def test_train_episodes_per_task():
    from molmoact2_jax.demo.settings import episodes_per_task
    assert episodes_per_task("40", ("reach-v3", "push-v3")) == 40
    assert episodes_per_task(40, ("reach-v3",)) == 40
    assert episodes_per_task("40, 80", ("reach-v3", "push-v3")) == {"reach-v3": 40, "push-v3": 80}


def test_demo_end_to_end_small(tmp_path):
    from molmoact2_jax.demo.score import POLICIES
    wd = tmp_path / "demo"
    code = _exit_code(["--workdir", str(wd), "--config.demo.train_episodes=3", "--config.demo.heldout_episodes=1",
                       "--config.total_steps=300", "--config.demo.eval_episodes=2", "--config.demo.max_steps=16",
                       "--config.demo.validation_episodes=1",
                       "--config.demo.workers=0", "--config.data.global_batch_size=8"])
    summary = json.loads((wd / "demo_summary.json").read_text())
    # Exit 1 exactly when the model does not beat the mean action in closed loop.
    assert code == (0 if summary["model_beats_mean_action"] else 1)
    # The protocol: the closed-loop table is the test block's (seeds never used to choose a default), the model's
    # validation-block figure beside it; each policy's episodes under closed_loop/<block>/.
    assert summary["protocol"] == {"closed_loop_block": "test", "blocks": {
        "validation": {"first_seed": 900, "role": "every choice of the defaults", "episodes_per_task": 1},
        "test": {"first_seed": 100_000, "role": "reported; never used to choose", "episodes_per_task": 2}}}
    table = summary["closed_loop"]
    assert set(table) == set(POLICIES)
    for name in POLICIES:
        r = table[name]["push-v3"]
        assert r["episodes"] == 2 and 0 <= r["successes"] <= 2 and 0 <= r["ci95"][0] <= r["ci95"][1] <= 1
        assert r["mean_final_distance"] > 0
        report = json.loads((wd / "closed_loop" / "test" / name / "report.json").read_text())
        assert report["seed"] == 100_000, report.get("seed")
    assert set(summary["closed_loop_validation"]) == {POLICIES[0]}
    assert summary["closed_loop_validation"][POLICIES[0]]["reach-v3"]["episodes"] == 1
    # A 300-step run of batch 8 on 3 episodes per task places no goal yet (its dx error is the mean action's), but
    # it must have learned what the instruction says about the gripper (reach: 0, push: closed), through the whole
    # chain recording -> shards -> normalization -> model -> un-normalization (measured 0.39x the mean's error),
    # and beat the mean action on held-out episodes (measured 0.78x its error with the default DART recording
    # and drawing).
    fit, held = summary["train_action_error"], summary["heldout_action_error"]
    assert fit["model_chunk"]["per_dim"][3] < FIT_RATIO * fit["mean_action"]["per_dim"][3], fit
    assert held["model_chunk"]["mean"] < 0.9 * held["mean_action"]["mean"], held
    frames = json.loads((wd / "shards/heldout/index.json").read_text())["total_frames"]
    assert held["model_first_step"]["samples"] >= frames > 50                        # every held-out frame scored
    assert held["model_chunk"]["samples"] == held["mean_action"]["samples"]
    assert len(held["model_chunk"]["per_dim"]) == 4 and held["dims"] == ["dx", "dy", "dz", "gripper"]
    settings = json.loads((wd / "hf_export/sim_settings.json").read_text())
    assert settings["max_steps"] == 16 and settings["image_hw"] == [112, 112]
    assert [c["name"] for c in settings["cameras"]] == ["behindGripper", "corner"]
    assert settings["goal_marker_radius"] == 0.05 and summary["settings"]["action_mode"] == "continuous"
    assert settings["object_rgba"] == [0.1, 0.4, 1.0, 1.0] and settings["object_marker_radius"] == 0.045
    assert summary["settings"]["seq_len"] == 128 and summary["settings"]["flow_samples"] == 4
    recorded = {name: json.loads((wd / f"lerobot/{name}/meta/sim_recording.json").read_text())["action_noise"]
                for name in ("train", "heldout")}
    assert summary["settings"]["action_noise"] == 0.5 and recorded == {"train": 0.5, "heldout": 0.0}
    for path in ("demo_summary.png", "hf_export/config.json", "hf_export/norm_stats.json", "hf_export/openfast",
                 "train/metrics.jsonl", "shards/train/index.json", "lerobot/train/meta/info.json"):
        assert (wd / path).exists(), path


def test_demo_think_small(tmp_path):
    """`molmoact2-demo --config=finetune:demo_think` at a small size: depth recorded in MuJoCo, codes fitted, the three Think styles
    trained (depth CE falls, the depth gates learn), the export re-imported predicts the same depth codes."""
    import numpy as np
    from data_pipelines.formats.lerobot_reader import LeRobotDataset
    from molmoact2_jax.convert.molmoact2_hf import import_hf
    from molmoact2_jax.inference.policy import Policy

    wd = tmp_path / "think"
    code = _exit_code(["--config=finetune:demo_think", "--workdir", str(wd), "--config.demo.train_episodes=2",
                       "--config.demo.heldout_episodes=1", "--config.total_steps=60", "--config.demo.vqvae_steps=30",
                       "--config.demo.think_eval_frames=6", "--config.demo.workers=0"])
    summary = json.loads((wd / "demo_summary.json").read_text())
    assert code == (0 if summary["model_beats_most_frequent_code"] else 1)
    t = summary["think"]
    for key in ("depth_accuracy", "full_depth_accuracy", "copy_previous_accuracy", "most_frequent_accuracy"):
        assert 0.0 <= t[key] <= 1.0, key
    assert t["think_latency_ms"] > 0 and t["full_latency_ms"] > 0 and t["episodes"] == 2 and t["frames"] == 6
    # measured on this run's settings: depth CE 5.1 -> 0.63 (0.12x); gates moved 3e-3 from their init
    assert t["depth_ce_last"] <= 0.5 * t["depth_ce_first"], t
    assert t["depth_gate"]["bias_max_abs_change"] > 3e-4 and t["depth_gate"]["kernel_max_abs"] > 3e-4, t
    # the recording holds metric depth (meters) of every frame of the first camera
    src = wd / "lerobot" / "heldout"
    depth = np.load(src / "depth" / "episode_000000.npy")
    assert depth.shape == (LeRobotDataset(src).episodes[0].length, 112, 112) and depth.dtype == np.float16
    # the table and arm lie within a few meters; pixels that hit nothing read the far plane
    assert 0.05 < float(depth.min()) < float(np.median(depth)) < 10.0 < float(depth.max())  # measured 0.45, 3.3, 113
    assert json.loads((wd / "shards" / "train" / "index.json").read_text())["depth_codes"] is True
    # export -> import: the same depth codes as the checkpoint the demo trained
    imported = tmp_path / "imported"
    import_hf(str(wd / "hf_export"), str(imported), progress=False)
    ds = LeRobotDataset(src)
    images = [ds.frames(0, k, [3])[0] for k in ds.camera_keys]
    state = ds.episode_columns(0)["observation.state"][3]
    codes = [Policy.load(str(p)).predict_action(images, ds.task(0), state, "metaworld_sawyer", think=True, seed=0).depth_bins
             for p in (wd / "final_checkpoint", imported)]
    np.testing.assert_array_equal(codes[0], codes[1])
