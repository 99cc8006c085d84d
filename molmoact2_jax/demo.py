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
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.formats.lerobot_reader import LeRobotDataset
from data_pipelines.norm_stats import NormStats
from data_pipelines.stats import write_norm_stats
from data_pipelines.transforms.normalize import normalize
from data_pipelines.transforms.robot_inputs import robot_transforms
from molmoact2_jax.evaluation.config import SIM_SETTINGS_FILE, get_config, parse_cameras, parse_suite, sim_settings
from molmoact2_jax.evaluation.errors import SimEvalError
from molmoact2_jax.evaluation.evaluator import EvalOptions, evaluate
from molmoact2_jax.evaluation.policies import ModelPolicy, make_baseline
from molmoact2_jax.evaluation.recorder import RecordOptions, record
from molmoact2_jax.inference.client import PolicyClient
from molmoact2_jax.inference.server import ServerProcess
from molmoact2_jax.recipes import load_recipe, recipe_path
from molmoact2_jax.tokenizers.openfast import OpenFAST

os.environ.setdefault("MUJOCO_GL", "egl")  # headless; before mujoco is imported (lazily, by evaluation)

TASKS = ("reach-v3", "push-v3")
IMAGE = 112  # camera size for recording and the model (8x8 patches -> 16 tokens per camera)
CAMERAS = "corner2,gripperPOV"
ACTION_DIMS = ("dx", "dy", "dz", "gripper")   # MetaWorld: end-effector position delta + gripper effort
EXPERT_STEPS = 300   # recording limit per expert episode (the policy's closed-loop limit is --max-steps)
EVAL_SEED = 900  # closed-loop seeds 900+ (train 0+, held-out 500+; seed = base + 1000 * task index + episode)


def stage(n: int, title: str, total: int = 8):
    print(f"\n[{n}/{total}] {title}", flush=True)
    return time.perf_counter()


def done(t0: float, what: str = ""):
    print(f"      done in {time.perf_counter() - t0:.1f}s {what}", flush=True)


def sim_config(cameras: str, image: int, execute_steps: int, max_steps: int, goal_marker: float | None = None):
    return get_config("metaworld", image_hw=(image, image), cameras=parse_cameras("metaworld", cameras),
                      n_action_steps=execute_steps, max_steps=max_steps, goal_marker_radius=goal_marker)


def _recorded_as(path: Path, cfg, episodes: int, seed: int, tasks, storage: str, depth: bool = False) -> bool:
    """An existing recording made with these settings (else it is recorded again)."""
    meta = path / "meta" / "sim_recording.json"
    if not meta.exists():
        return False
    s = json.loads(meta.read_text())
    return (s.get("cameras") == list(cfg.camera_names) and s.get("image_hw") == list(cfg.image_hw)
            and s.get("seed") == seed and s.get("goal_marker_radius") == cfg.goal_marker_radius and s.get("image_storage") == storage and s.get("suite") == "metaworld:" + ",".join(tasks)
            and bool(s.get("depth")) == depth
            and all(v.get("episodes") == episodes for v in s.get("tasks", {}).values()))


def record_data(wd: Path, cfg, tasks, train_eps: int, heldout_eps: int, workers: int, storage: str = "image",
                depth: bool = False):
    suite = parse_suite("metaworld:" + ",".join(tasks))
    out = {}
    for name, eps, seed in (("train", train_eps, 0), ("heldout", heldout_eps, 500)):
        path = wd / "lerobot" / name
        if not _recorded_as(path, cfg, eps, seed, tasks, storage, depth):
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(wd / "shards" / name, ignore_errors=True)
            # Lossless frames: the goal marker is 1-2 pixels at 112 px, and LeRobot's mp4 (crf 30, yuv420p)
            # erases it, so a policy trained on the videos never sees the goal it is evaluated on.
            s = record(suite, cfg, RecordOptions(episodes=eps, seed=seed, workers=workers, codec="h264", max_steps=EXPERT_STEPS,
                                                 image_storage=storage, only_success=True, depth=depth), path)
            rates = {t: f"{v['successes']}/{v['episodes']}" for t, v in s.get("tasks", {}).items()}
            print(f"      {name}: expert successes {rates}, {s['frames']} frames")
        out[name] = path
    return out


