"""`molmoact2-demo --config=finetune:demo_think`: MolmoThink training end to end on a CPU.

 1. record MetaWorld expert episodes with the first camera's exact depth (MuJoCo's depth buffer)
 2. fit the depth VQ-VAE on those depth maps and write the depth-code companion datasets
 3. convert to ArrayRecord shards with the codes, norm stats, tokenizers
 4. train the tiny model with the three Think styles (robot_action : robot_depth : robot_depth_action = 1:1:1,
    as `configs/posttrain.py:think_tiny`) and per-layer depth gates (both set by the demo_think variant)
 5. export to the Hugging Face layout and, from the export, predict the depth codes of held-out frames: MolmoThink
    (the previous frame's codes as the cache, only changed cells re-predicted) and full re-prediction, against
    copying the previous frame's codes and the most frequent code; latency of both modes
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from data_pipelines.formats.depth_codes import NUM_CODES, DepthCodes
from data_pipelines.formats.lerobot_reader import LeRobotDataset
from molmoact2_jax.demo import pipeline
from molmoact2_jax.demo.settings import DemoSettings
from molmoact2_jax.depth import codes as depth_codes
from molmoact2_jax.depth import vqvae as vq

# The VQ-VAE at half the reference input (160 px, four stride-2 stages): the same 10x10 grid of 128 codes
# (the interface the depth tokens assume), a quarter of the reference's cost on the demo's 112 px depth maps.
DEMO_VQVAE = vq.VQVAEConfig(image_size=160, channels=(16, 32, 64, 128))


def fit_codes(wd: Path, datasets: dict, steps: int, seed: int = 0) -> tuple[dict, dict]:
    """VQ-VAE on the training recording's depth maps, then the companion codes of every recording."""
    maps = depth_codes.sim_training_maps(str(datasets["train"]), max_maps=4000, seed=seed)
    t0 = time.perf_counter()
    params, hist = vq.train_vqvae(maps, DEMO_VQVAE, steps=steps, batch_size=16, seed=seed)
    fit_s = time.perf_counter() - t0
    vq.save_vqvae(str(wd / "vqvae"), params, DEMO_VQVAE)
    out = {}
    for name, src in datasets.items():
        out[name] = wd / "depth_codes" / name
        shutil.rmtree(out[name], ignore_errors=True)
        depth_codes.codes_for_sim(str(src), str(out[name]), params, DEMO_VQVAE)
    last = hist[-1]
    info = {"maps": len(maps), "steps": steps, "fit_s": round(fit_s, 1), "recon_mse": last["recon"],
            "codes_used": int(last["codes_used"]), "image_size": DEMO_VQVAE.image_size}
    print(f"      VQ-VAE on {len(maps)} depth maps, {steps} steps in {fit_s:.0f}s: recon MSE {last['recon']:.4f}, "
          f"{int(last['codes_used'])} of {DEMO_VQVAE.num_codes} codes used in the last batch")
    return out, info


def gate_change(params) -> dict:
    """How far the depth gates moved from their init (kernel 0, bias -4 at init)."""
    import jax  # lazy: imports jax; --help must not
    ae = jax.device_get(params["action_expert"])
    k, b = np.asarray(ae["depth_gate_kernel"]), np.asarray(ae["depth_gate_bias"])
    return {"kernel_max_abs": float(np.abs(k).max()), "bias_max_abs_change": float(np.abs(b + 4.0).max()),
            "gate_mean": float(np.mean(1 / (1 + np.exp(-b))))}


def depth_ce_curve(metrics_path: Path, window: int = 20) -> dict:
    rows = [json.loads(line) for line in open(metrics_path)]
    ce = [r["depth_ce"] for r in rows if r.get("depth_tokens", 0) > 0]
    first, last = float(np.mean(ce[:window])), float(np.mean(ce[-window:]))
    acc = [r["depth_token_accuracy"] for r in rows if r.get("depth_tokens", 0) > 0]
    return {"depth_ce_first": first, "depth_ce_last": last, "depth_ce_ratio": last / max(first, 1e-9),
            "train_depth_token_accuracy_last": float(np.mean(acc[-window:]))}


