"""Record MetaWorld scripted-expert demonstrations as a LeRobot v3.0 dataset.

Each episode gets its own seed (seed0 + 1000 * task_index + episode), which draws the object and
goal positions; the expert acts on the simulator state and the dataset stores, per frame, the
two camera views (config order, e.g. corner2 + the gripperPOV wrist view), the 4-D proprio state
(end-effector xyz + gripper opening), the 4-D action and the task's templated instruction.
An episode ends `post_success_steps` frames after success (or at max_steps).
With `action_noise` > 0 the executed arm action is the expert's plus Gaussian noise (std in action units, seeded by
the episode; the gripper command is executed as given, since a jittered grip drops the object) while the dataset keeps
the expert's clean action as the label (DART, Laskey et al. 2017): the recorded states then include the drifts a
learned policy makes, each labelled with the expert's correction, which plain demonstrations never show.

Episodes run in a multiprocessing pool (spawned workers, one env per task per worker); the
dataset is written with data_pipelines' LeRobot writer. Besides the LeRobot files, meta/
gets sim_episodes.jsonl (task, seed, success, length, final distance per episode) and
sim_recording.json (config and per-task success rates). With `depth`, the first camera's metric depth (MuJoCo's
depth buffer, meters) of every frame is stored next to the episode as depth/episode_XXXXXX.npy (float16
[T, H, W], episode index of the dataset), for MolmoThink depth codes (molmoact2-depth-codes --sim-depth).
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

from data_pipelines.embodiments import EMBODIMENTS, Embodiment
from data_pipelines.episode import Episode
from data_pipelines.formats.lerobot_writer import WriteOptions, write_lerobot

from molmoact2_jax.progress import progress_bar
from molmoact2_jax.evaluation.config import DRAWING_FIELDS, SimConfig, SuiteSpec, sim_settings
from molmoact2_jax.evaluation.envs import MetaWorldEnv, check_metaworld_tasks, ensure_render_backend
from molmoact2_jax.evaluation.policies import ExpertPolicy
from molmoact2_jax.evaluation.errors import SimEvalError

_ENVS: dict = {}
_EXPERT = None


@dataclasses.dataclass
class RecordOptions:
    episodes: int | dict = 10          # per task: one count for all, or {task: count}
    max_steps: int | None = None       # default: the config's
    post_success_steps: int = 5
    seed: int = 0
    workers: int = 0                   # 0: record in this process
    codec: str = "av1"                 # LeRobot's default; "h264" encodes faster
    # "video": mp4 at LeRobot's crf 30 (what real datasets hold; lossy: yuv420p smears a 2-pixel goal marker
    # away at 112 px); "image": lossless PNG frames in the parquet, the frames the policy sees in closed loop.
    image_storage: str = "video"
    depth: bool = False                # also store the first camera's metric depth per frame (depth/*.npy)
    only_success: bool = False         # drop episodes where the expert failed
    action_noise: float = 0.0          # std of the noise added to the executed (not the stored) action; see above
    progress: bool = True

    def episodes_of(self, task: str) -> int:
        if isinstance(self.episodes, dict):
            if task not in self.episodes:
                raise SimEvalError(f"RecordOptions.episodes names no count for task {task!r} "
                                   f"(it has {sorted(self.episodes)})")
            return int(self.episodes[task])
        return int(self.episodes)


def _record_one(args) -> dict:
    global _EXPERT
    cfg, task, task_index, episode, seed, max_steps, post, with_depth, noise, arm_dims = args
    if task not in _ENVS:
        _ENVS[task] = MetaWorldEnv(task, cfg)
    if _EXPERT is None:
        _EXPERT = ExpertPolicy(cfg)
    env = _ENVS[task]
    t0 = time.perf_counter()
    obs = env.reset(seed=seed, episode=episode)
    states, actions, executed, frames, depth = [], [], [], [[] for _ in cfg.cameras], []
    success_at, success = None, False
    rng = np.random.default_rng([seed, 7])   # the episode's own stream: same data on any worker count
    for t in range(max_steps):
        a = _EXPERT.act(dict(obs, env_task=task))[0]
        states.append(obs["state"])
        actions.append(a)
        for k, img in enumerate(obs["images"]):
            frames[k].append(img)
        if with_depth:
            depth.append(env.depth().astype(np.float16))
        executed.append(np.clip(a + noise * arm_dims * rng.standard_normal(a.shape), -1.0, 1.0) if noise > 0 else a)
        obs, ok, info = env.step(executed[-1])
        if ok and success_at is None:
            success_at, success = t + 1, True
        if success_at is not None and t + 1 >= success_at + post:
            break
    return {
        "task": task, "task_index": task_index, "episode": episode, "seed": seed, "success": success,
        "success_step": success_at, "length": len(states), "final_distance": env.goal_distance(),
        "instruction": env.instruction, "wall_s": time.perf_counter() - t0,
        "states": np.stack(states).astype(np.float32), "actions": np.stack(actions).astype(np.float32),
        "executed": np.stack(executed),   # what the robot did (the labels plus the DART noise); not stored
        "images": {cam.name: np.stack(f) for cam, f in zip(cfg.cameras, frames)},
        "depth": np.stack(depth) if with_depth else None,
    }


def _init_worker():
    ensure_render_backend()


def metaworld_embodiment(cfg: SimConfig) -> Embodiment:
    """The static `metaworld` embodiment of data_pipelines with this SimConfig's cameras and image size; the tag
    facts (names, tag, horizon, setup) must stay those of the static entry so `molmoact2-data convert` agrees."""
    emb = EMBODIMENTS["metaworld"]
    fixed = dict(tag=cfg.norm_tag, state_names=cfg.state_names, action_horizon=cfg.action_horizon,
                 setup_type=cfg.setup_type, control_mode=cfg.control_mode)
    changed = [k for k, v in fixed.items() if getattr(emb, k) != v]
    if changed or cfg.state_dim != cfg.action_dim:
        raise SimEvalError(f"SimConfig changes {changed or 'state/action dims'} of the static metaworld embodiment "
                           f"(data_pipelines/embodiments.py); recorded data would not convert as that embodiment")
    return dataclasses.replace(emb, fps=cfg.fps, cameras=cfg.camera_names, real_image_hw=cfg.image_hw)


def record(suite: SuiteSpec, cfg: SimConfig, opts: RecordOptions, out: str | Path) -> dict:
    """Runs the experts and writes the LeRobot v3.0 dataset to `out`; returns the recording summary."""
    if suite.simulator != "metaworld":
        raise SimEvalError(f"recording needs scripted experts; only metaworld suites are supported, got {suite}")
    tasks = check_metaworld_tasks(suite.tasks)
    out = Path(out)
    if (out / "meta/info.json").exists():
        raise SimEvalError(f"output {out} already holds a LeRobot dataset; choose a new --out")
    emb = metaworld_embodiment(cfg)
    max_steps = opts.max_steps or cfg.max_steps
    if not opts.action_noise >= 0:
        raise SimEvalError(f"action_noise must be >= 0 (a std in action units), got {opts.action_noise}")
    jobs = [(cfg, task, ti, ep, opts.seed + 1000 * ti + ep, max_steps, opts.post_success_steps, opts.depth,
             float(opts.action_noise), ~emb.gripper_dims())
            for ti, task in enumerate(tasks) for ep in range(opts.episodes_of(task))]
    results = []
    t0 = time.perf_counter()
    bar = progress_bar(total=len(jobs), unit="ep", desc=f"record {','.join(tasks)}", disable=not opts.progress)
    if opts.workers <= 0:
        _init_worker()
        try:
            for job in jobs:
                results.append(_record_one(job))
                bar.update()
        finally:
            for env in _ENVS.values():
                env.close()
            _ENVS.clear()
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(opts.workers, len(jobs)), initializer=_init_worker) as pool:
            for r in pool.imap_unordered(_record_one, jobs):
                results.append(r)
                bar.update()
    bar.close()
    sim_s = time.perf_counter() - t0
    results.sort(key=lambda r: (r["task_index"], r["episode"]))
    kept = [r for r in results if r["success"] or not opts.only_success]
    if not kept:
        raise SimEvalError("no successful expert episode to write (--only-success)")
    episodes = [Episode(states=r["states"], actions=r["actions"], images=r["images"], task=r["instruction"],
                        annotated_task=r["instruction"]) for r in kept]
    t1 = time.perf_counter()
    write_lerobot(out, emb, episodes, WriteOptions(version="v3.0", codec=opts.codec,
                                                                image_storage=opts.image_storage))
    if opts.depth:
        (out / "depth").mkdir(exist_ok=True)
        for i, r in enumerate(kept):
            np.save(out / "depth" / f"episode_{i:06d}.npy", r["depth"])
    write_s = time.perf_counter() - t1
    with open(out / "meta/sim_episodes.jsonl", "w") as f:
        for i, r in enumerate(kept):
            f.write(json.dumps({"episode_index": i, "task": r["task"], "instruction": r["instruction"],
                                "seed": r["seed"], "success": r["success"], "success_step": r["success_step"],
                                "length": r["length"], "final_distance": r["final_distance"]}) + "\n")
    per_task = {}
    for task in tasks:
        rs = [r for r in results if r["task"] == task]
        per_task[task] = {"episodes": len(rs), "successes": sum(r["success"] for r in rs),
                          "success_rate": sum(r["success"] for r in rs) / len(rs),
                          "mean_length": float(np.mean([r["length"] for r in rs]))}
    summary = {"suite": f"metaworld:{','.join(tasks)}", "embodiment": emb.name, "tag": emb.tag,
               "cameras": list(cfg.camera_names), "image_hw": list(cfg.image_hw),
               **{k: v for k, v in sim_settings(cfg).items() if k in DRAWING_FIELDS}, "fps": cfg.fps,
               "episodes_recorded": len(results), "episodes_written": len(kept),
               "frames": int(sum(r["length"] for r in kept)), "seed": opts.seed, "max_steps": max_steps,
               "workers": opts.workers, "codec": opts.codec,
               "image_storage": opts.image_storage, "action_noise": float(opts.action_noise), "tasks": per_task,
               "depth": ({"camera": cfg.camera_names[0], "dir": "depth", "units": "meters", "dtype": "float16",
                          "source": "mujoco depth buffer"} if opts.depth else None),
               "success_rate": sum(r["success"] for r in results) / len(results),
               "simulate_s": round(sim_s, 2), "write_s": round(write_s, 2)}
    (out / "meta/sim_recording.json").write_text(json.dumps(summary, indent=2))
    return summary