def convert_data(wd: Path, datasets: dict, horizon: int, image: int, workers: int, depth_codes: dict | None = None):
    shards = {}
    for name, src in datasets.items():
        shards[name] = wd / "shards" / name
        shutil.rmtree(shards[name], ignore_errors=True)
        convert(ConvertOptions(source=f"lerobot:{src}", embodiment="metaworld", out=str(shards[name]),
                               horizon=horizon, image_size=image, workers=workers,
                               depth_codes=str(depth_codes[name]) if depth_codes else None))
    stats_path = wd / "norm_stats.json"
    write_norm_stats([str(shards["train"])], stats_path)
    return shards, stats_path


def fit_tokenizers(wd: Path, train_src: Path, stats_path: Path, tag: str, horizon: int):

    ds = LeRobotDataset(train_src)
    info = NormStats.load(stats_path).tag(tag)
    corpus = [info.setup_type, info.control_mode, "The task is to . The setup is . The current "
              "state of the robot is . The expected control mode is . Given these, what action should the robot "
              "take to complete the task?", "user", "assistant", "Image"]
    chunks = []
    for ep in range(len(ds.episodes)):
        corpus.append(ds.task(ep))
        acts = ds.episode_columns(ep, keys=("action",))["action"]
        norm = normalize(acts, info.action_stats, info.norm_mode)
        for t in range(0, len(norm) - horizon + 1, 2):
            chunks.append(norm[t:t + horizon])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus * 5, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    (wd / "tokenizer").mkdir(exist_ok=True)
    tok.save(str(wd / "tokenizer" / "tokenizer.json"))
    fast = OpenFAST.fit(chunks, vocab_size=1024, scale=10)
    fast.save(wd / "openfast")
    enc = fast.encode(np.stack(chunks[:200]))
    print(f"      text vocab {tok.get_vocab_size()}, OpenFAST: {len(chunks)} chunks, "
          f"{np.mean([len(e) for e in enc]):.1f} tokens per {horizon}x{chunks[0].shape[1]} chunk")
    return wd / "tokenizer" / "tokenizer.json", wd / "openfast"


