"""molmoact2-demo's settings: the recipe (configs/finetune.py `demo` / `demo_think`, with the command line's
--config.<field> overrides) checked and resolved once at start-up, before anything is written."""
from __future__ import annotations

import dataclasses

from molmoact2_jax.evaluation.config import METAWORLD_CAMERAS, SimConfig, get_config, parse_cameras, parse_rgba
from molmoact2_jax.evaluation.errors import SimEvalError

# Not training fields; the demo reads them from config.demo.
DEMO_FIELDS = ("think", "tasks", "cameras", "train_episodes", "heldout_episodes", "lossless", "goal_marker",
               "object_color", "object_marker", "action_noise", "vqvae_steps", "think_eval_frames", "execute_steps",
               "max_steps", "mode", "eval_block", "eval_episodes", "validation_seed", "test_seed",
               "validation_episodes", "workers")
BLOCKS = ("validation", "test")
MODES = ("continuous", "discrete")


class DemoSettingsError(ValueError):
    """A setting the demo cannot run with; the message names the field and the fix (one line, exit 2)."""


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """The demo's run: `cfg` is the training config (references resolved, derived fields set); the rest is
    config.demo as the stages take it."""
    cfg: object
    tasks: tuple[str, ...]
    train_episodes: int | dict
    sim: SimConfig

    @property
    def demo(self):
        return self.cfg.demo

    def block_seed(self, block: str) -> int:
        """The first closed-loop seed of the evaluation block `block` (validation or test)."""
        return int(self.demo.validation_seed if block == "validation" else self.demo.test_seed)


def episodes_per_task(text, tasks) -> int | dict:
    """config.demo.train_episodes: "40" (every task) or "40,80" (one count per task, in config.demo.tasks order)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"expected positive episode counts, got {text!r}")
    if len(parts) == 1:
        return int(parts[0])
    if len(parts) != len(tasks):
        raise ValueError(f"{len(parts)} counts for {len(tasks)} tasks ({','.join(tasks)}): give one, or one per task")
    return {t: int(p) for t, p in zip(tasks, parts)}


def sim_config(demo, image: int) -> SimConfig:
    """The MetaWorld settings every stage records and evaluates with (cameras at the model's image size)."""
    return get_config("metaworld", image_hw=(image, image), cameras=parse_cameras("metaworld", demo.cameras),
                      n_action_steps=demo.execute_steps, max_steps=demo.max_steps,
                      goal_marker_radius=demo.goal_marker or None,   # 0: the task's own marker
                      object_rgba=parse_rgba(demo.object_color, "config.demo.object_color"),
                      object_marker_radius=demo.object_marker or None)


def _fail(message: str):
    raise DemoSettingsError(message)


def resolve(recipe) -> DemoSettings:
    """The recipe as the demo runs it, or DemoSettingsError naming the first bad field."""
    if "demo" not in recipe or not all(k in recipe.demo for k in DEMO_FIELDS):
        _fail(f"--config={recipe.recipe}:{recipe.variant} has no config.demo settings; "
              "molmoact2-demo runs --config=finetune:demo or finetune:demo_think (configs/finetune.py)")
    cfg = recipe.copy_and_resolve_references()
    demo = cfg.demo
    tasks = tuple(t.strip() for t in demo.tasks.split(",") if t.strip())
    if not tasks:
        _fail(f"config.demo.tasks={demo.tasks!r}: name at least one MetaWorld task (e.g. reach-v3,push-v3)")
    try:
        train_episodes = episodes_per_task(demo.train_episodes, tasks)
    except ValueError as e:
        _fail(f"config.demo.train_episodes={demo.train_episodes}: {e}")
    if demo.object_marker < 0:
        _fail(f"config.demo.object_marker must be a radius in m (> 0; 0: the object as it is), got {demo.object_marker}")
    if not demo.action_noise >= 0:
        _fail(f"config.demo.action_noise must be >= 0 (a std in action units), got {demo.action_noise}")
    depth_styles = cfg.data.style_weights.robot_depth + cfg.data.style_weights.robot_depth_action
    if demo.think and not depth_styles > 0:
        _fail("config.demo.think=True scores depth codes, which this config does not train (config.data."
              "style_weights has no depth style): use --config=finetune:demo_think")
    if not demo.think and depth_styles > 0:
        _fail("config.data.style_weights: the depth styles need depth codes, which only the Think demo records: use "
              "--config=finetune:demo_think")
    if demo.mode not in MODES:
        _fail(f"config.demo.mode={demo.mode!r}: expected one of {', '.join(MODES)}")
    if demo.mode == "discrete" and cfg.model.action_mode != "both":
        _fail("config.demo.mode=discrete needs a model trained on OpenFAST tokens: add "
              "--config.model.action_mode=both")
    if not 0.0 <= cfg.ema.decay < 1.0:
        _fail(f"config.ema.decay must be a decay in [0, 1) (0: off), got {cfg.ema.decay}")
    if not cfg.model.flow.num_samples >= 1:
        _fail(f"config.model.flow.num_samples must be >= 1, got {cfg.model.flow.num_samples}")
    if demo.eval_block not in BLOCKS:
        _fail(f"config.demo.eval_block={demo.eval_block!r}: expected validation or test")
    if not demo.eval_episodes >= 1 or demo.validation_episodes < 0:
        _fail(f"config.demo.eval_episodes must be >= 1 and config.demo.validation_episodes >= 0, got "
              f"{demo.eval_episodes} and {demo.validation_episodes}")
    first, second = sorted([(demo.validation_seed, "validation"), (demo.test_seed, "test")])
    if first[0] + max(demo.eval_episodes, demo.validation_episodes) > second[0]:
        _fail(f"config.demo.validation_seed={demo.validation_seed} and test_seed={demo.test_seed}: the {first[1]} "
              f"block's episodes would reach into the {second[1]} block; keep the blocks apart")
    for group, lr in cfg.optimizer.lr.items():
        if not lr > 0:
            _fail(f"config.optimizer.lr.{group} must be > 0, got {lr}")
    cameras = [c.strip() for c in demo.cameras.split(",") if c.strip()]
    bad = [c for c in cameras if c not in METAWORLD_CAMERAS]
    if bad or not cameras:
        _fail(f"config.demo.cameras={demo.cameras!r}: unknown MetaWorld camera(s) {bad}; expected names from "
              f"{list(METAWORLD_CAMERAS)}, comma-separated")
    try:
        sim = sim_config(demo, cfg.model.vit.image_size)
    except SimEvalError as e:   # its message names the field (config.demo.object_color)
        _fail(str(e))
    # Derived from the settings above, recorded with the run (the trainer writes its config to run_info.json).
    cfg.data.max_cameras = len(sim.camera_names)
    if cfg.model.action_mode == "continuous":
        # Prompt-only examples have no LM loss; with its weight 0 the jitted step does not compute the LM head.
        cfg.model.loss.ce_weight = 0.0
    return DemoSettings(cfg=cfg, tasks=tasks, train_episodes=train_episodes, sim=sim)
