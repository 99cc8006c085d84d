"""Policies for closed-loop evaluation.

Protocol: `reset()` at the start of every episode, and
  act(observation) -> np.ndarray [n_steps, action_dim] (robot units)
with observation = {"images": [HxWx3 uint8, camera order], "state": np.ndarray, "task": str}
(plus "privileged", the simulator's own observation, which only the scripted expert reads).
The evaluator executes up to `n_action_steps` of the returned actions before asking again.

Baselines: `random` (uniform in the action bounds), `mean-action` (the dataset's mean action from
norm stats or a LeRobot dataset's meta/stats.json), `expert` (MetaWorld's scripted policy).
`ModelPolicy` adapts `molmoact2_jax.inference.Policy` after checking that the checkpoint's action dim
and cameras fit the environment.
"""
from __future__ import annotations

import json
import warnings
from typing import Protocol, runtime_checkable

import numpy as np

from molmoact2_jax.evaluation.config import SimConfig, load_norm_stats, select_tag
from molmoact2_jax.evaluation.errors import SimEvalError
from molmoact2_jax.evaluation.envs import ensure_render_backend
from molmoact2_jax.checkpoint_io import assets
from molmoact2_jax import storage
from molmoact2_jax import inference   # lazy package: jax is imported only once a model is loaded

BASELINES = ("mean-action", "random", "expert")


@runtime_checkable
class SimPolicy(Protocol):
    """`uses_images` (optional, default True): False lets the evaluator skip rendering for this policy."""

    def reset(self) -> None: ...

    def act(self, observation: dict) -> np.ndarray: ...


class RandomPolicy:
    name = "random"
    uses_images = False

    def __init__(self, cfg: SimConfig, n_steps: int | None = None, seed: int = 0):
        self.low, self.high = np.asarray(cfg.action_low, np.float32), np.asarray(cfg.action_high, np.float32)
        self.n_steps = n_steps or cfg.n_action_steps
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def act(self, observation: dict) -> np.ndarray:
        return self.rng.uniform(self.low, self.high, (self.n_steps, len(self.low))).astype(np.float32)


class MeanActionPolicy:
    name = "mean-action"
    uses_images = False

    def __init__(self, mean, n_steps: int = 1):
        self.mean = np.asarray(mean, np.float32).reshape(-1)
        self.n_steps = n_steps

    @classmethod
    def from_source(cls, cfg: SimConfig, source: str | None, tag: str | None = None,
                    n_steps: int | None = None) -> "MeanActionPolicy":
        """source: a norm_stats.json, a checkpoint dir with (assets/)norm_stats.json, or a LeRobot dataset."""
        n_steps = n_steps or cfg.n_action_steps
        source = source or cfg.norm_stats_path
        if source is None:
            raise SimEvalError("--policy mean-action needs action statistics: pass --norm-stats "
                               "(norm_stats.json, checkpoint dir or LeRobot dataset dir)")
        p = storage.as_path(source)
        if p.is_dir() and (p / "meta/stats.json").is_file():
            stats = json.loads((p / "meta/stats.json").read_text())
            mean = stats["action"]["mean"]
        else:
            if p.is_dir():
                p = _norm_stats_path(p)
            stats = load_norm_stats(p)
            use_tag = tag or (cfg.norm_tag if cfg.norm_tag in stats.tags else None)
            mean = select_tag(stats, use_tag, where=str(p)).action_stats.mean
        if len(mean) != cfg.action_dim:
            raise SimEvalError(f"mean action from {source} has {len(mean)} dims; {cfg.simulator} takes "
                               f"{cfg.action_dim}-D actions")
        return cls(mean, n_steps)

    def reset(self) -> None:
        pass

    def act(self, observation: dict) -> np.ndarray:
        return np.tile(self.mean, (self.n_steps, 1))


class ExpertPolicy:
    """MetaWorld's scripted expert for each task (reads observation['privileged'])."""
    name = "expert"
    uses_images = False

    def __init__(self, cfg: SimConfig, task_of_instruction: dict[str, str] | None = None, n_steps: int = 1):
        if cfg.simulator != "metaworld":
            raise SimEvalError(f"--policy expert: no scripted expert for {cfg.simulator} (MetaWorld only)")
        ensure_render_backend()
        from metaworld.policies import ENV_POLICY_MAP  # optional: sim extra
        self._map = ENV_POLICY_MAP
        self._experts: dict[str, object] = {}
        self.n_steps = n_steps

    def expert_for(self, task: str):
        if task not in self._experts:
            if task not in self._map:
                raise SimEvalError(f"no scripted MetaWorld expert for task {task!r}")
            self._experts[task] = self._map[task]()
        return self._experts[task]

    def reset(self) -> None:
        pass

    def act(self, observation: dict) -> np.ndarray:
        raw = observation.get("privileged")
        env_task = observation.get("env_task")
        if raw is None or env_task is None:
            raise SimEvalError("the expert policy needs the simulator observation ('privileged', 'env_task')")
        with warnings.catch_warnings():   # "Constant(s) may be too high": the env clips to [-1, 1]
            warnings.simplefilter("ignore", UserWarning)
            a = self.expert_for(env_task).get_action(raw)
        return np.clip(np.asarray(a, np.float32), -1.0, 1.0)[None]


