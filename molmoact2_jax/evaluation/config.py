"""Simulation configs: cameras, image size, action/state layout, norm tag, instruction templates, suites.

A suite spec names the simulator and its tasks:
  metaworld:reach-v3,push-v3      MetaWorld v3 tasks (names as in metaworld.ALL_V3_ENVIRONMENTS)
  metaworld:all                   every MetaWorld v3 task
  libero:libero_spatial           every task of a LIBERO suite
  libero:libero_spatial:0,3       tasks 0 and 3 of that suite
"""
from __future__ import annotations

import dataclasses

from data_pipelines.embodiments import EMBODIMENTS
from data_pipelines.norm_stats import NormStats, NormStatsError, TagInfo

from molmoact2_jax.evaluation.errors import SimEvalError


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    name: str                 # dataset / policy camera name (LeRobot key observation.images.<name>)
    sim_camera: str           # camera name inside the simulator
    rotate180: bool = False   # the simulator renders this view upside down


@dataclasses.dataclass(frozen=True)
class SimConfig:
    simulator: str                          # "metaworld" | "libero"
    embodiment: str                         # dataset embodiment name
    norm_tag: str                           # MolmoAct2 norm tag of the checkpoint's stats
    cameras: tuple[CameraSpec, ...]
    image_hw: tuple[int, int]
    action_dim: int
    state_names: tuple[str, ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    fps: int
    max_steps: int                          # per episode, policy steps
    n_action_steps: int                     # actions executed per policy query
    action_horizon: int                     # chunk length stored in tag metadata
    instruction_template: str = "{instruction}"
    fast_render: bool = True                # shadows, reflections and multisampling off (MetaWorld)
    norm_stats_path: str | None = None      # norm_stats.json (mean-action baseline, checkpoint checks)
    setup_type: str = ""
    control_mode: str = ""
    wait_steps: int = 0                     # LIBERO: no-op steps after reset while objects settle
    max_steps_by_suite: tuple[tuple[str, int], ...] = ()
    # MetaWorld: radius (m) the goal marker is drawn with; None keeps the task's own (0.02 m: 1-2 pixels at
    # 112 px). Drawing only: sites do not collide and success is still the task's own check.
    goal_marker_radius: float | None = None
    # MetaWorld: RGBA the task's object (the geoms of body 'obj', e.g. the puck) is drawn with; None keeps the
    # task's own (red, like the arm, dark on the brown table at 112 px). Drawing only, like goal_marker_radius.
    object_rgba: tuple[float, float, float, float] | None = None
    # MetaWorld: draw the task's object (its first geom, the puck: a cylinder of radius 0.02 m) with this radius, as
    # a marker over it in the renderer's scene; None draws it as it is. Drawing only: contacts keep the real size.
    object_marker_radius: float | None = None

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    @property
    def camera_keys(self) -> tuple[str, ...]:
        return tuple(f"observation.images.{c.name}" for c in self.cameras)

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    def replace(self, **kw) -> "SimConfig":
        return dataclasses.replace(self, **kw)

    def instruction(self, task_text: str) -> str:
        return self.instruction_template.format(instruction=task_text)

    def max_steps_for(self, suite: str) -> int:
        return dict(self.max_steps_by_suite).get(suite, self.max_steps)


_MW = EMBODIMENTS["metaworld"]   # the dataset facts (tag, state names, cameras, fps) are declared once, there
METAWORLD = SimConfig(
    simulator="metaworld", embodiment=_MW.name, norm_tag=_MW.tag,
    cameras=(CameraSpec("corner2", "corner2", rotate180=True), CameraSpec("gripperPOV", "gripperPOV")),
    image_hw=_MW.real_image_hw, action_dim=_MW.dim, state_names=_MW.state_names,
    action_low=(-1.0,) * 4, action_high=(1.0,) * 4, fps=_MW.fps, max_steps=500, n_action_steps=8,
    action_horizon=_MW.action_horizon, setup_type=_MW.setup_type, control_mode=_MW.control_mode,
)

# The tag facts (norm tag `libero`, horizon 10, prompt pieces) are the dataset's, declared once in the libero
# embodiment file, so fine-tuning (configs/finetune.py) and evaluation agree; fps is the simulator's control rate.
_LB = EMBODIMENTS["libero"]
LIBERO = SimConfig(
    simulator="libero", embodiment=_LB.name, norm_tag=_LB.tag,
    cameras=(CameraSpec("agentview", "agentview", rotate180=True),
             CameraSpec("wrist", "robot0_eye_in_hand", rotate180=True)),
    image_hw=_LB.real_image_hw, action_dim=_LB.action_dim,
    state_names=("eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay", "eef_az", "gripper_left", "gripper_right"),
    action_low=(-1.0,) * 7, action_high=(1.0,) * 7, fps=20, max_steps=520, n_action_steps=_LB.action_horizon,
    action_horizon=_LB.action_horizon, setup_type=_LB.setup_type, control_mode=_LB.control_mode,
    wait_steps=10,
    # policy steps per episode, as in the published LIBERO evaluations
    max_steps_by_suite=(("libero_spatial", 220), ("libero_object", 280), ("libero_goal", 300),
                        ("libero_10", 520), ("libero_90", 400)),
)

CONFIGS = {"metaworld": METAWORLD, "libero": LIBERO}

# MetaWorld's cameras, and whether our renderer gives each upside down (all but the wrist view).
METAWORLD_CAMERAS = {"corner": True, "corner2": True, "corner3": True, "topview": True, "behindGripper": True,
                     "gripperPOV": False}


def parse_rgba(value, what: str = "color") -> tuple[float, float, float, float] | None:
    """'R,G,B[,A]' or a sequence of 3-4 numbers in [0, 1] -> an RGBA tuple; None, '' or 'none' -> None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        parts = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        parts = []
    if len(parts) not in (3, 4) or not all(0.0 <= v <= 1.0 for v in parts):
        raise SimEvalError(f"{what} {value!r}: expected R,G,B or R,G,B,A with values in [0, 1], or 'none'")
    return tuple(parts + [1.0] * (4 - len(parts)))


def parse_cameras(simulator: str, spec: str | None) -> tuple[CameraSpec, ...] | None:
    """'corner2,gripperPOV' -> CameraSpecs (MetaWorld), None when not given."""
    if not spec:
        return None
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if simulator != "metaworld":
        raise SimEvalError(f"--cameras: choosing cameras is supported for metaworld only, not {simulator}")
    bad = [n for n in names if n not in METAWORLD_CAMERAS]
    if bad or not names:
        raise SimEvalError(f"--cameras {spec!r}: unknown MetaWorld camera(s) {bad}; expected names from "
                           f"{list(METAWORLD_CAMERAS)}")
    return tuple(CameraSpec(n, n, rotate180=METAWORLD_CAMERAS[n]) for n in names)


# What a checkpoint trained in simulation needs to be evaluated as it was trained: written next to its norm stats
# (the demo writes it into the checkpoint's assets; export-hf copies assets into the HF folder), read by
# molmoact2-eval --checkpoint, where command-line flags still win.
SIM_SETTINGS_FILE = "sim_settings.json"
SIM_SETTINGS_FORMAT = "molmoact2_sim_settings.v1"
# How the scene is drawn (MetaWorld): a recording made with other values shows other pixels.
DRAWING_FIELDS = ("goal_marker_radius", "object_rgba", "object_marker_radius")
_SETTINGS_FIELDS = ("image_hw", "max_steps", "n_action_steps", "instruction_template", "fast_render",
                    *DRAWING_FIELDS)


def sim_settings(cfg: SimConfig) -> dict:
    """The SimConfig fields a policy depends on, as JSON (see SIM_SETTINGS_FILE)."""
    return {"format": SIM_SETTINGS_FORMAT, "simulator": cfg.simulator,
            "cameras": [dataclasses.asdict(c) for c in cfg.cameras],
            **{k: list(v) if isinstance(v, tuple) else v for k, v in
               ((k, getattr(cfg, k)) for k in _SETTINGS_FIELDS)}}


def config_from_settings(settings: dict, where: str = SIM_SETTINGS_FILE, **overrides) -> SimConfig:
    """SimConfig of a sim_settings.json dict; `overrides` (None = not given) win over it."""
    if settings.get("format") != SIM_SETTINGS_FORMAT:
        raise SimEvalError(f"{where}: format {settings.get('format')!r}, expected {SIM_SETTINGS_FORMAT!r}")
    try:
        kw = {k: settings[k] for k in _SETTINGS_FIELDS if k in settings}
        kw["image_hw"] = tuple(int(v) for v in kw.get("image_hw", CONFIGS[settings["simulator"]].image_hw))
        kw["cameras"] = tuple(CameraSpec(**c) for c in settings["cameras"])
        if kw.get("object_rgba") is not None:
            kw["object_rgba"] = parse_rgba(kw["object_rgba"], "object_rgba")
        for radius in ("goal_marker_radius", "object_marker_radius"):
            if kw.get(radius) is not None:
                kw[radius] = float(kw[radius])
        simulator = settings["simulator"]
    except (KeyError, TypeError, ValueError) as e:
        raise SimEvalError(f"{where}: bad sim settings ({type(e).__name__}: {e})") from None
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return get_config(simulator, **kw)


def get_config(simulator: str, **overrides) -> SimConfig:
    if simulator not in CONFIGS:
        raise SimEvalError(f"unknown simulator {simulator!r}; expected one of {sorted(CONFIGS)}")
    cfg = CONFIGS[simulator]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return cfg.replace(**overrides) if overrides else cfg


@dataclasses.dataclass(frozen=True)
class SuiteSpec:
    simulator: str                 # metaworld | libero
    suite: str                     # "metaworld" or the LIBERO suite name
    tasks: tuple[str, ...]         # MetaWorld task names, or LIBERO task ids as strings

    def __str__(self):
        return f"{self.simulator}:{','.join(self.tasks)}" if self.simulator == "metaworld" \
            else f"libero:{self.suite}:{','.join(self.tasks)}"


def parse_suite(spec: str) -> SuiteSpec:
    """'metaworld:reach-v3,push-v3' | 'libero:libero_spatial[:0,3]' -> SuiteSpec (tasks checked later)."""
    sim, _, rest = spec.partition(":")
    if sim not in CONFIGS or not rest:
        raise SimEvalError(f"bad suite {spec!r}; expected metaworld:TASK[,TASK...] or libero:SUITE[:TASK_IDS]")
    if sim == "metaworld":
        tasks = tuple(t.strip() for t in rest.split(",") if t.strip())
        if not tasks:
            raise SimEvalError(f"bad suite {spec!r}: no MetaWorld task named")
        return SuiteSpec("metaworld", "metaworld", tasks)
    suite, _, ids = rest.partition(":")
    tasks = ()
    if ids:
        try:
            tasks = tuple(str(int(i)) for i in ids.split(",") if i.strip())
        except ValueError:
            raise SimEvalError(f"bad LIBERO task ids {ids!r} in {spec!r}; expected comma-separated integers") from None
    return SuiteSpec("libero", suite.strip(), tasks)


# Templated instructions: the template's {instruction} is filled with the per-task text below.
METAWORLD_TASK_TEXT = {
    "assembly": "put the ring on the peg", "basketball": "dunk the ball into the basket",
    "bin-picking": "move the cube from one bin to the other", "box-close": "put the lid on the box",
    "button-press-topdown": "press the button from the top", "button-press-topdown-wall":
        "press the button from the top behind the wall", "button-press": "press the button",
    "button-press-wall": "press the button behind the wall", "coffee-button": "press the coffee machine button",
    "coffee-pull": "pull the mug away from the coffee machine", "coffee-push": "push the mug under the coffee machine",
    "dial-turn": "turn the dial", "disassemble": "pick the ring off the peg", "door-close": "close the door",
    "door-lock": "lock the door by turning the lock", "door-open": "open the door",
    "door-unlock": "unlock the door by turning the lock", "hand-insert": "insert the gripper into the hole",
    "drawer-close": "close the drawer", "drawer-open": "open the drawer", "faucet-open": "turn the faucet on",
    "faucet-close": "turn the faucet off", "hammer": "hammer the nail into the wall",
    "handle-press-side": "press the handle down from the side", "handle-press": "press the handle down",
    "handle-pull-side": "pull the handle up from the side", "handle-pull": "pull the handle up",
    "lever-pull": "pull the lever up", "pick-place-wall": "pick up the puck and place it behind the wall",
    "pick-out-of-hole": "pick the peg out of the hole", "pick-place": "pick up the puck and place it at the goal",
    "plate-slide": "slide the plate into the cabinet", "plate-slide-side": "slide the plate sideways into the cabinet",
    "plate-slide-back": "slide the plate out of the cabinet",
    "plate-slide-back-side": "slide the plate sideways out of the cabinet",
    "peg-insert-side": "insert the peg into the hole from the side", "peg-unplug-side": "unplug the peg sideways",
    "soccer": "kick the ball into the goal", "stick-push": "push the bottle with the stick",
    "stick-pull": "pull the bottle with the stick", "push": "push the puck to the goal",
    "push-wall": "push the puck to the goal behind the wall", "push-back": "push the puck backwards to the goal",
    "reach": "reach the goal position", "reach-wall": "reach the goal position behind the wall",
    "shelf-place": "place the puck on the shelf", "sweep-into": "sweep the puck into the hole",
    "sweep": "sweep the puck off the table", "window-open": "slide the window open",
    "window-close": "slide the window closed",
}


def metaworld_task_text(task: str) -> str:
    base = task.rsplit("-v", 1)[0]
    return METAWORLD_TASK_TEXT.get(base, base.replace("-", " "))


def load_norm_stats(path) -> NormStats:
    """The checkpoint's norm stats (data_pipelines.norm_stats), bad files reported as SimEvalError."""
    try:
        return NormStats.load(path)
    except (ValueError, FileNotFoundError) as e:
        raise SimEvalError(str(e)) from None


def select_tag(stats: NormStats, tag: str | None, where="norm stats") -> TagInfo:
    """`tag` if given, else the only tag present (NormStats.select), as a SimEvalError naming `where`."""
    try:
        return stats.select(tag)
    except NormStatsError as e:
        raise SimEvalError(f"{where}: {e}; pass --norm-tag") from None
