"""The robot observation transform stack, shared by training and serving (in the spirit of openpi's
`transforms.Group`): the same objects normalize a state / action chunk and build the prompt for a training
example and for a live observation, and the output side un-normalizes the model's actions.

    group = robot_transforms(stats.tag("franka_droid"), num_state_tokens=256)
    x = group.apply_inputs({"state": raw_state, "task": "pick up the cup", "num_images": 2})
    x["state"], x["state_bins"], x["prompt"]                  # normalized state, discrete bins, prompt text
    group.apply_outputs({"actions": model_actions})["actions"]  # robot units

Training adds the raw chunk under "actions" (normalized on the input side); `RobotTransform` (Grain) wraps the
stack with record decoding, camera choice, augmentation and padding, `Policy` with input checks and the model.
Tags with `delta_action_dims` train those dims as a[t+k] - s[t] (DeltaActions, before normalization, as the norm
stats were computed) and serve them back as absolute actions (AbsoluteActions, after un-normalization, which
needs the raw "state" next to the "actions" on the output side).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.norm_stats import TagInfo
from data_pipelines.transforms.normalize import normalize, state_bins, unnormalize
from data_pipelines.transforms.prompt import build_robot_prompt

STATE_FORMATS = ("discrete", "continuous")


class DeltaActions:
    """Raw action chunk [H, D] -> deltas w.r.t. the raw current state on the tag's delta dims (no-op without)."""

    def __init__(self, tag: TagInfo):
        self.dims = np.asarray(tag.delta_action_dims, int)

    def __call__(self, x: dict) -> dict:
        if not self.dims.size or x.get("actions") is None:
            return x
        x = dict(x)
        actions = np.array(x["actions"], np.float64)
        actions[..., self.dims] -= np.asarray(x["state"], np.float64)[self.dims]
        x["actions"] = actions
        return x


class AbsoluteActions:
    """Robot-unit actions with delta dims -> absolute, adding back the raw state the chunk was predicted from."""

    def __init__(self, tag: TagInfo):
        self.dims = np.asarray(tag.delta_action_dims, int)
        self.tag = tag.name

    def __call__(self, x: dict) -> dict:
        if not self.dims.size:
            return x
        if x.get("state") is None:
            raise ValueError(f"norm_tag {self.tag!r} predicts delta actions on dims {self.dims.tolist()}: the raw "
                             f"state is needed to make them absolute")
        x = dict(x)
        actions = np.array(x["actions"], np.float64)
        actions[..., self.dims] += np.asarray(x["state"], np.float64)[self.dims]
        x["actions"] = actions.astype(np.float32)
        return x


class NormalizeInputs:
    """state (and the action chunk, when present) -> the tag's normalized space; state -> discrete bins."""

    def __init__(self, tag: TagInfo, num_state_tokens: int = 256):
        self.tag, self.num_state_tokens = tag, int(num_state_tokens)

    def __call__(self, x: dict) -> dict:
        x = dict(x)
        x["state"] = normalize(x["state"], self.tag.state_stats, self.tag.norm_mode)
        x["state_bins"] = state_bins(x["state"], self.num_state_tokens)
        if x.get("actions") is not None:
            x["actions"] = normalize(x["actions"], self.tag.action_stats, self.tag.norm_mode)
        return x


def actions_to_model_space(tag: TagInfo, actions, state) -> np.ndarray:
    """A robot-unit chunk [N, D] -> model space, as the input side treats a training chunk (delta dims w.r.t. the
    raw `state`, then normalization): the inverse of the output side. Real-time chunking guides the next chunk
    towards the previous one in this space."""
    x = DeltaActions(tag)({"actions": np.asarray(actions, np.float64), "state": state})
    return normalize(x["actions"], tag.action_stats, tag.norm_mode)


class RobotPrompt:
    """task + number of images + state bins + the tag's setup / control mode -> prompt text.
    The style is the example's `style` when it has one (Think training, transforms/think_styles.py), else
    robot_depth_action with `think` (MolmoThink serving) or robot_action."""

    def __init__(self, tag: TagInfo, state_format: str = "discrete", think: bool = False,
                 normalize_language: bool = True):
        if state_format not in STATE_FORMATS:
            raise ValueError(f"state_format must be one of {STATE_FORMATS}, got {state_format!r}")
        self.tag, self.state_format, self.think = tag, state_format, bool(think)
        self.normalize_language = bool(normalize_language)

    def __call__(self, x: dict) -> dict:
        x = dict(x)
        bins = np.asarray(x["state_bins"]).tolist() if self.state_format == "discrete" else None
        x["prompt"] = build_robot_prompt(
            str(x["task"]), int(x["num_images"]), bins, self.tag.setup_type, self.tag.control_mode,
            style=x.get("style") or ("robot_depth_action" if self.think else "robot_action"),
            normalize_language=bool(x.get("normalize_language", self.normalize_language)))
        return x


class UnnormalizeActions:
    """Model-space actions [..., action_dim] -> robot units (gripper dims pass through)."""

    def __init__(self, tag: TagInfo):
        self.tag = tag

    def __call__(self, x: dict) -> dict:
        x = dict(x)
        x["actions"] = unnormalize(x["actions"], self.tag.action_stats, self.tag.norm_mode).astype(np.float32)
        return x


@dataclasses.dataclass(frozen=True)
class Group:
    """Input transforms (observation -> model space) and output transforms (model space -> robot), in order."""
    inputs: tuple = ()
    outputs: tuple = ()

    def apply_inputs(self, x: dict) -> dict:
        for t in self.inputs:
            x = t(x)
        return x

    def apply_outputs(self, x: dict) -> dict:
        for t in self.outputs:
            x = t(x)
        return x


def robot_transforms(tag: TagInfo, *, num_state_tokens: int = 256, state_format: str = "discrete",
                     think: bool = False, normalize_language: bool = True) -> Group:
    """The stack every robot example and every served observation of `tag` goes through."""
    return Group(inputs=(DeltaActions(tag), NormalizeInputs(tag, num_state_tokens),
                         RobotPrompt(tag, state_format, think, normalize_language)),
                 outputs=(UnnormalizeActions(tag), AbsoluteActions(tag)))
