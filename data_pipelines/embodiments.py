"""Per-embodiment facts: feature names, cameras, rates, and the MolmoAct2 tag metadata.

Values follow data_formats.md sections 2-5 and molmoact2_spec.md 16.3/17. Fixture image
sizes are small on purpose (tests run on 2 cores); `real_image_hw` records the real size.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# MetaWorld's Sawyer hand space (SawyerXYZEnv._HAND_SPACE) and gripper opening in [0, 1].
METAWORLD_HAND_LOW = (-0.525, 0.348, -0.0525, 0.0)
METAWORLD_HAND_HIGH = (0.525, 1.025, 0.7, 1.0)
SO100_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
YAM_ARM = tuple(f"joint_{i}.pos" for i in range(6)) + ("gripper.pos",)


@dataclasses.dataclass(frozen=True)
class Embodiment:
    name: str                     # CLI name: droid | so100 | yam | metaworld
    tag: str                      # MolmoAct2 norm tag
    robot_type: str
    fps: int
    state_names: tuple[str, ...]
    cameras: tuple[str, ...]      # short names; LeRobot key is observation.images.<cam>
    real_image_hw: tuple[int, int]
    fixture_image_hw: tuple[int, int]
    low: tuple[float, ...]        # per-dim physical range used by the simulator
    high: tuple[float, ...]
    setup_type: str
    control_mode: str
    normalize_gripper: bool
    action_horizon: int
    fixed_camera_order: bool      # False: per-episode random camera order (SO100)
    # Action dims that are trained as deltas w.r.t. the same state dim (openpi's DeltaActions): off for the
    # released tags (absolute joints); `molmoact2-data convert --delta-action-dims` turns it on for a dataset.
    delta_action_dims: tuple[int, ...] = ()

    @property
    def dim(self) -> int:
        return len(self.state_names)

    @property
    def camera_keys(self) -> tuple[str, ...]:
        return tuple(f"observation.images.{c}" for c in self.cameras)

    def gripper_dims(self, names=None) -> np.ndarray:
        names = self.state_names if names is None else names
        return np.array(["gripper" in n for n in names])

    def tag_metadata(self) -> dict:
        """The per-tag keys of norm_stats.json (spec 13), minus the stats themselves."""
        return {
            "action_key": "action",
            "state_keys": ["observation.state"],
            "camera_keys": list(self.camera_keys) if self.fixed_camera_order else [],
            "normalize_gripper": self.normalize_gripper,
            "action_dim": self.dim,
            "action_horizon": self.action_horizon,
            "n_action_steps": self.action_horizon,
            "setup_type": self.setup_type,
            "control_mode": self.control_mode,
            **({"delta_action_dims": list(self.delta_action_dims)} if self.delta_action_dims else {}),
        }


_DEG = 180.0
EMBODIMENTS: dict[str, Embodiment] = {
    "droid": Embodiment(
        name="droid", tag="franka_droid", robot_type="Franka", fps=15,
        state_names=tuple(f"joint_{i}" for i in range(7)) + ("gripper",),
        cameras=("exterior_1_left", "exterior_2_left", "wrist_left"),
        real_image_hw=(180, 320), fixture_image_hw=(36, 64),
        low=(-2.8, -1.7, -2.8, -3.0, -2.8, 0.0, -2.8, 0.0),
        high=(2.8, 1.7, 2.8, -0.1, 2.8, 3.7, 2.8, 1.0),
        setup_type="single franka robotic arm in droid", control_mode="absolute joint pose",
        normalize_gripper=False, action_horizon=15, fixed_camera_order=True),
    "so100": Embodiment(
        name="so100", tag="so100_so101_molmoact2", robot_type="so101_follower", fps=30,
        state_names=tuple(f"{j}.pos" for j in SO100_JOINTS),
        cameras=("top", "wrist"),
        real_image_hw=(480, 640), fixture_image_hw=(48, 64),
        low=(-100.0, -100.0, -100.0, -100.0, -100.0, 0.0),
        high=(100.0, 100.0, 100.0, 100.0, 100.0, 100.0),
        setup_type="single so100/so101 robotic arm in molmoact2", control_mode="absolute joint pose",
        normalize_gripper=True, action_horizon=30, fixed_camera_order=False),
    "yam": Embodiment(
        name="yam", tag="yam_dual_molmoact2", robot_type="bi_yam_follower", fps=30,
        state_names=tuple(f"left_{n}" for n in YAM_ARM) + tuple(f"right_{n}" for n in YAM_ARM),
        cameras=("top", "left", "right"),
        real_image_hw=(360, 640), fixture_image_hw=(36, 64),
        low=(-2.0, 0.0, 0.0, -1.5, -1.5, -2.0, 0.0) * 2,
        high=(2.0, 3.2, 3.2, 1.5, 1.5, 2.0, 1.0) * 2,
        setup_type="bimanual yam robotic arms in molmoact2", control_mode="absolute joint pose",
        normalize_gripper=False, action_horizon=30, fixed_camera_order=True),
    # The simulated Sawyer the MetaWorld recorder writes (molmoact2_jax.evaluation builds its SimConfig from
    # this entry): state = end-effector xyz + gripper opening, action = MetaWorld's (dx, dy, dz, gripper effort).
    "metaworld": Embodiment(
        name="metaworld", tag="metaworld_sawyer", robot_type="sawyer", fps=80,
        state_names=("ee_x", "ee_y", "ee_z", "gripper"), cameras=("corner2", "gripperPOV"),
        real_image_hw=(224, 224), fixture_image_hw=(64, 64),
        low=METAWORLD_HAND_LOW, high=METAWORLD_HAND_HIGH,
        setup_type="single sawyer robotic arm in metaworld", control_mode="delta end-effector position",
        normalize_gripper=False, action_horizon=8, fixed_camera_order=True),
}

# Old SO100 generation (lerobot <= 0.1, v2.x): `main_` prefix, degrees, cameras laptop/phone.
SO100_OLD = dataclasses.replace(
    EMBODIMENTS["so100"], robot_type="so100",
    state_names=tuple(f"main_{j}" for j in SO100_JOINTS), cameras=("laptop", "phone"),
    low=(-_DEG / 2, 0.0, 0.0, -_DEG / 2, -_DEG / 2, 0.0), high=(_DEG / 2, 180.0, 180.0, _DEG / 2, _DEG / 2, 100.0))


def get_embodiment(name: str) -> Embodiment:
    try:
        return EMBODIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown embodiment {name!r}; expected one of {sorted(EMBODIMENTS)}") from None


def canonical_state_names(names) -> list[str]:
    """MolmoAct2 stats rule: strip main_/left_/right_ only if that yields exactly the 6 SO100 joints."""
    names = list(names)
    for prefix in ("main_", "left_", "right_"):
        stripped = [n[len(prefix):] if n.startswith(prefix) else n for n in names]
        if tuple(stripped) == SO100_JOINTS:
            return stripped
    return names
