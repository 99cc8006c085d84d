"""Closed-loop evaluation: a policy drives simulated episodes with action chunking.

Episodes (task x episode index, seed = seed0 + 1000 * task_index + episode) are spread over
environment workers; the policy runs in this process and is asked again once `n_action_steps`
of its last chunk were executed. An episode ends at success or after max_steps policy steps.

Outputs under `out`: report.json (per-task success rate with a Wilson interval, episode lengths,
final distance to the goal where the simulator has one, every episode), summary.png, and
videos/<task>_ep<k>.mp4 for the first `videos_per_task` episodes of each task.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import deque
from pathlib import Path

import av
import numpy as np

from molmoact2_jax.progress import progress_bar
from molmoact2_jax.evaluation.config import SimConfig, SuiteSpec
from molmoact2_jax.evaluation.errors import SimEvalError
from molmoact2_jax.evaluation.workers import make_workers

REPORT_FORMAT = "molmoact2_sim_eval.v1"


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


@dataclasses.dataclass
class EvalOptions:
    episodes: int = 10                  # per task
    max_steps: int | None = None        # default: the config's (per LIBERO suite)
    n_action_steps: int | None = None   # default: the config's
    workers: int = 0                    # 0: environments in this process
    seed: int = 0
    videos_per_task: int = 1
    video_fps: int | None = None
    progress: bool = True
    policy_name: str = "policy"


@dataclasses.dataclass
class _Slot:
    worker: object
    job: tuple | None = None            # (task, task_index, episode, seed)
    obs: dict | None = None
    queue: deque = dataclasses.field(default_factory=deque)
    steps: int = 0
    queries: int = 0
    success: bool = False
    distance: float | None = None
    initial_distance: float | None = None
    frames: list | None = None
    t0: float = 0.0
    policy_s: float = 0.0


def _jobs(suite: SuiteSpec, episodes: int, seed: int) -> list[tuple]:
    return [(task, ti, ep, seed + 1000 * ti + ep) for ti, task in enumerate(suite.tasks) for ep in range(episodes)]


def run_episodes(policy, suite: SuiteSpec, cfg: SimConfig, opts: EvalOptions, video_dir: Path | None = None):
    """Runs every (task, episode) and returns the per-episode result dicts (job order)."""
    max_steps = opts.max_steps or cfg.max_steps_for(suite.suite)
    n_exec = opts.n_action_steps or cfg.n_action_steps
    jobs = deque(_jobs(suite, opts.episodes, opts.seed))
    n_jobs = len(jobs)
    results = [None] * n_jobs
    order = {j: i for i, j in enumerate(jobs)}
    workers = make_workers(min(opts.workers, n_jobs), suite.simulator, suite.suite, cfg)
    slots = [_Slot(w) for w in workers]
    bar = progress_bar(total=n_jobs, unit="ep", desc=f"eval {opts.policy_name} on {suite}", disable=not opts.progress)
    fps = opts.video_fps or min(cfg.fps, 30)
    uses_images = getattr(policy, "uses_images", True)

    def start(slot):
        slot.job = jobs.popleft()
        task, _, ep, seed = slot.job
        slot.worker.send("reset", (task, seed, ep))

    def finish(slot):
        task, ti, ep, seed = slot.job
        res = {"task": task_label(suite, task), "instruction": slot.obs["task"], "episode": ep, "seed": seed,
               "success": slot.success, "length": slot.steps,
               "queries": slot.queries, "final_distance": slot.distance, "initial_distance": slot.initial_distance,
               "wall_s": round(time.perf_counter() - slot.t0, 3), "policy_s": round(slot.policy_s, 3)}
        if slot.frames is not None and video_dir is not None:
            path = video_dir / f"{res['task'].replace('/', '_')}_ep{ep}.mp4"
            write_video(slot.frames, path, fps)
            res["video"] = str(path.relative_to(video_dir.parent))
        results[order[slot.job]] = res
        bar.update()
        slot.job = None

    try:
        active = []
        for slot in slots:
            if jobs:
                start(slot)
                active.append(slot)
        pending_reset = set(id(s) for s in active)
        while active:
            # Receive the previous command's result (reset or step) from every active worker.
            for slot in active:
                out = slot.worker.recv()
                if id(slot) in pending_reset:
                    pending_reset.discard(id(slot))
                    task, ti, ep, seed = slot.job
                    slot.obs, slot.queue, slot.steps, slot.queries = out, deque(), 0, 0
                    slot.success, slot.t0, slot.policy_s = False, time.perf_counter(), 0.0
                    slot.frames = [] if ep < opts.videos_per_task and video_dir is not None else None
                    slot.distance = slot.initial_distance = None
                    policy.reset()
                else:
                    slot.obs, slot.success, info = out
                    slot.steps += 1
                    slot.distance = info.get("distance")
                if slot.initial_distance is None and slot.steps == 0:
                    slot.initial_distance = _initial_distance(slot.obs, suite.simulator)
                    slot.distance = slot.initial_distance
                if slot.frames is not None and slot.obs["images"]:
                    slot.frames.append(np.concatenate(slot.obs["images"], axis=1))
            # Finish episodes, start new ones, send the next action to the rest.
            still = []
            for slot in active:
                if slot.success or slot.steps >= max_steps:
                    finish(slot)
                    if jobs:
                        start(slot)
                        pending_reset.add(id(slot))
                        still.append(slot)
                    continue
                if not slot.queue:
                    # The episode's seed and query index let a sampling policy draw its noise from them, so an
                    # episode is the same whatever the number of workers or the order of their queries.
                    obs = dict(slot.obs, env_task=slot.job[0], episode_seed=slot.job[3], query=slot.queries)
                    t = time.perf_counter()
                    chunk = np.asarray(policy.act(obs), np.float32)
                    slot.policy_s += time.perf_counter() - t
                    if chunk.ndim == 1:
                        chunk = chunk[None]
                    if chunk.ndim != 2 or chunk.shape[1] != cfg.action_dim or len(chunk) == 0:
                        raise SimEvalError(f"policy returned actions of shape {chunk.shape}; expected "
                                           f"[n_steps, {cfg.action_dim}] for {suite.simulator}")
                    slot.queries += 1
                    slot.queue.extend(chunk[:n_exec])
                action = slot.queue.popleft()
                # Render only the frames someone looks at: the policy's next query, or a recorded video.
                slot.worker.send("step", (action, slot.frames is not None or (uses_images and not slot.queue)))
                still.append(slot)
            active = still
    finally:
        bar.close()
        for w in workers:
            w.close()
    return results


def task_label(suite: SuiteSpec, task: str) -> str:
    return f"{suite.suite}/{task}" if suite.simulator == "libero" else task


def _initial_distance(obs, simulator):
    raw = obs.get("privileged")
    if simulator == "metaworld" and raw is not None:
        return float(np.linalg.norm(raw[4:7] - raw[-3:]))
    return None


def write_video(frames: list[np.ndarray], path: Path, fps: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    H, W = frames[0].shape[:2]
    H2, W2 = H - H % 2, W - W % 2      # yuv420p needs even sizes
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=int(fps))
        stream.height, stream.width, stream.pix_fmt = H2, W2, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:H2, :W2]), "rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def summarize(results: list[dict], tasks) -> dict:
    per_task = {}
    for task in tasks:
        rs = [r for r in results if r["task"] == task]
        per_task[task] = _stats(rs)
    return {"tasks": per_task, "overall": _stats(results)}


def _stats(rs: list[dict]) -> dict:
    n = len(rs)
    k = sum(r["success"] for r in rs)
    lo, hi = wilson_interval(k, n)
    lengths = [r["length"] for r in rs]
    dists = [r["final_distance"] for r in rs if r["final_distance"] is not None]
    return {"episodes": n, "successes": k, "success_rate": k / n if n else 0.0, "ci95": [lo, hi],
            "mean_length": float(np.mean(lengths)) if lengths else None,
            "mean_success_length": float(np.mean([r["length"] for r in rs if r["success"]])) if k else None,
            "mean_final_distance": float(np.mean(dists)) if dists else None}


def plot_summary(report: dict, path: Path) -> Path:
    import matplotlib  # lazy: ~0.5 s with pyplot; keeps `import molmoact2_jax.evaluation` fast
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the Agg backend is chosen
    tasks = list(report["tasks"])
    rates = np.array([report["tasks"][t]["success_rate"] for t in tasks])
    ci = np.array([report["tasks"][t]["ci95"] for t in tasks]).reshape(-1, 2)
    lengths = [[e["length"] for e in report["episodes"] if e["task"] == t] for t in tasks]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(tasks) + 4), 4))
    x = np.arange(len(tasks))
    axes[0].bar(x, rates, color="tab:blue", alpha=0.8)
    axes[0].errorbar(x, rates, yerr=[rates - ci[:, 0], ci[:, 1] - rates], fmt="none", ecolor="k", capsize=4)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("success rate (95% Wilson CI)")
    axes[0].set_xticks(x, tasks, rotation=30, ha="right", fontsize=8)
    ov = report["overall"]
    axes[0].set_title(f"{report['policy']}: {ov['successes']}/{ov['episodes']} = {ov['success_rate']:.0%}")
    axes[1].boxplot(lengths, showmeans=True)
    axes[1].set_xticks(x + 1, tasks, rotation=30, ha="right", fontsize=8)
    axes[1].set_ylabel("episode length (policy steps)")
    axes[1].set_title(f"max {report['max_steps']} steps, up to {report['n_action_steps']} actions per query")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def evaluate(policy, suite: SuiteSpec, cfg: SimConfig, opts: EvalOptions, out: str | Path) -> dict:
    """Runs the episodes and writes report.json, summary.png and videos/ under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = run_episodes(policy, suite, cfg, opts, out / "videos" if opts.videos_per_task else None)
    wall = time.perf_counter() - t0
    report = {
        "format": REPORT_FORMAT, "suite": str(suite), "simulator": suite.simulator, "policy": opts.policy_name,
        "episodes_per_task": opts.episodes, "max_steps": opts.max_steps or cfg.max_steps_for(suite.suite),
        "n_action_steps": opts.n_action_steps or cfg.n_action_steps, "workers": opts.workers, "seed": opts.seed,
        "norm_tag": getattr(policy, "norm_tag", None),   # the checkpoint's stats entry the policy was asked for
        "cameras": list(cfg.camera_keys), "image_hw": list(cfg.image_hw),
        **summarize(results, [task_label(suite, t) for t in suite.tasks]),
        "wall_s": round(wall, 2),
        "env_steps_per_s": round(sum(r["length"] for r in results) / wall, 2) if wall > 0 else None,
        "episodes": results,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_summary(report, out / "summary.png")
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['policy']} on {report['suite']} ({report['episodes_per_task']} episodes/task, "
             f"max {report['max_steps']} steps)"]
    rows = list(report["tasks"].items()) + [("OVERALL", report["overall"])]
    for task, s in rows:
        d = s["mean_final_distance"]
        lines.append(f"  {task:28s} {s['successes']:3d}/{s['episodes']:<3d} {s['success_rate']:6.1%} "
                     f"CI95 [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]  len {s['mean_length']:.1f}"
                     + (f"  dist {d:.3f}" if d is not None else ""))
    return "\n".join(lines)
