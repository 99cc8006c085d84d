"""molmoact2-demo (configs/finetune.py:demo): the whole stack end to end on a CPU, in a few minutes.

 1. record MetaWorld scripted-expert episodes as LeRobot v3.0 datasets (train + held-out seeds)
 2. convert them to ArrayRecord shards and compute norm_stats.json
 3. train a text tokenizer on the instructions and fit an OpenFAST action tokenizer on normalized chunks
 4. train the tiny MolmoAct2 (checkpoints, metrics.jsonl, TensorBoard) on the Grain pipeline
 5. held-out action error vs the mean-action predictor, and a PNG of predicted vs true trajectories + loss curve
 6. export to the Hugging Face MolmoAct2 layout
 7. closed-loop MetaWorld table: the trained policy (loaded from the export) vs mean-action and random
 8. serve the export over HTTP and answer one request
finetune:demo_think runs MolmoThink instead (think.py).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from data_pipelines.formats.lerobot_reader import LeRobotDataset
from molmoact2_jax.demo import report, score
from molmoact2_jax.demo.pipeline import (convert_data, done, fit_tokenizers, record_data, save_checkpoint, stage,
                                         train_config)
from molmoact2_jax.demo.settings import DemoSettings
from molmoact2_jax.inference.client import PolicyClient
from molmoact2_jax.inference.server import ServerProcess


def run(s: DemoSettings, wd: Path) -> int:
    """Runs the demo `s` into the folder `wd`; the exit code its summary implies (report.py)."""
    wd.mkdir(parents=True, exist_ok=True)
    if s.demo.think:
        from molmoact2_jax.demo import think  # lazy: only the Think demo needs the depth VQ-VAE
        return report.think_summary(wd, s, think.run(s, wd))
    return closed_loop_demo(s, wd)


def serve_one(export: Path, heldout_src: Path, tag: str):
    server = ServerProcess(export, "--norm-tag", tag)
    try:
        client = PolicyClient(server.url, timeout=300)
        client.health()
        ds = LeRobotDataset(heldout_src)
        cols = ds.episode_columns(0)
        images = [ds.frames(0, key, [0])[0] for key in ds.camera_keys]
        actions = client.act(images=images, instruction=ds.task(0), state=cols["observation.state"][0])
        print(f"      POST /act -> actions {actions.shape}; first step {np.round(actions[0], 3).tolist()}; "
              f"expert's first action {np.round(cols['action'][0], 3).tolist()}")
        return actions
    finally:
        server.stop(timeout=30)


def closed_loop_demo(s: DemoSettings, wd: Path) -> int:
    demo, sim_cfg, tasks = s.demo, s.sim, s.tasks
    image_size = s.cfg.model.vit.image_size
    t_all = time.perf_counter()
    seconds = {}
    t0 = stage(1, f"record MetaWorld expert episodes ({', '.join(tasks)}) as LeRobot v3.0")
    datasets = record_data(wd, sim_cfg, tasks, s.train_episodes, demo.heldout_episodes, demo.workers,
                           "image" if demo.lossless else "video", action_noise=demo.action_noise)
    done(t0)
    seconds["record"] = time.perf_counter() - t0
    t0 = stage(2, "convert to ArrayRecord shards + norm_stats.json")
    # Lossless shards too: JPEG, like the mp4 before it, turns the 2-pixel goal marker grey.
    shards, stats_path = convert_data(wd, datasets, sim_cfg.action_horizon, image_size, demo.workers,
                                      image_format="png" if demo.lossless else "jpeg")
    done(t0)
    t0 = stage(3, "fit the text tokenizer and the OpenFAST action tokenizer")
    tokenizer, openfast = fit_tokenizers(wd, datasets["train"], stats_path, sim_cfg.norm_tag, sim_cfg.action_horizon)
    done(t0)

    t0 = stage(4, f"train the tiny MolmoAct2 for {s.cfg.total_steps} steps")
    from molmoact2_jax.training import trainer  # lazy: imports jax
    cfg = train_config(s.cfg, shards, stats_path, tokenizer, openfast)
    shutil.rmtree(wd / "train", ignore_errors=True)   # a fresh run, not a resume of an older demo's
    out = trainer.train(cfg, str(wd / "train"))
    cfg = out["config"]   # as trained: the tokenizer's token layout, sizes taken from the data
    import jax  # lazy: imports jax
    state = out["state"]
    params = jax.device_get(state.params if state.ema_params is None else state.ema_params)
    done(t0, f"(final loss {out['last_metrics'].get('loss', float('nan')):.4f})")
    seconds["train"] = time.perf_counter() - t0

    t0 = stage(5, "held-out action error and plots")
    err, traj = score.action_error(cfg, params, shards["heldout"])
    fit, _ = score.action_error(cfg, params, shards["train"], max_batches=16)   # the first training episodes
    png = report.plot(wd, traj, wd / "train" / "metrics.jsonl")
    score.print_error("training episodes:", fit)
    score.print_error("held-out episodes:", err)
    e_model, e_mean = err["model_chunk"]["mean"], err["mean_action"]["mean"]
    print(f"      held-out: model {e_mean / max(e_model, 1e-9):.2f}x better than the mean action; plot {png}")
    done(t0)

    t0 = stage(6, "export to the Hugging Face MolmoAct2 layout")
    from molmoact2_jax.convert.molmoact2_hf import export_hf  # lazy: imports jax
    ckpt = save_checkpoint(wd, params, cfg, sim_cfg, stats_path, tokenizer, openfast)
    export = wd / "hf_export"
    if export.exists():
        shutil.rmtree(export)
    print(f"      {export_hf(str(ckpt), str(export))}")
    done(t0)

    block, seed = demo.eval_block, s.block_seed(demo.eval_block)
    t0 = stage(7, f"closed-loop MetaWorld evaluation from the export: {block} block ({demo.eval_episodes} episodes "
                  f"per task, seeds {seed}+)")
    table = score.closed_loop(wd, export, sim_cfg, stats_path, tasks, demo.eval_episodes, seed, demo.mode,
                              demo.workers, out=wd / "closed_loop" / block)
    validation = None
    if block == "test" and demo.validation_episodes > 0:
        seed = s.block_seed("validation")
        print(f"      the model on the validation block as well ({demo.validation_episodes} episodes per task, "
              f"seeds {seed}+)")
        validation = score.closed_loop(wd, export, sim_cfg, stats_path, tasks, demo.validation_episodes, seed,
                                       demo.mode, demo.workers, policies=score.POLICIES[:1],
                                       out=wd / "closed_loop" / "validation")
    done(t0)
    seconds["closed_loop"] = time.perf_counter() - t0

    t0 = stage(8, "serve the export over HTTP and answer one request")
    serve_one(export, datasets["heldout"], sim_cfg.norm_tag)
    done(t0)
    return report.closed_loop_summary(wd, s, cfg, table, validation, err, fit, export, score.beats_mean_action(table),
                                      seconds, t_all)
