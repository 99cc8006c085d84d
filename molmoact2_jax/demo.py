"""`molmoact2-demo [--workdir DIR]`: the whole stack end to end on a CPU, in a few minutes.

 1. record MetaWorld scripted-expert episodes as LeRobot v3.0 datasets (train + held-out seeds)
 2. convert them to ArrayRecord shards and compute norm_stats.json
 3. train a text tokenizer on the instructions and fit an OpenFAST action tokenizer on normalized chunks
 4. train the tiny MolmoAct2 (checkpoints, metrics.jsonl, TensorBoard) on the Grain pipeline
 5. held-out action error vs the mean-action predictor, and a PNG of predicted vs true trajectories + loss curve
 6. export to the Hugging Face MolmoAct2 layout
 7. closed-loop MetaWorld table: the trained policy (loaded from the export) vs mean-action and random
 8. serve the export over HTTP and answer one request
`--think`: MolmoThink instead (demo_think.py): depth recorded in simulation, a depth VQ-VAE fitted, Think-style
training, and depth-code accuracy and latency from the export.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from data_pipelines.formats.lerobot_reader import LeRobotDataset
from data_pipelines.norm_stats import NormStats
from data_pipelines.transforms.robot_inputs import robot_transforms
from molmoact2_jax.evaluation.config import parse_suite, sim_settings
from molmoact2_jax.evaluation.errors import SimEvalError
from molmoact2_jax.evaluation.evaluator import EvalOptions, evaluate
from molmoact2_jax.evaluation.policies import ModelPolicy, make_baseline
from molmoact2_jax.inference.client import PolicyClient
from molmoact2_jax.inference.server import ServerProcess
from molmoact2_jax.demo_pipeline import (convert_data, done, fit_tokenizers, record_data, save_checkpoint, sim_config,
                                         stage, train_config)

os.environ.setdefault("MUJOCO_GL", "egl")  # headless; before mujoco is imported (lazily, by evaluation)

TASKS = ("reach-v3", "push-v3")
IMAGE = 112  # camera size for recording and the model (8x8 patches -> 16 tokens per camera)
# The hand-tracking view shows the goal at 1.3 px per cm (corner2: 0.4) and, with the marker drawn at 0.05 m, 13 px
# wide; corner2 + the wrist view left the held-out dx error above the mean action's (README, issue 22 table).
CAMERAS = "behindGripper,corner"
GOAL_MARKER = 0.05
# The task's puck (red like the arm, dark on the table) drawn blue and 0.045 m wide (a scene-only geom; its contacts
# stay 0.02 m): the model's first dx then follows the puck (correlation 0.55 against 0.03) and push went from 11/60 to
# 16/60 with reach 56/60 (README, issue 22 runs W, Z5, AA).
OBJECT_COLOR = "0.1,0.4,1.0"
OBJECT_MARKER = 0.045
# DART: training episodes recorded with N(0, 0.5) added to the executed arm actions (labels stay the expert's).
# On 60 held-out seeds: reach 57/60 against 51/60 without, push 11/60 against 5/60 (README, issue 22 runs W, X);
# noise breaks some of the push expert's 2 cm alignments before it descends (0.5: 28-29 of 40 are kept).
ACTION_NOISE = 0.5
# Expert episodes per task: reach holds 56/60 from 40 and 50/60 from 30, push gains from more (16/60 from 40 at 1050
# steps, 28/60 from 50 at 1200; README, issue 22 runs AA, AC); the push expert keeps about 37 of 50 under DART.
TRAIN_EPISODES = {"reach-v3": 30, "push-v3": 50}
THINK_CAMERAS = "corner2,gripperPOV"
ACTION_DIMS = ("dx", "dy", "dz", "gripper")   # MetaWorld: end-effector position delta + gripper effort
EVAL_SEED = 900  # closed-loop seeds 900+ (train 0+, held-out 500+; seed = base + 1000 * task index + episode)


def action_error(cfg, params, shards: Path, max_batches: int = 64, noise_scale: float = 1.0) -> tuple[dict, list]:
    """Mean |error| in robot units over valid steps/dims of every frame of `shards` (in order, up to
    `max_batches` batches): the model's first step of each chunk and its whole chunk vs predicting the training-set
    mean action (per action dim and overall)."""
    import jax  # lazy: --help must not import jax
    from molmoact2_jax.models.molmoact2 import MolmoAct2  # lazy: imports jax
    from molmoact2_jax.training.data_source import make  # lazy: imports jax

    cfg = cfg.copy_and_resolve_references()
    cfg.data.eval_sources = [{"path": str(shards), "weight": 1.0}]
    frames = json.loads((shards / "index.json").read_text())["total_frames"]
    B = int(cfg.data.global_batch_size)
    model = MolmoAct2(cfg.model)
    data = make(cfg, "eval")
    info = NormStats.load(cfg.data.norm_stats).select()
    unnormalize = lambda a: robot_transforms(info).apply_outputs({"actions": a})["actions"]  # as Policy does
    d = info.action_dim
    mean = np.asarray(info.action_stats.mean, np.float32)
    sample = jax.jit(lambda p, b, z: model.sample_actions(p, b, noise=z))
    err = {"model_chunk": [], "model_first_step": [], "mean_action": []}
    traj = []
    for i in range(min(max_batches, -(-frames // B))):
        b = next(data)
        noise = noise_scale * np.random.default_rng(i).standard_normal(b["actions"].shape).astype(np.float32)
        pred = unnormalize(np.asarray(sample(params, b, noise))[..., :d])
        true = unnormalize(b["actions"][..., :d])
        valid = b["horizon_valid"]
        err["model_chunk"].append(np.abs(pred - true)[valid])
        err["mean_action"].append(np.abs(mean - true)[valid])
        err["model_first_step"].append(np.abs(pred - true)[:, 0][valid[:, 0]])
        traj.append((true[:, 0], pred[:, 0]))
    table = {}
    for k, v in err.items():
        e = np.concatenate(v)                                   # [n, d]
        table[k] = {"mean": float(e.mean()), "per_dim": [float(x) for x in e.mean(0)], "samples": len(e)}
    table["dims"] = list(ACTION_DIMS[:d])
    return table, traj


def print_error(title: str, err: dict):
    print(f"      {title} mean |action error| ({', '.join(err['dims'])}), {err['model_chunk']['samples']} steps:")
    for k in ("model_first_step", "model_chunk", "mean_action"):
        print(f"        {k:17s} {err[k]['mean']:.4f}  per dim {np.round(err[k]['per_dim'], 4).tolist()}")


def plot(wd: Path, traj, metrics_path: Path) -> Path:
    import matplotlib  # lazy: ~0.5 s, only for the plot
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the Agg backend is chosen
    rows = [json.loads(l) for l in open(metrics_path)]
    true = np.concatenate([t for t, _ in traj])[:60]
    pred = np.concatenate([p for _, p in traj])[:60]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for k, ax in enumerate(axes[:2]):
        ax.plot(true[:, k], label="true", color="k")
        ax.plot(pred[:, k], label="predicted", color="tab:orange", ls="--")
        ax.set_title(f"held-out episode: action[{k}], first step of each chunk", fontsize=10)
        ax.set_xlabel("frame")
        ax.legend()
    axes[2].plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss")
    ev = [(r["step"], r["eval_total_loss"]) for r in rows if "eval_total_loss" in r]
    if ev:
        axes[2].plot(*zip(*ev), "o-", label="held-out loss")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("step")
    axes[2].legend()
    fig.tight_layout()
    path = wd / "demo_summary.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


POLICIES = ("molmoact2-tiny", "mean-action", "random")


def closed_loop(wd: Path, export: Path, sim_cfg, stats_path: Path, tasks, episodes: int, seed: int,
                mode: str | None, workers: int) -> dict:
    """{policy: {task: success, successes, episodes, ci95 (Wilson), final distance}} on seeds `seed`+."""
    cfg = sim_cfg.replace(norm_stats_path=str(stats_path))
    suite = parse_suite("metaworld:" + ",".join(tasks))
    table = {}
    for name in POLICIES:
        model = name == "molmoact2-tiny"
        policy = (ModelPolicy.load(str(export), cfg, mode=mode) if model else
                  make_baseline(name, cfg, norm_stats=str(stats_path)))
        # Baselines ignore the cameras (nothing is rendered for them); the model's episodes render in workers.
        opts = EvalOptions(episodes=episodes, videos_per_task=1 if model else 0, policy_name=name,
                           progress=True, seed=seed, workers=workers if model else 0)
        report = evaluate(policy, suite, cfg, opts, wd / "closed_loop" / name)
        table[name] = {task: {k: report["tasks"][task][k] for k in
                              ("success_rate", "successes", "episodes", "ci95", "mean_final_distance")}
                       for task in tasks}
    print(f"\n      {'policy':16s} {'task':10s} {'success':>8s} {'95% Wilson CI':>15s} {'final dist (m)':>15s}")
    for name, rows in table.items():
        for task, r in rows.items():
            lo, hi = r["ci95"]
            print(f"      {name:16s} {task:10s} {r['successes']:3d}/{r['episodes']:<4d} "
                  f"{f'[{lo:.2f}, {hi:.2f}]':>15s} {r['mean_final_distance']:15.3f}")
    return table


def episodes_per_task(text, tasks) -> int | dict:
    """`--train-episodes`: "40" (every task) or "40,80" (one count per task, in --tasks order)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"expected positive episode counts, got {text!r}")
    if len(parts) == 1:
        return int(parts[0])
    if len(parts) != len(tasks):
        raise ValueError(f"{len(parts)} counts for {len(tasks)} tasks ({','.join(tasks)}): give one, or one per task")
    return {t: int(p) for t, p in zip(tasks, parts)}


