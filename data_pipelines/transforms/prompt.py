"""The robot prompt string exactly as MolmoAct2 builds it (docs/model_notes.md, "Prompt"). Pure Python."""
from __future__ import annotations

import re

_PREFIXES = ("task:", "instruction:", "goal:", "the task is to")
_OPENERS = "\"'`“”‘’([{<"
_CLOSERS = "\"'`“”‘’)]}>"
_TRAILING = ".,;:!?" + _CLOSERS


def normalize_question_text(text: str) -> str:
    """Collapse whitespace; repeatedly strip surrounding quotes/brackets, the prefixes task:/instruction:/
    goal:/"the task is to" and trailing punctuation; join sentences with "; "; lowercase."""
    s = " ".join(str(text).split())
    while True:
        before = s
        s = s.strip()
        while s and s[0] in _OPENERS:
            s = s[1:].lstrip()
        while s and s[-1] in _TRAILING:
            s = s[:-1].rstrip()
        low = s.lower()
        for p in _PREFIXES:
            if low.startswith(p):
                s = s[len(p):].lstrip()
                break
        if s == before:
            break
    parts = [p.strip() for p in re.split(r"[.!?]+", s)]
    return "; ".join(p for p in parts if p).lower()


def image_prefix(num_images: int) -> str:
    if num_images <= 0:
        return ""
    if num_images == 1:
        return "<|image|>"
    return "".join(f"Image {i + 1}<|image|>" for i in range(num_images))


def state_string(bins) -> str:
    return "<state_start>" + "".join(f"<state_{int(b)}>" for b in bins) + "<state_end>"


def build_robot_prompt(task: str, num_images: int, state_bins, setup_type: str, control_mode: str, *,
                       style: str = "robot_action", add_setup_tokens: bool = True,
                       add_control_tokens: bool = True, normalize_language: bool = True) -> str:
    """state_bins: sequence of ints, or None to omit the state clause."""
    if normalize_language:
        task = normalize_question_text(task)
    setup = f"<setup_start>{setup_type}<setup_end>" if add_setup_tokens else setup_type
    control = f"<control_start>{control_mode}<control_end>" if add_control_tokens else control_mode
    state = "" if state_bins is None else f" The current state of the robot is {state_string(state_bins)}."
    body = f"The task is to {task}. The setup is {setup}.{state} The expected control mode is {control}. Given these, "
    if style == "robot_action":
        body += "what action should the robot take to complete the task?"
        trigger = "<action_output>"
    elif style == "robot_depth_action":
        body += ("first predict the depth map of the main image and then predict the action the robot should "
                 "take to complete the task?")
        trigger = "<depth_output><action_output>"
    elif style == "robot_depth":
        # The released code's depth-only training template was not found; this question is ours.
        body += "predict the depth map of the main image?"
        trigger = "<depth_output>"
    else:
        raise ValueError(f"style must be robot_action, robot_depth or robot_depth_action, got {style!r}")
    return image_prefix(num_images) + "<|im_start|>user\n" + body + "<|im_end|>\n<|im_start|>assistant\n" + trigger