def _norm_stats_path(checkpoint):
    """assets.find_norm_stats, its one-line FileNotFoundError as the SimEvalError molmoact2-eval reports."""
    try:
        return storage.as_path(assets.find_norm_stats(str(checkpoint)))
    except FileNotFoundError as e:
        raise SimEvalError(str(e)) from None


def check_checkpoint_fits(checkpoint, cfg: SimConfig, norm_tag: str | None = None) -> dict:
    """Reads the checkpoint's norm stats; SimEvalError when its action dim or cameras do not fit the env.

    Returns {"tag", "action_dim", "camera_order" (env camera index per checkpoint camera), "n_action_steps"}.
    """
    path = _norm_stats_path(checkpoint)
    stats = load_norm_stats(path)
    info = select_tag(stats, norm_tag or (cfg.norm_tag if cfg.norm_tag in stats.tags else None),
                      where=f"checkpoint {checkpoint}")
    tag, adim = info.name, info.action_dim
    if adim != cfg.action_dim:
        raise SimEvalError(f"checkpoint {checkpoint} predicts {adim}-D actions (tag {tag}) but {cfg.simulator} "
                           f"takes {cfg.action_dim}-D actions")
    keys = list(info.camera_keys)
    order = list(range(len(cfg.cameras)))
    if keys:
        if len(keys) != len(cfg.cameras):
            raise SimEvalError(f"checkpoint {checkpoint} expects {len(keys)} cameras {keys} (tag {tag}) but the "
                               f"{cfg.simulator} config renders {len(cfg.cameras)} {list(cfg.camera_keys)}")
        if set(keys) == set(cfg.camera_keys):
            order = [list(cfg.camera_keys).index(k) for k in keys]
        elif set(keys) & set(cfg.camera_keys):
            raise SimEvalError(f"checkpoint {checkpoint} cameras {keys} (tag {tag}) do not match the "
                               f"{cfg.simulator} cameras {list(cfg.camera_keys)}")
        # Disjoint names (another naming scheme): cameras go in config order.
    if info.state_dim != cfg.state_dim:
        raise SimEvalError(f"checkpoint {checkpoint} takes a {info.state_dim}-D state (tag {tag}) but "
                           f"{cfg.simulator} gives a {cfg.state_dim}-D state")
    return {"tag": tag, "action_dim": adim, "camera_order": order,
            "n_action_steps": info.n_action_steps, "norm_stats_path": str(path)}


class ModelPolicy:
    """Adapter: molmoact2_jax.inference.Policy (or any object with predict_action) -> SimPolicy."""
    name = "model"
    uses_images = True

    def __init__(self, policy, norm_tag: str, n_action_steps: int, mode: str | None = None,
                 camera_order: list[int] | None = None):
        if not hasattr(policy, "predict_action"):
            raise TypeError("ModelPolicy wraps an object with predict_action(images, task, state, norm_tag, ...)")
        self.policy, self.norm_tag, self.n_action_steps, self.mode = policy, norm_tag, n_action_steps, mode
        self.camera_order = camera_order

    @classmethod
    def load(cls, checkpoint, cfg: SimConfig, norm_tag: str | None = None, n_action_steps: int | None = None,
             mode: str | None = None) -> "ModelPolicy":
        fit = check_checkpoint_fits(checkpoint, cfg, norm_tag)   # fail fast, before loading weights
        n = n_action_steps or fit["n_action_steps"] or cfg.n_action_steps
        return cls(inference.Policy.load(str(checkpoint)), fit["tag"], int(n), mode, fit["camera_order"])

    def reset(self) -> None:
        if hasattr(self.policy, "reset"):
            self.policy.reset()

    def act(self, observation: dict) -> np.ndarray:
        images = observation["images"]
        if self.camera_order is not None:
            images = [images[i] for i in self.camera_order]
        kw = {"n_action_steps": self.n_action_steps}
        if "episode_seed" in observation:   # flow noise from (episode seed, query): reproducible on any workers
            kw["seed"] = int(observation["episode_seed"]) * 10_000 + int(observation.get("query", 0))
        if self.mode is not None:
            kw["mode"] = self.mode
        out = self.policy.predict_action(images, observation["task"], observation["state"], self.norm_tag, **kw)
        actions = np.asarray(getattr(out, "actions", out), np.float32)
        return actions.reshape(-1, actions.shape[-1])


def make_baseline(name: str, cfg: SimConfig, *, norm_stats: str | None = None, norm_tag: str | None = None,
                  n_steps: int | None = None, seed: int = 0):
    if name == "random":
        return RandomPolicy(cfg, n_steps, seed)
    if name == "mean-action":
        return MeanActionPolicy.from_source(cfg, norm_stats, norm_tag, n_steps)
    if name == "expert":
        return ExpertPolicy(cfg)
    raise SimEvalError(f"unknown policy {name!r}; expected one of {list(BASELINES)} or --checkpoint DIR")
