"""Norm stats straight from a LeRobot dataset (numeric parquet columns only) vs the way they are otherwise made:
convert the dataset (every video frame decoded, resized, JPEG-encoded) and compute the stats from the shards, as
`molmoact2-data convert` + `molmoact2-data stats SHARD_DIR` do (and as openpi's compute_norm_stats, which iterates
the decoded dataset, pays for the video too). Same dataset, same run; the two results are checked to be equal.

  python benchmarks/norm_stats_bench.py [--episodes 8] [--length 120] [--height 360 --width 640] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.fixtures import make_fixture
from data_pipelines.stats import compute_norm_stats, compute_source_norm_stats


def _numbers(stats):
    return {tag: {k: m[k] for k in ("action_stats", "state_stats")} for tag, m in stats["metadata_by_tag"].items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--embodiment", default="yam", choices=("yam", "so100", "droid"), help="fixture embodiment")
    ap.add_argument("--episodes", type=int, default=8, help="episodes in the fixture dataset")
    ap.add_argument("--length", type=int, default=120, help="frames per episode")
    ap.add_argument("--height", type=int, default=360, help="camera height in pixels")
    ap.add_argument("--width", type=int, default=640, help="camera width in pixels")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each path")
    ap.add_argument("--workers", type=int, default=2, help="conversion worker processes (the baseline's)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = make_fixture("lerobot-v3.0", args.embodiment, tmp / "src", episodes=args.episodes,
                           image_hw=(args.height, args.width), length=args.length)
        frames = args.episodes * args.length
        direct, baseline = [], []
        for r in range(args.runs):
            t0 = time.perf_counter()
            fast = compute_source_norm_stats([f"lerobot:{src}"], args.embodiment)
            direct.append(time.perf_counter() - t0)
            out = tmp / f"shards{r}"
            t0 = time.perf_counter()
            convert(ConvertOptions(f"lerobot:{src}", args.embodiment, str(out), workers=args.workers,
                                   progress=False))
            slow = compute_norm_stats([out])
            baseline.append(time.perf_counter() - t0)
            if _numbers(fast) != _numbers(slow):
                raise SystemExit("the two paths disagree")
    med = lambda t: float(np.median(t))
    cams = len(next(iter(_numbers(fast).values()))["action_stats"]["names"])
    print(f"{args.embodiment} LeRobot v3.0 fixture: {args.episodes} episodes x {args.length} frames = {frames} "
          f"frames, {args.height}x{args.width} video; {args.runs} runs; stats identical ({cams} action dims)")
    print(f"direct (numeric columns only): median {med(direct) * 1e3:.0f} ms, min {min(direct) * 1e3:.0f} ms, "
          f"{frames / med(direct):.0f} frames/s")
    print(f"convert ({args.workers} workers) + stats: median {med(baseline):.2f} s, min {min(baseline):.2f} s, "
          f"{frames / med(baseline):.0f} frames/s")
    print(f"speed-up (median): {med(baseline) / med(direct):.0f}x")


if __name__ == "__main__":
    main()
