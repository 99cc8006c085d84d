"""The MetaWorld Sawyer as a data_pipelines Embodiment, so the LeRobot writer/reader/converter handle it.

The embodiment is built from a SimConfig (cameras, fps, state names) and can be registered into
data_pipelines.embodiments.EMBODIMENTS at run time (`register()`), which makes
`data_pipelines.convert` and `molmoact2-data convert --embodiment metaworld` accept it in the same
process. State = end-effector xyz + gripper opening (4-D, as in MetaWorld's observation);
action = MetaWorld's 4-D (dx, dy, dz, gripper effort).
"""
from __future__ import annotations

from data_pipelines.embodiments import EMBODIMENTS, Embodiment

from molmoact2_jax.evaluation.config import METAWORLD, SimConfig

# MetaWorld's hand space (SawyerXYZEnv._HAND_SPACE) and gripper opening in [0, 1].
HAND_LOW = (-0.525, 0.348, -0.0525, 0.0)
HAND_HIGH = (0.525, 1.025, 0.7, 1.0)


def metaworld_embodiment(cfg: SimConfig = METAWORLD) -> Embodiment:
    if cfg.state_dim != cfg.action_dim:
        raise ValueError("the LeRobot writer stores state and action with the same names; dims must match")
    return Embodiment(
        name=cfg.embodiment, tag=cfg.norm_tag, robot_type="sawyer", fps=cfg.fps,
        state_names=cfg.state_names, cameras=cfg.camera_names,
        real_image_hw=cfg.image_hw, fixture_image_hw=(64, 64),
        low=HAND_LOW, high=HAND_HIGH, setup_type=cfg.setup_type, control_mode=cfg.control_mode,
        normalize_gripper=False, action_horizon=cfg.action_horizon, fixed_camera_order=True)


def register(cfg: SimConfig = METAWORLD) -> Embodiment:
    """Add (or replace) the MetaWorld embodiment in the data_pipelines registry of this process."""
    emb = metaworld_embodiment(cfg)
    EMBODIMENTS[emb.name] = emb
    return emb