def train_config(wd: Path, shards: dict, stats_path: Path, tokenizer: Path, openfast: Path, args):
    c = load_recipe(recipe_path("finetune", "tiny"))
    c.total_steps = args.steps
    c.model.vit.image_size = args.image_size
    if args.vit_width:   # a wider tiny ViT (the tiny default is 32)
        w = int(args.vit_width)
        c.model.vit.hidden_size = c.model.connector.hidden_size = w
        c.model.vit.head_dim = c.model.connector.head_dim = w // c.model.vit.num_heads
        c.model.vit.mlp_dim = 2 * w
    c.model.action_mode = "both"
    c.data.source = "arrayrecord"
    c.data.sources = [{"path": str(shards["train"]), "weight": 1.0}]
    c.data.eval_sources = [{"path": str(shards["heldout"]), "weight": 1.0}]
    c.data.norm_stats, c.data.tokenizer, c.data.openfast = str(stats_path), str(tokenizer), str(openfast)
    c.data.global_batch_size = args.batch
    # The demo's prompts are ~130 tokens (16 image tokens per camera at 112 px): a longer pad only costs time.
    c.data.seq_len = args.seq_len
    c.data.max_cameras = len(args.cameras.split(","))
    c.data.augment = args.augment
    c.optimizer.warmup_steps = 20
    c.checkpoint.every_steps = max(args.steps // 2, 1)
    c.trainer.eval_every_steps = max(args.steps // 4, 1)
    c.trainer.eval_batches = 2
    return c


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


def save_checkpoint(wd: Path, params, cfg, sim_cfg, stats_path: Path, tokenizer: Path, openfast: Path) -> Path:
    from molmoact2_jax.checkpoint_io import params as params_io  # lazy: imports jax
    ckpt = wd / "final_checkpoint"
    params_io.save_params(str(ckpt), params, cfg.model)
    assets = ckpt / "assets"
    assets.mkdir(exist_ok=True)
    shutil.copy(stats_path, assets / "norm_stats.json")
    shutil.copy(tokenizer, assets / "tokenizer.json")
    shutil.copytree(openfast, assets / "openfast", dirs_exist_ok=True)
    # How the policy was trained to act (cameras, image size, actions per query, episode length), so
    # `molmoact2-eval --checkpoint EXPORT` evaluates it that way with no other flag.
    (assets / SIM_SETTINGS_FILE).write_text(json.dumps(sim_settings(sim_cfg), indent=2))
    return ckpt


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
    ap.add_argument("--cameras", default=CAMERAS, help="MetaWorld cameras, policy order (default: %(default)s)")
    ap.add_argument("--image-size", type=int, default=IMAGE, help="camera and model image size (default: %(default)s)")
    ap.add_argument("--think", action="store_true",
                    help="MolmoThink: record depth, fit depth codes, train the Think styles, score depth codes")
    ap.add_argument("--train-episodes", type=int, default=None, help="per task (default: 40; --think: 15)")
    ap.add_argument("--heldout-episodes", type=int, default=3, help="per task (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: 800; --think: 600)")
    ap.add_argument("--vit-width", type=int, default=0, help="ViT width (default: the tiny model's, 32)")
    ap.add_argument("--batch", type=int, default=8, help="training batch (default: %(default)s)")
    ap.add_argument("--seq-len", type=int, default=None,
                    help="training sequence length (default: 160; --think: 320, for the 102 depth tokens)")
    ap.add_argument("--vqvae-steps", type=int, default=300, help="--think: depth VQ-VAE steps (default: %(default)s)")
    ap.add_argument("--think-eval-frames", type=int, default=40,
                    help="--think: held-out frames whose depth codes are scored (default: %(default)s)")
    # Off by default: the cameras are fixed, and crops / rotations move the few pixels that place the goal.
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                    help="training image augmentation (spec 5.6; default: off)")
    ap.add_argument("--lossless", action=argparse.BooleanOptionalAction, default=True,
                    help="record PNG frames (default) instead of LeRobot's lossy mp4 videos")
    ap.add_argument("--goal-marker", type=float, default=None,
                    help="draw the goal marker with this radius in m (default: the task's own, 0.02)")
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
    for name, plain, think in (("train_episodes", 40, 15), ("steps", 800, 600), ("seq_len", 160, 320)):
        if getattr(args, name) is None:
            setattr(args, name, think if args.think else plain)
    try:
        sim_cfg = sim_config(args.cameras, args.image_size, args.execute_steps, args.max_steps, args.goal_marker)
    except SimEvalError as e:
        ap.error(str(e))   # exit 2 naming the bad flag value, before anything is written
    wd = Path(args.workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    t_all = time.perf_counter()
    seconds = {}
    if args.think:
        return think_main(args, sim_cfg, wd, tasks)

    t0 = stage(1, f"record MetaWorld expert episodes ({', '.join(tasks)}) as LeRobot v3.0")
    datasets = record_data(wd, sim_cfg, tasks, args.train_episodes, args.heldout_episodes, args.workers,
                           "image" if args.lossless else "video")
    done(t0)
    seconds["record"] = time.perf_counter() - t0
    t0 = stage(2, "convert to ArrayRecord shards + norm_stats.json")
    shards, stats_path = convert_data(wd, datasets, sim_cfg.action_horizon, args.image_size, args.workers)
    done(t0)
    t0 = stage(3, "fit the text tokenizer and the OpenFAST action tokenizer")
    tokenizer, openfast = fit_tokenizers(wd, datasets["train"], stats_path, sim_cfg.norm_tag, sim_cfg.action_horizon)
    done(t0)

    t0 = stage(4, f"train the tiny MolmoAct2 for {args.steps} steps")
    from molmoact2_jax.training import trainer  # lazy: imports jax; --help must not
    cfg = train_config(wd, shards, stats_path, tokenizer, openfast, args)
    shutil.rmtree(wd / "train", ignore_errors=True)   # a fresh run, not a resume of an older demo's
    out = trainer.train(cfg, str(wd / "train"))
    import jax  # lazy: --help must not import jax
    params = jax.device_get(out["state"].params)
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
                            "vit_width": args.vit_width or 32,
                            "augment": args.augment, "lossless": args.lossless, "mode": args.mode or "continuous",
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
    from molmoact2_jax import demo_think  # lazy: it imports this module
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
