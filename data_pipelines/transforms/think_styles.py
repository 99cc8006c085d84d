"""MolmoThink training styles: which answer a robot example is trained on.

  robot_action        the plain prompt (`<action_output>`), answer = the actions (discrete tokens and/or flow)
  robot_depth         prompt trigger `<depth_output>`, answer `<depth_start>` + 100 codes + `<depth_end>` EOS;
                      no flow loss (the example has no action target)
  robot_depth_action  trigger `<depth_output><action_output>`, answer the depth span, then (discrete / both) the
                      action tokens and EOS; the flow loss reads the K/V of prompt + depth tokens, as at inference

`data.style_weights` ({style: weight}) picks one style per example; post-training uses 1:1:1, fine-tuning 1:0:1.
Both the Grain robot pipeline and the synthetic tiny-recipe data draw styles and build depth spans here.
"""
from __future__ import annotations

import numpy as np

from data_pipelines.formats.depth_codes import NUM_CELLS, NUM_CODES

STYLES = ("robot_action", "robot_depth", "robot_depth_action")
DEPTH_STYLES = ("robot_depth", "robot_depth_action")
NUM_DEPTH_CODES = NUM_CELLS   # codes per depth map (10x10)


def style_probabilities(weights, where: str = "config.data.style_weights") -> tuple[float, float, float] | None:
    """{style: weight} (any subset of STYLES, missing = 0) -> probabilities in STYLES order. None when every
    example is robot_action (no weights, or only robot_action's): the non-Think pipeline, which draws nothing."""
    if not weights:
        return None
    weights = dict(weights)
    unknown = sorted(set(weights) - set(STYLES))
    if unknown:
        raise ValueError(f"{where}: unknown style(s) {unknown}; styles are {list(STYLES)}")
    w = np.array([float(weights.get(s, 0.0)) for s in STYLES])
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"{where}: weights must be finite, >= 0 and not all 0, got {weights}")
    if w[1] == 0 and w[2] == 0:
        return None
    return tuple(float(x) for x in w / w.sum())


def needs_depth(probabilities) -> bool:
    """True when some example will be trained on depth codes."""
    return probabilities is not None


def sample_style(rng: np.random.Generator, probabilities) -> str:
    """One style drawn from `probabilities` (STYLES order); robot_action without them (no draw is made then,
    so a non-Think pipeline's random stream is unchanged)."""
    if probabilities is None:
        return "robot_action"
    return STYLES[int(rng.choice(len(STYLES), p=probabilities))]


def depth_span(codes, depth_start: int, depth_end: int, code0: int, num_codes: int = NUM_CODES) -> list[int]:
    """`<depth_start>` + the 100 codes as `<depth_k>` ids + `<depth_end>`."""
    codes = np.asarray(codes).reshape(-1)
    if codes.size != NUM_DEPTH_CODES or codes.min(initial=0) < 0 or codes.max(initial=0) >= num_codes:
        raise ValueError(f"depth codes: expected {NUM_DEPTH_CODES} codes in [0, {num_codes}), got {codes.size} in "
                         f"[{codes.min(initial=0)}, {codes.max(initial=0)}]")
    return [int(depth_start)] + [int(code0) + int(c) for c in codes] + [int(depth_end)]