def eval_frames(ds: LeRobotDataset, max_frames: int) -> list[tuple[int, int]]:
    """(episode, frame) pairs spread over the held-out episodes, frame >= 1 (each needs a previous frame)."""
    pairs = [(e.index, t) for e in ds.episodes for t in range(1, e.length)]
    if len(pairs) > max_frames:
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, max_frames).round().astype(int)]
    return pairs


def most_frequent_code(train_src: Path, train_codes: Path) -> int:
    ds, comp = LeRobotDataset(train_src), DepthCodes(train_codes)
    counts = np.zeros(NUM_CODES, np.int64)
    for e in comp.episodes():
        codes = comp.episode(e, ds.episodes[e].length)[0]
        counts += np.bincount(codes.reshape(-1).astype(int), minlength=len(counts))
    return int(np.argmax(counts))


def depth_accuracy(export: Path, src: Path, codes_dir: Path, most_frequent: int, tag: str, max_frames: int) -> dict:
    """Depth-code accuracy of the exported model on held-out frames, Think vs full, against the baselines."""
    from molmoact2_jax.inference.policy import Policy  # lazy: imports jax

    policy = Policy.load(str(export))
    ds, companion = LeRobotDataset(src), DepthCodes(codes_dir)
    keys = ds.camera_keys
    loaded: dict = {}

    def episode(ep):
        if ep not in loaded:
            loaded.clear()
            loaded[ep] = (ds.episode_columns(ep)["observation.state"], {k: ds.episode_video(ep, k) for k in keys},
                          companion.episode(ep, ds.episodes[ep].length)[0].astype(np.int32), ds.task(ep))
        return loaded[ep]

    pairs = eval_frames(ds, max_frames)
    acc = {"think": [], "full": [], "copy_previous": [], "most_frequent": []}
    lat = {"think": [], "full": []}
    repredicted = []
    for i, (ep, t) in enumerate(pairs[:1] + pairs):   # the first call of each mode compiles: not scored
        states, video, true, task = episode(ep)
        images = [video[k][t] for k in keys]
        t0 = time.perf_counter()
        full = policy.predict_action(images, task, states[t], tag, think=True, seed=0)
        t1 = time.perf_counter()
        think = policy.predict_action(images, task, states[t], tag, think=True, seed=0,
                                      depth_cache={"image": video[keys[0]][t - 1], "depth_bins": true[t - 1]})
        t2 = time.perf_counter()
        if i == 0:
            continue
        lat["full"].append(t1 - t0)
        lat["think"].append(t2 - t1)
        acc["full"].append(np.mean(full.depth_bins == true[t]))
        acc["think"].append(np.mean(think.depth_bins == true[t]))
        acc["copy_previous"].append(np.mean(true[t - 1] == true[t]))
        acc["most_frequent"].append(np.mean(true[t] == most_frequent))
        repredicted.append(think.think_stats.num_predicted)
    return {"depth_accuracy": float(np.mean(acc["think"])), "full_depth_accuracy": float(np.mean(acc["full"])),
            "copy_previous_accuracy": float(np.mean(acc["copy_previous"])),
            "most_frequent_accuracy": float(np.mean(acc["most_frequent"])),
            "think_latency_ms": 1000 * float(np.median(lat["think"])),
            "full_latency_ms": 1000 * float(np.median(lat["full"])),
            "mean_cells_repredicted": float(np.mean(repredicted)), "most_frequent_code": most_frequent,
            "episodes": len({ep for ep, _ in pairs}), "frames": len(pairs)}


