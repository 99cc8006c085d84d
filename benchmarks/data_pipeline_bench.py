"""Samples/s: Grain over ArrayRecord shards vs per-sample decoding from the LeRobot mp4 dataset.

Both paths produce the same training example for the same (episode, frame): every camera image
resized to a square, the normalized state and the normalized, padded action chunk. The LeRobot
path does what LeRobot does per sample: read the parquet rows, seek and decode each camera's mp4
at the frame timestamp (decoders cached, as LeRobot's LRU does), on as many threads as Grain gets
(`--read-threads`, one dataset reader per thread, as DataLoader workers each hold one). Reported
next to the ratio: the one-off conversion cost and the number of samples after which it has paid for
itself, and what one full-size fine-tuning step consumes per chip (from the analytic FLOPs and a
stated MFU, since no CPU can run it). Not a test; run:

    python benchmarks/data_pipeline_bench.py --samples 300
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.fixtures import make_fixture
from data_pipelines.formats.lerobot_reader import LeRobotDataset
from data_pipelines.pipeline.robot_dataset import PipelineConfig, Source, build_robot_dataset
from data_pipelines.formats.images import resize_square
from data_pipelines.pipeline.robot_transform import RobotTransformConfig
from data_pipelines.stats import write_norm_stats
from data_pipelines.norm_stats import TagInfo
from data_pipelines.transforms.normalize import normalize, pad_last


def lerobot_samples(root, tag_meta, picks, image_size, horizon):
    """Per-sample path: parquet rows + mp4 seek/decode per camera, like LeRobotDataset.__getitem__."""
    ds = LeRobotDataset(root)
    info = TagInfo.from_json("baseline", tag_meta, "q01_q99", "norm_stats")
    a_stats, s_stats = info.action_stats, info.state_stats
    for ep, t in picks:
        cols = ds.episode_columns(ep)
        T = len(cols["action"])
        idx = np.minimum(np.arange(t, t + horizon), T - 1)
        images = [resize_square(ds.frames(ep, key, [t])[0], image_size) for key in ds.camera_keys]
        state, _ = pad_last(normalize(cols["observation.state"][t], s_stats), 32)
        actions, _ = pad_last(normalize(cols["action"][idx], a_stats), 32)
        yield {"images": np.stack(images), "state": state, "actions": actions}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--embodiment", default="yam", choices=("yam", "so100", "droid"))
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--length", type=int, default=60)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--codec", default="av1", choices=("av1", "h264"))
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="Grain worker processes")
    p.add_argument("--read-threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3, help="timed runs per side; medians make the ratio")
    p.add_argument("--workdir", default=None)
    p.add_argument("--chip-tflops", type=float, default=459.0,
                   help="peak bf16 TFLOP/s per chip for the full-size estimate (default: TPU v5p)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed MFU of the full-size step (default: %(default)s)")
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dp_bench_"))
    root, shards = work / "lerobot", work / "shards"
    t0 = time.perf_counter()
    if not (root / "meta/info.json").exists():
        make_fixture("lerobot-v3.0", args.embodiment, root, episodes=args.episodes, codec=args.codec,
                     image_hw=(args.height, args.width), length=args.length)
    t1 = time.perf_counter()
    convert(ConvertOptions(f"lerobot:{root}", args.embodiment, str(shards), image_size=args.image_size,
                           progress=False))
    write_norm_stats([shards], work / "norm_stats.json")
    t2 = time.perf_counter()
    stats = json.loads((work / "norm_stats.json").read_text())
    tag, tag_meta = next(iter(stats["metadata_by_tag"].items()))
    horizon = tag_meta["action_horizon"]
    total = args.episodes * args.length
    rng = np.random.default_rng(0)
    picks = [(int(g) // args.length, int(g) % args.length) for g in rng.integers(0, total, args.samples)]

    threads = max(args.read_threads, 1)
    parts = [picks[i::threads] for i in range(threads)]
    count = lambda part: sum(1 for _ in lerobot_samples(root, tag_meta, part, args.image_size, horizon))
    le_rates = []
    for _ in range(args.runs):
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            n_le = sum(pool.map(count, parts))
        le_rates.append(n_le / (time.perf_counter() - start))

    cfg = PipelineConfig(sources=[Source(str(shards))], norm_stats=stats, batch_size=args.batch_size, seed=0,
                         num_epochs=None, shard_index=0, shard_count=1, worker_count=args.workers,
                         read_threads=args.read_threads,
                         transform=RobotTransformConfig(image_size=args.image_size, augment=False))
    it = iter(build_robot_dataset(cfg))
    next(it)  # start-up (worker spawn, first reads) is not throughput
    gr_rates = []
    for _ in range(args.runs):
        start = time.perf_counter()
        n_gr = 0
        while n_gr < args.samples:
            n_gr += len(next(it)["state"])
        gr_rates.append(n_gr / (time.perf_counter() - start))

    le_rate, gr_rate = float(np.median(le_rates)), float(np.median(gr_rates))
    spread = lambda r: f"median of {len(r)} runs; min {min(r):.1f}, max {max(r):.1f}"
    print(f"dataset: {args.embodiment} LeRobot v3.0 {args.codec}, {args.episodes} episodes x {args.length} frames, "
          f"{len(tag_meta['camera_keys']) or 'dataset'} cameras at {args.height}x{args.width}; "
          f"examples resized to {args.image_size}px, action chunk {horizon}")
    convert_s = t2 - t1
    print(f"setup: fixture {t1 - t0:.1f}s; convert+stats {convert_s:.1f}s one-off ({total / convert_s:.1f} frames/s)")
    print(f"lerobot mp4 per-sample decode ({threads} threads, {n_le} samples per run): {le_rate:.1f} samples/s "
          f"({spread(le_rates)})")
    print(f"grain arrayrecord (workers={args.workers}, threads={args.read_threads}, {n_gr} samples per run): "
          f"{gr_rate:.1f} samples/s ({spread(gr_rates)})")
    saved_per_sample = 1.0 / le_rate - 1.0 / gr_rate
    print(f"speed-up: {gr_rate / le_rate:.2f}x (medians), same threads; the conversion pays for itself after "
          f"{convert_s / saved_per_sample:.0f} samples ({convert_s / saved_per_sample / total:.1f} epochs of this "
          f"dataset)" if saved_per_sample > 0 else f"speed-up: {gr_rate / le_rate:.2f}x")
    step_rate = tiny_train_samples_per_s()
    print(f"tiny-model train step (fp32, 1 CPU device, batch 8): {step_rate:.1f} samples/s; the pipeline is "
          f"{gr_rate / step_rate:.1f}x faster than the trainer consumes")
    per_chip, flops = full_size_samples_per_chip(args.chip_tflops, args.mfu, len(tag_meta["camera_keys"]) or 2)
    print(f"full-size finetune step: {flops / 1e12:.2f} TFLOP per sample (analytic) -> {per_chip:.1f} samples/s per "
          f"chip at {args.chip_tflops:.0f} TFLOP/s x {args.mfu:.0%} MFU; one host's pipeline here feeds "
          f"{gr_rate / per_chip:.1f} chips (a v5p host has 4)")
    return gr_rate / le_rate


def full_size_samples_per_chip(chip_tflops: float, mfu: float, num_images: int) -> tuple[float, float]:
    """Samples/s one chip consumes in the full-size fine-tuning step (configs/finetune.py), from the analytic
    hardware FLOPs of one example; a figure for sizing the input pipeline, not a measurement."""
    from molmoact2_configs.finetune import get_config
    from molmoact2_jax.models import flops as flops_lib
    from molmoact2_jax.models.molmoact2 import MolmoAct2
    c = get_config()
    batch = MolmoAct2(c.model).fake_batch(1, num_images=num_images, training=True, abstract_arrays=True)
    flops = flops_lib.train_step_flops(c.model, batch)["hardware"]
    return chip_tflops * 1e12 * mfu / flops, flops


def tiny_train_samples_per_s(steps: int = 5, batch: int = 8) -> float:
    """Samples/s the tiny model's compiled train step consumes (synthetic batches of the same shape family)."""
    import jax
    from molmoact2_configs.finetune import get_config
    from molmoact2_jax.training import trainer
    c = get_config("tiny")
    c.data.global_batch_size = batch
    data = trainer.make_data(c)
    setup = trainer.Setup(c, next(trainer.make_data(c)))
    state = setup.create_state()
    with setup.context():
        b = trainer.global_batch(next(data), setup.batch_shardings, batch)
        step = setup.train_step.lower(state, b).compile()
        state, m = step(state, b)
        jax.block_until_ready(m)
        start = time.perf_counter()
        for _ in range(steps):
            state, m = step(state, trainer.global_batch(next(data), setup.batch_shardings, batch))
        jax.block_until_ready(m)
    return steps * batch / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
