"""How the closed-loop demo scores its model: held-out action error against the mean action, and closed-loop
MetaWorld success against the mean-action and random policies."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_pipelines.norm_stats import NormStats
from data_pipelines.transforms.robot_inputs import robot_transforms
from molmoact2_jax.evaluation.config import parse_suite
from molmoact2_jax.evaluation.evaluator import EvalOptions, evaluate
from molmoact2_jax.evaluation.policies import ModelPolicy, make_baseline

ACTION_DIMS = ("dx", "dy", "dz", "gripper")   # MetaWorld: end-effector position delta + gripper effort
POLICIES = ("molmoact2-tiny", "mean-action", "random")


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


def closed_loop(wd: Path, export: Path, sim_cfg, stats_path: Path, tasks, episodes: int, seed: int,
                mode: str | None, workers: int, policies=POLICIES, out: Path | None = None) -> dict:
    """{policy: {task: success, successes, episodes, ci95 (Wilson), final distance}} on seeds `seed`+; each
    policy's report and videos under `out` (default wd/closed_loop)/<policy>."""
    cfg = sim_cfg.replace(norm_stats_path=str(stats_path))
    suite = parse_suite("metaworld:" + ",".join(tasks))
    table = {}
    for name in policies:
        model = name == "molmoact2-tiny"
        policy = (ModelPolicy.load(str(export), cfg, mode=mode) if model else
                  make_baseline(name, cfg, norm_stats=str(stats_path)))
        # Baselines ignore the cameras (nothing is rendered for them), but 100 episodes of physics per task still
        # take a minute in one process: every policy runs in the workers.
        opts = EvalOptions(episodes=episodes, videos_per_task=1 if model else 0, policy_name=name,
                           progress=True, seed=seed, workers=workers)
        report = evaluate(policy, suite, cfg, opts, (out or wd / "closed_loop") / name)
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
