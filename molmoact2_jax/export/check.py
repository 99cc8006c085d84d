"""The parity gate: an export against the policy it came from, on random observations with fixed noise.

Each observation (random images of the tag's cameras at random sizes, a task, a state inside the tag's state range,
explicit flow noise) goes through the export's runtime and through `Policy.predict_action`; the robot-unit actions
are compared per action dimension: max |diff|, that divided by the dimension's range in the tag's action stats
(max - min), and the cosine between the two policies' values of the dimension. The gate passes when every
dimension's relative difference is at most `threshold`: 1e-4 for fp32 exports; 2e-2 for bf16, about 4x the 5.2e-3
measured for a bf16 StableHLO export of the small test model against its fp32 checkpoint (the bf16 JAX Policy
itself is 5.6e-3 away), 8 observations, 2026-12-07."""
from __future__ import annotations

import dataclasses

import numpy as np

TASKS = ("pick up the red cube and put it in the bowl", "open the drawer", "push the puck to the goal",
         "fold the towel in half, then place it on the left side of the table")
FP32_THRESHOLD = 1e-4
THRESHOLDS = {"fp32": FP32_THRESHOLD, "bf16": 2e-2}


@dataclasses.dataclass
class DimReport:
    tag: str
    dim: int
    name: str
    max_abs_diff: float
    rel_diff: float
    cosine: float


@dataclasses.dataclass
class CheckReport:
    dims: list
    threshold: float
    observations: int

    @property
    def worst(self) -> float:
        return max(d.rel_diff for d in self.dims)

    @property
    def passed(self) -> bool:
        return self.worst <= self.threshold

    def table(self) -> str:
        rows = [f"{'tag':<24} {'dim':>3} {'name':<14} {'max |diff|':>11} {'/ range':>10} {'cosine':>10}"]
        for d in self.dims:
            rows.append(f"{d.tag:<24} {d.dim:>3} {d.name[:14]:<14} {d.max_abs_diff:>11.3e} {d.rel_diff:>10.3e} "
                        f"{d.cosine:>10.7f}")
        verdict = "PASS" if self.passed else "FAIL"
        rows.append(f"{verdict}: worst {self.worst:.3e} of the action range (threshold {self.threshold:.1e}) over "
                    f"{self.observations} observations")
        return "\n".join(rows)


def random_observation(tag, num_cameras: int, horizon: int, action_dim: int, rng) -> dict:
    images = [rng.integers(0, 256, (int(rng.integers(32, 97)), int(rng.integers(32, 129)), 3), np.uint8)
              for _ in range(num_cameras)]
    s = tag.state_stats
    state = rng.uniform(s.min, s.max) if s.dim else np.zeros(0)
    noise = rng.standard_normal((horizon, action_dim)).astype(np.float32)
    return dict(images=images, task=str(TASKS[int(rng.integers(len(TASKS)))]), state=state, noise=noise)


def compare(exported, policy, observations: int = 4, seed: int = 0, threshold: float = FP32_THRESHOLD,
            tags=None) -> CheckReport:
    """`exported`: a runtime policy (OnnxPolicy, StableHLOPolicy); `policy`: the inference.Policy of the source
    checkpoint. Every tag of the export is checked with `observations` observations."""
    rng = np.random.default_rng(seed)
    dims = []
    for name in tags or exported.export_tags:
        tag = policy.tag(name)
        cams = len(policy.expected_cameras(tag))
        ours, theirs = [], []
        for _ in range(observations):
            obs = random_observation(tag, cams, tag.horizon, int(policy.cfg.action_expert.max_action_dim), rng)
            args = (obs["images"], obs["task"], obs["state"], name)
            theirs.append(policy.predict_action(*args, noise=obs["noise"]).actions)
            ours.append(exported.predict_action(*args, noise=obs["noise"]).actions)
        a, b = np.concatenate(ours).astype(np.float64), np.concatenate(theirs).astype(np.float64)
        stats = tag.action_stats
        span = np.where(stats.max - stats.min > 0, stats.max - stats.min, 1.0)
        names = list(tag.metadata.get("action_stats", {}).get("names") or [])
        for d in range(a.shape[1]):
            diff = float(np.max(np.abs(a[:, d] - b[:, d])))
            cos = float(np.dot(a[:, d], b[:, d]) / max(np.linalg.norm(a[:, d]) * np.linalg.norm(b[:, d]), 1e-30))
            dims.append(DimReport(name, d, names[d] if d < len(names) else f"dim_{d}", diff, diff / float(span[d]),
                                  cos))
    return CheckReport(dims=dims, threshold=threshold, observations=observations)
