"""What the demo leaves behind: WORKDIR/demo_summary.json, the plot of predicted vs true actions and the loss
curve, and the exit code its summary implies."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from molmoact2_jax.demo.settings import DemoSettings
from molmoact2_jax.evaluation.config import sim_settings

SUMMARY = "demo_summary.json"


def plot(wd: Path, traj, metrics_path: Path) -> Path:
    import matplotlib  # lazy: ~0.5 s, only for the plot
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the Agg backend is chosen
    rows = [json.loads(l) for l in open(metrics_path)]
    true = np.concatenate([t for t, _ in traj])[:60]
    pred = np.concatenate([p for _, p in traj])[:60]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for k, ax in enumerate(axes[:2]):
        ax.plot(true[:, k], label="true", color="k")
        ax.plot(pred[:, k], label="predicted", color="tab:orange", ls="--")
        ax.set_title(f"held-out episode: action[{k}], first step of each chunk", fontsize=10)
        ax.set_xlabel("frame")
        ax.legend()
    axes[2].plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss")
    ev = [(r["step"], r["eval_total_loss"]) for r in rows if "eval_total_loss" in r]
    if ev:
        axes[2].plot(*zip(*ev), "o-", label="held-out loss")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("step")
    axes[2].legend()
    fig.tight_layout()
    path = wd / "demo_summary.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _common_settings(s: DemoSettings) -> dict:
    return {**sim_settings(s.sim), "tasks": list(s.tasks), "train_episodes": s.train_episodes,
            "heldout_episodes": s.demo.heldout_episodes, "steps": s.cfg.total_steps,
            "batch": s.cfg.data.global_batch_size}


def protocol(s: DemoSettings, validation: dict | None) -> dict:
    """Which seed block demo_summary.json's closed_loop table is from, and each block's seeds and episode counts."""
    demo = s.demo
    blocks = {"validation": {"first_seed": s.block_seed("validation"), "role": "every choice of the defaults"},
              "test": {"first_seed": s.block_seed("test"), "role": "reported; never used to choose"}}
    blocks[demo.eval_block]["episodes_per_task"] = int(demo.eval_episodes)
    if validation is not None:
        blocks["validation"]["episodes_per_task"] = int(demo.validation_episodes)
    return {"closed_loop_block": demo.eval_block, "blocks": blocks}


def closed_loop_summary(wd: Path, s: DemoSettings, trained_cfg, table: dict, validation: dict | None,
                        heldout_err: dict, train_err: dict, export: Path, ok: bool, seconds: dict,
                        t_all: float) -> int:
    """Writes demo_summary.json (`closed_loop`: the eval block's table; `closed_loop_validation`: the model on the
    validation block, when asked for); exit code 0 when the model beat the mean action in closed loop, else 1."""
    cfg, demo = s.cfg, s.demo
    summary = {"protocol": protocol(s, validation), "closed_loop": table,
               **({"closed_loop_validation": validation} if validation is not None else {}),
               "heldout_action_error": heldout_err, "train_action_error": train_err,
               "settings": {**_common_settings(s),
                            "lr": float(trained_cfg.optimizer.lr.llm), "ema": float(trained_cfg.ema.decay),
                            "seq_len": cfg.data.seq_len, "flow_samples": cfg.model.flow.num_samples,
                            "vit_width": cfg.model.vit.hidden_size,
                            "augment": cfg.data.augment, "lossless": demo.lossless, "mode": demo.mode,
                            "action_mode": cfg.model.action_mode, "action_noise": demo.action_noise,
                            "eval_block": demo.eval_block, "eval_episodes": demo.eval_episodes,
                            "validation_seed": demo.validation_seed, "test_seed": demo.test_seed,
                            "validation_episodes": demo.validation_episodes},
               "export": str(export), "model_beats_mean_action": ok,
               "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "minutes": (time.perf_counter() - t_all) / 60}
    (wd / SUMMARY).write_text(json.dumps(summary, indent=2))
    print(f"\nmolmoact2-demo: finished in {summary['minutes']:.1f} min; outputs in {wd}")
    if not ok:
        print("molmoact2-demo: the trained policy did not beat the mean action in closed loop", file=sys.stderr)
    return 0 if ok else 1


def think_summary(wd: Path, s: DemoSettings, think: dict) -> int:
    """Writes demo_summary.json of the Think demo; exit code 0 when its depth codes beat the most frequent code."""
    settings = {**_common_settings(s), "seq_len": s.cfg.data.seq_len, "vqvae_steps": s.demo.vqvae_steps}
    ok = think["full_depth_accuracy"] > think["most_frequent_accuracy"]
    (wd / SUMMARY).write_text(json.dumps({"think": think, "settings": settings,
                                          "model_beats_most_frequent_code": ok}, indent=2))
    print(f"\nmolmoact2-demo (demo_think): finished in {think['minutes']:.1f} min; outputs in {wd}")
    if not ok:
        print("molmoact2-demo: the trained model's depth codes are no better than the most frequent code",
              file=sys.stderr)
    return 0 if ok else 1