def run(s: DemoSettings, wd: Path) -> dict:
    """The Think demo; returns the `think` section of demo_summary.json."""
    settings, sim_cfg, tasks = s.demo, s.sim, s.tasks
    image_size, steps = s.cfg.model.vit.image_size, s.cfg.total_steps
    t_all = time.perf_counter()
    seconds = {}
    t0 = pipeline.stage(1, f"record MetaWorld expert episodes ({', '.join(tasks)}) with the first camera's depth", 5)
    datasets = pipeline.record_data(wd, sim_cfg, tasks, s.train_episodes, settings.heldout_episodes,
                                    settings.workers, "image" if settings.lossless else "video", depth=True,
                                    action_noise=settings.action_noise)
    pipeline.done(t0)
    seconds["record"] = time.perf_counter() - t0
    t0 = pipeline.stage(2, "fit the depth VQ-VAE on the recorded depth maps; write the depth-code datasets", 5)
    companions, vq_info = fit_codes(wd, datasets, settings.vqvae_steps)
    pipeline.done(t0)
    seconds["depth_codes"] = time.perf_counter() - t0
    t0 = pipeline.stage(3, "convert to ArrayRecord shards with the depth codes; norm stats; tokenizers", 5)
    shards, stats_path = pipeline.convert_data(wd, datasets, sim_cfg.action_horizon, image_size, settings.workers,
                                               companions)
    tokenizer, openfast = pipeline.fit_tokenizers(wd, datasets["train"], stats_path, sim_cfg.norm_tag,
                                                  sim_cfg.action_horizon)
    pipeline.done(t0)

    t0 = pipeline.stage(4, f"train the tiny MolmoAct2-Think for {steps} steps (styles 1:1:1, depth gates)", 5)
    from molmoact2_jax.training import trainer  # lazy: imports jax
    cfg = pipeline.train_config(s.cfg, shards, stats_path, tokenizer, openfast)
    shutil.rmtree(wd / "train", ignore_errors=True)
    out = trainer.train(cfg, str(wd / "train"))
    cfg = out["config"]   # as trained: the tokenizer's token layout, sizes taken from the data
    import jax  # lazy: imports jax; --help must not
    params = jax.device_get(out["state"].params)
    curve = depth_ce_curve(wd / "train" / "metrics.jsonl")
    gates = gate_change(params)
    pipeline.done(t0, f"(depth CE {curve['depth_ce_first']:.3f} -> {curve['depth_ce_last']:.3f}; depth gates moved "
                      f"{gates['bias_max_abs_change']:.2e} (bias), {gates['kernel_max_abs']:.2e} (kernel))")
    seconds["train"] = time.perf_counter() - t0

    t0 = pipeline.stage(5, "export to the Hugging Face layout; depth codes of held-out frames from the export", 5)
    from molmoact2_jax.convert.molmoact2_hf import export_hf  # lazy: imports jax
    ckpt = pipeline.save_checkpoint(wd, params, cfg, sim_cfg, stats_path, tokenizer, openfast)
    export = wd / "hf_export"
    shutil.rmtree(export, ignore_errors=True)
    export_hf(str(ckpt), str(export))
    mode = most_frequent_code(datasets["train"], companions["train"])
    result = depth_accuracy(export, datasets["heldout"], companions["heldout"], mode, sim_cfg.norm_tag,
                            settings.think_eval_frames)
    pipeline.done(t0)
    seconds["evaluate"] = time.perf_counter() - t0
    print(f"      depth-code accuracy on {result['frames']} held-out frames ({result['episodes']} episodes):")
    for name, key in (("MolmoThink (previous codes cached)", "depth_accuracy"),
                      ("full re-prediction", "full_depth_accuracy"),
                      ("copy the previous frame's codes", "copy_previous_accuracy"),
                      ("most frequent code", "most_frequent_accuracy")):
        print(f"        {name:36s} {result[key]:.3f}")
    print(f"      latency: MolmoThink {result['think_latency_ms']:.0f} ms, full {result['full_latency_ms']:.0f} ms "
          f"({result['mean_cells_repredicted']:.1f} of 100 cells re-predicted per frame)")
    return {**result, **curve, "depth_gate": gates, "vqvae": vq_info, "export": str(export),
            "styles": dict(s.cfg.data.style_weights), "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "minutes": (time.perf_counter() - t_all) / 60}
