"""A tiny simulated arm whose actions depend on what its cameras show.

Each episode has a coloured block at a random place. The block's colour and position set a
goal joint configuration; the arm moves a fixed fraction of the way to the goal each step and
closes the gripper once it is there. Every camera draws the block and the end-effector, so a
model that reads the images (and the task text naming the colour) can predict the actions.
"""
from __future__ import annotations

import numpy as np

from data_pipelines.embodiments import Embodiment
from data_pipelines.episode import Episode

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (230, 210, 40)}
# Instruction phrasings as they appear in the wild, so prompt normalization gets exercised.
_TASK_STYLES = ("pick up the {c} block", "Pick up the {c} block.", "Task: pick up the {c} block!",
                '"Pick up the {c} block"')


def episode_length(index: int, base: int = 20) -> int:
    return base + (index * 7) % 11


def simulate_episode(emb: Embodiment, index: int, *, seed: int = 0, length: int | None = None,
                     image_hw: tuple[int, int] | None = None) -> Episode:
    rng = np.random.default_rng([seed, index])
    T = episode_length(index) if length is None else length
    H, W = image_hw or emb.fixture_image_hw
    D = emb.state_dim
    color = list(COLORS)[index % len(COLORS)]
    target = rng.uniform(0.15, 0.85, size=2)
    grip = emb.gripper_dims()

    # Goal in [0,1]^D: a smooth function of where the block is and which colour it is.
    j = np.arange(D)
    phase = list(COLORS).index(color) * np.pi / 2
    goal = 0.5 + 0.4 * np.sin(2 * np.pi * (target[0] * (0.5 + 0.1 * j) + target[1] * (0.3 + 0.07 * j)) + phase)
    state = np.clip(0.5 + rng.normal(0, 0.05, D), 0, 1)
    state[grip] = 1.0  # gripper starts open
    states, actions = [], []
    for _ in range(T):
        action = state + 0.25 * (goal - state)
        near = np.abs(goal - state)[~grip].max() < 0.05
        action[grip] = 0.0 if near else 1.0
        states.append(state.copy())
        actions.append(action)
        state = np.clip(action + rng.normal(0, 0.003, D), 0, 1)
    s01, a01 = np.array(states), np.array(actions)
    # An action dim repeats its same-named state dim's target (all of them where state and action are alike; LIBERO's
    # 7-D action takes the 8-D state's pose and first gripper dim), in the action's own range.
    a01 = a01[:, emb.action_source_dims()]
    to_phys = lambda x, lo, hi: (np.array(lo) + x * (np.array(hi) - np.array(lo))).astype(np.float32)
    images = {cam: _render(cam_i, s01, grip, target, color, H, W) for cam_i, cam in enumerate(emb.cameras)}
    task = _TASK_STYLES[index % len(_TASK_STYLES)].format(c=color)
    annotated = f"pick up the {color} block at the {'left' if target[0] < 0.5 else 'right'} side of the table"
    return Episode(to_phys(s01, emb.low, emb.high), to_phys(a01, emb.action_low, emb.action_high), images, task,
                   annotated)


def _render(cam_i: int, s01, grip, target, color, H, W) -> np.ndarray:
    T = len(s01)
    yy, xx = np.mgrid[0:H, 0:W]
    bg = np.stack([60 + 40 * xx / W + 20 * cam_i, 70 + 30 * yy / H, 80 + 25 * cam_i + 0 * xx], -1)
    frames = np.empty((T, H, W, 3), np.uint8)
    arm = s01[:, ~grip]
    ee = np.stack([arm[:, 0::2].mean(1), arm[:, 1::2].mean(1)], -1)  # end-effector in [0,1]^2
    for t in range(T):
        img = bg.copy()
        tu, tv = (target if cam_i == 0 else (1 - target[0], target[1]))
        if cam_i >= 2:  # wrist camera: block seen relative to the end-effector, bigger
            tu, tv = target - ee[t] + 0.5
        size = max(2, (H // 5) * (2 if cam_i >= 2 else 1))
        _square(img, tu, tv, size, COLORS[color])
        open_ = s01[t, grip].mean() if grip.any() else 1.0
        _square(img, ee[t, 0], ee[t, 1], max(2, int(2 + 3 * open_)), (250, 250, 250))
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def _square(img, u, v, size, rgb):
    H, W = img.shape[:2]
    cy, cx = int(v * (H - 1)), int(u * (W - 1))
    y0, y1 = max(0, cy - size // 2), min(H, cy + (size + 1) // 2)
    x0, x1 = max(0, cx - size // 2), min(W, cx + (size + 1) // 2)
    if y1 > y0 and x1 > x0:
        img[y0:y1, x0:x1] = rgb