def beats_mean_action(table: dict) -> bool:
    """The model's closed-loop successes, over every task, exceed the mean-action policy's."""
    total = lambda name: sum(r["successes"] for r in table[name].values())
    return total("molmoact2-tiny") > total("mean-action")


def serve_one(export: Path, heldout_src: Path, tag: str):
    server = ServerProcess(export, "--norm-tag", tag)
    try:
        client = PolicyClient(server.url, timeout=300)
        client.health()
        ds = LeRobotDataset(heldout_src)
        cols = ds.episode_columns(0)
        images = [ds.frames(0, key, [0])[0] for key in ds.camera_keys]
        actions = client.act(images=images, instruction=ds.task(0), state=cols["observation.state"][0])
        print(f"      POST /act -> actions {actions.shape}; first step {np.round(actions[0], 3).tolist()}; "
              f"expert's first action {np.round(cols['action'][0], 3).tolist()}")
        return actions
    finally:
        server.stop(timeout=30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="molmoact2-demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="molmoact2_demo",
                    help="folder for every output (datasets, shards, run, export, plots; default: %(default)s)")
    ap.add_argument("--tasks", default=",".join(TASKS),
                    help="comma-separated MetaWorld tasks (default: %(default)s)")
    ap.add_argument("--cameras", default=None,
                    help=f"MetaWorld cameras, policy order (default: {CAMERAS}; --think: {THINK_CAMERAS})")
    ap.add_argument("--image-size", type=int, default=IMAGE, help="camera and model image size (default: %(default)s)")
    ap.add_argument("--think", action="store_true",
                    help="MolmoThink: record depth, fit depth codes, train the Think styles, score depth codes")
    ap.add_argument("--train-episodes", default=None,
                    help="expert episodes per task: one count, or one per --tasks entry, comma-separated "
                         f"(default: {', '.join(f'{t} {n}' for t, n in TRAIN_EPISODES.items())}, other tasks 40; "
                         "--think: 15)")
    ap.add_argument("--heldout-episodes", type=int, default=3, help="per task (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: 1200; --think: 600)")
    ap.add_argument("--lr", type=float, default=None,
                    help="peak learning rate of every parameter group (default: the tiny finetune recipe's, 1e-3)")
    ap.add_argument("--ema", type=float, default=None,
                    help="decay of the params' moving average that is scored, exported and served (0: the raw "
                         "params; default: 0)")
    ap.add_argument("--vit-width", type=int, default=0, help="ViT width (default: the tiny model's, 32)")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default: 32; --think: 8)")
    ap.add_argument("--action-mode", choices=("continuous", "both"), default=None,
                    help="what the model is trained on: the flow head only (continuous, the demo's default) or "
                         "OpenFAST tokens + flow (both; --think's default, and what --mode discrete needs)")
    ap.add_argument("--seq-len", type=int, default=None,
                    help="training sequence length (default: 128, for the 121-token prompts of two 112 px cameras; "
                         "--think: 320, for the 102 depth tokens)")
    ap.add_argument("--flow-samples", type=int, default=None,
                    help="flow-matching noise draws per example and training step (default: 4; --think: the "
                         "recipe's 8, which cost 10%% more per step)")
    ap.add_argument("--vqvae-steps", type=int, default=300, help="--think: depth VQ-VAE steps (default: %(default)s)")
    ap.add_argument("--think-eval-frames", type=int, default=40,
                    help="--think: held-out frames whose depth codes are scored (default: %(default)s)")
    # Off by default: the cameras are fixed, and crops / rotations move the few pixels that place the goal.
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                    help="training image augmentation (spec 5.6; default: off)")
    ap.add_argument("--lossless", action=argparse.BooleanOptionalAction, default=True,
                    help="record PNG frames (default) instead of LeRobot's lossy mp4 videos")
    ap.add_argument("--goal-marker", type=float, default=None,
                    help=f"draw the goal marker with this radius in m; 0: the task's own, 0.02 (default: "
                         f"{GOAL_MARKER}; --think: 0)")
    ap.add_argument("--object-color", default=None,
                    help="R,G,B (0-1) the task's object (the puck) is drawn with; none: the task's own red "
                         f"(default: {OBJECT_COLOR}; --think: none)")
    ap.add_argument("--object-marker", type=float, default=None,
                    help="draw the task's object (the puck, radius 0.02 m) with this radius in m; 0: as it is "
                         f"(default: {OBJECT_MARKER or 0}; --think: 0)")
    ap.add_argument("--action-noise", type=float, default=None,
                    help="std (action units) of noise added to the expert's executed actions while recording the "
                         "training episodes, whose labels stay the clean expert actions (DART; default: "
                         f"{ACTION_NOISE}; --think: 0)")
    ap.add_argument("--execute-steps", type=int, default=8,
                    help="actions of each predicted chunk executed before re-planning (default: %(default)s)")
    ap.add_argument("--mode", default=None, help="closed-loop action head: continuous (default) or discrete")
    ap.add_argument("--eval-episodes", type=int, default=20,
                    help="closed-loop episodes per task and policy (default: %(default)s)")
    ap.add_argument("--eval-seed", type=int, default=EVAL_SEED,
                    help="closed-loop base seed, disjoint from the recorded ones (default: %(default)s)")
    ap.add_argument("--max-steps", type=int, default=120, help="closed-loop steps per episode (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2,
                    help="worker processes for recording, converting and the model's closed-loop episodes "
                         "(0: in this process; default: %(default)s)")
    args = ap.parse_args(argv)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    plain_episodes = ",".join(str(TRAIN_EPISODES.get(t, 40)) for t in tasks)
    for name, plain, think in (("train_episodes", plain_episodes, 15), ("steps", 1200, 600),
                               ("seq_len", 128, 320), ("flow_samples", 4, 8),
                               ("cameras", CAMERAS, THINK_CAMERAS), ("batch", 32, 8), ("goal_marker", GOAL_MARKER, 0),
                               ("object_color", OBJECT_COLOR, "none"), ("object_marker", OBJECT_MARKER, 0),
                               ("action_mode", "continuous", "both"), ("action_noise", ACTION_NOISE, 0.0)):
        if getattr(args, name) is None:
            setattr(args, name, think if args.think else plain)
    try:
        args.train_episodes = episodes_per_task(args.train_episodes, tasks)
    except ValueError as e:
        ap.error(f"--train-episodes: {e}")
    args.goal_marker = args.goal_marker or None   # 0: the task's own marker
    args.object_marker = args.object_marker or None
    if args.object_marker is not None and not args.object_marker > 0:
        ap.error(f"--object-marker must be a radius in m (> 0; 0: the object as it is), got {args.object_marker}")
    if args.ema is not None and not 0.0 <= args.ema < 1.0:
        ap.error(f"--ema must be a decay in [0, 1) (0: off), got {args.ema}")
    if not args.flow_samples >= 1:
        ap.error(f"--flow-samples must be >= 1, got {args.flow_samples}")
    if args.lr is not None and not args.lr > 0:
        ap.error(f"--lr must be > 0, got {args.lr}")
    if not args.action_noise >= 0:
        ap.error(f"--action-noise must be >= 0 (a std in action units), got {args.action_noise}")
    if args.mode == "discrete" and args.action_mode != "both":
        ap.error("--mode discrete needs a model trained on OpenFAST tokens: add --action-mode both")
    try:
        sim_cfg = sim_config(args.cameras, args.image_size, args.execute_steps, args.max_steps, args.goal_marker,
                             args.object_color, args.object_marker)
    except SimEvalError as e:
        ap.error(str(e))   # exit 2 naming the bad flag value, before anything is written
    wd = Path(args.workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    seconds = {}
    if args.think:
        return think_main(args, sim_cfg, wd, tasks)

    t0 = stage(1, f"record MetaWorld expert episodes ({', '.join(tasks)}) as LeRobot v3.0")
    datasets = record_data(wd, sim_cfg, tasks, args.train_episodes, args.heldout_episodes, args.workers,
                           "image" if args.lossless else "video", action_noise=args.action_noise)
    done(t0)
    seconds["record"] = time.perf_counter() - t0
    t0 = stage(2, "convert to ArrayRecord shards + norm_stats.json")
    # Lossless shards too: JPEG, like the mp4 before it, turns the 2-pixel goal marker grey.
    shards, stats_path = convert_data(wd, datasets, sim_cfg.action_horizon, args.image_size, args.workers,
                                      image_format="png" if args.lossless else "jpeg")
    done(t0)
    t0 = stage(3, "fit the text tokenizer and the OpenFAST action tokenizer")
    tokenizer, openfast = fit_tokenizers(wd, datasets["train"], stats_path, sim_cfg.norm_tag, sim_cfg.action_horizon)
    done(t0)

    t0 = stage(4, f"train the tiny MolmoAct2 for {args.steps} steps")
    from molmoact2_jax.training import trainer  # lazy: imports jax; --help must not
    cfg = train_config(wd, shards, stats_path, tokenizer, openfast, args)
    shutil.rmtree(wd / "train", ignore_errors=True)   # a fresh run, not a resume of an older demo's
    out = trainer.train(cfg, str(wd / "train"))
    cfg = out["config"]   # as trained: the tokenizer's token layout, sizes taken from the data
    import jax  # lazy: --help must not import jax
    state = out["state"]
    params = jax.device_get(state.params if state.ema_params is None else state.ema_params)
    done(t0, f"(final loss {out['last_metrics'].get('loss', float('nan')):.4f})")
    seconds["train"] = time.perf_counter() - t0

    t0 = stage(5, "held-out action error and plots")
    err, traj = action_error(cfg, params, shards["heldout"])
    fit, _ = action_error(cfg, params, shards["train"], max_batches=16)   # the first training episodes
    png = plot(wd, traj, wd / "train" / "metrics.jsonl")
    print_error("training episodes:", fit)
    print_error("held-out episodes:", err)
    e_model, e_mean = err["model_chunk"]["mean"], err["mean_action"]["mean"]
    print(f"      held-out: model {e_mean / max(e_model, 1e-9):.2f}x better than the mean action; plot {png}")
    done(t0)

    t0 = stage(6, "export to the Hugging Face MolmoAct2 layout")
    from molmoact2_jax.convert.molmoact2_hf import export_hf  # lazy: imports jax
    ckpt = save_checkpoint(wd, params, cfg, sim_cfg, stats_path, tokenizer, openfast)
    export = wd / "hf_export"
    if export.exists():
        shutil.rmtree(export)
    s = export_hf(str(ckpt), str(export))
    print(f"      {s}")
    done(t0)

    t0 = stage(7, f"closed-loop MetaWorld evaluation from the export ({args.eval_episodes} episodes per task, "
                  f"seeds {args.eval_seed}+)")
    table = closed_loop(wd, export, sim_cfg, stats_path, tasks, args.eval_episodes, args.eval_seed, args.mode,
                        args.workers)
    done(t0)
    seconds["closed_loop"] = time.perf_counter() - t0

    t0 = stage(8, "serve the export over HTTP and answer one request")
    serve_one(export, datasets["heldout"], sim_cfg.norm_tag)
    done(t0)
    ok = beats_mean_action(table)
    summary = {"closed_loop": table, "heldout_action_error": err, "train_action_error": fit,
               "settings": {**sim_settings(sim_cfg), "tasks": list(tasks), "train_episodes": args.train_episodes,
                            "heldout_episodes": args.heldout_episodes, "steps": args.steps, "batch": args.batch,
                            "lr": float(cfg.optimizer.lr.llm), "ema": float(cfg.ema.decay),
                            "seq_len": args.seq_len, "flow_samples": args.flow_samples,
                            "vit_width": args.vit_width or 32,
                            "augment": args.augment, "lossless": args.lossless, "mode": args.mode or "continuous",
                            "action_mode": args.action_mode, "action_noise": args.action_noise,
                            "eval_episodes": args.eval_episodes, "eval_seed": args.eval_seed},
               "export": str(export), "model_beats_mean_action": ok,
               "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "minutes": (time.perf_counter() - t_all) / 60}
    (wd / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nmolmoact2-demo: finished in {summary['minutes']:.1f} min; outputs in {wd}")
    if not ok:
        print("molmoact2-demo: the trained policy did not beat the mean action in closed loop", file=sys.stderr)
    return 0 if ok else 1


def think_main(args, sim_cfg, wd: Path, tasks) -> int:
    from molmoact2_jax import demo_think  # lazy: imports jax; --help must not
    think = demo_think.run(args, sim_cfg, wd, tasks)
    settings = {**sim_settings(sim_cfg), "tasks": list(tasks), "train_episodes": args.train_episodes,
                "heldout_episodes": args.heldout_episodes, "steps": args.steps, "batch": args.batch,
                "seq_len": args.seq_len, "vqvae_steps": args.vqvae_steps}
    ok = think["full_depth_accuracy"] > think["most_frequent_accuracy"]
    (wd / "demo_summary.json").write_text(json.dumps({"think": think, "settings": settings,
                                                      "model_beats_most_frequent_code": ok}, indent=2))
    print(f"\nmolmoact2-demo --think: finished in {think['minutes']:.1f} min; outputs in {wd}")
    if not ok:
        print("molmoact2-demo: the trained model's depth codes are no better than the most frequent code",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
