"""Frames/s: the Beam converter on DirectRunner vs convert.py's worker processes, same fixture, same worker count.

Both sides turn one LeRobot v3.0 fixture into shards + norm_stats.json (convert.py: `convert` then `stats`; Beam:
one pipeline), each run into a fresh folder, timed end to end (process or Beam worker start-up included, as a user
pays it). Runs alternate between the sides so load from elsewhere on the machine falls on both; the medians make the
ratio. The two outputs are checked to be the same shards. Not a test; run:

    python benchmarks/beam_convert_bench.py --workers 2 --runs 3
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from data_pipelines.beam_convert import DIRECT_MODES, beam_convert
from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.fixtures import make_fixture
from data_pipelines.stats import write_norm_stats


def same_shards(a: Path, b: Path) -> bool:
    """Shards, sidecars and index.json byte for byte (the .npz files hold write times)."""
    pick = lambda d: sorted(f.name for f in d.iterdir()
                            if f.suffix in (".array_record", ".json") and f.name != "norm_stats.json")
    return pick(a) == pick(b) and all((a / n).read_bytes() == (b / n).read_bytes() for n in pick(a))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--embodiment", default="yam", choices=("yam", "so100", "droid"))
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--length", type=int, default=60, help="frames per episode")
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--image-size", type=int, default=378, help="stored frame size (the converter's default)")
    p.add_argument("--episodes-per-shard", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="worker processes on both sides")
    p.add_argument("--mode", default="multi_processing", choices=DIRECT_MODES, help="DirectRunner running mode")
    p.add_argument("--runs", type=int, default=3, help="timed runs per side; medians make the ratio")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="beam_bench_"))
    root = work / "lerobot"
    if not (root / "meta/info.json").exists():
        make_fixture("lerobot-v3.0", args.embodiment, root, episodes=args.episodes, image_hw=(args.height, args.width),
                     length=args.length)
    opts = lambda out: ConvertOptions(f"lerobot:{root}", args.embodiment, str(out), image_size=args.image_size,
                                      episodes_per_shard=args.episodes_per_shard, workers=args.workers,
                                      progress=False)
    times = {"convert.py": [], "beam": []}
    frames = None
    for r in range(args.runs):
        for side in times:
            out = work / f"{side}-{r}"
            start = time.perf_counter()
            if side == "beam":
                index = beam_convert(opts(out), "direct", direct_mode=args.mode)
            else:
                index = convert(opts(out))
                write_norm_stats([out], out / "norm_stats.json")
            times[side].append(time.perf_counter() - start)
            frames = index["total_frames"]
    rates = {side: [frames / t for t in ts] for side, ts in times.items()}
    med = {side: float(np.median(r)) for side, r in rates.items()}
    cams = len(index["camera_keys"])
    print(f"dataset: {args.embodiment} LeRobot v3.0, {args.episodes} episodes x {args.length} frames = {frames} frames, "
          f"{cams} cameras at {args.height}x{args.width} -> {args.image_size}px JPEG, "
          f"{len(index['shards'])} shards; {args.workers} workers each side")
    for side, r in rates.items():
        label = (f"convert.py ({'process pool' if args.workers > 1 else 'in this process'}) + stats"
                 if side == "convert.py" else f"beam DirectRunner {args.mode} (pipeline incl. norm_stats)")
        print(f"{label}: {med[side]:.1f} frames/s (median of {len(r)} runs; min {min(r):.1f}, max {max(r):.1f}; "
              f"{np.median(times[side]):.2f}s per run)")
    print(f"ratio beam / convert.py: {med['beam'] / med['convert.py']:.2f}x; same shards: "
          f"{same_shards(work / 'convert.py-0', work / 'beam-0')}")
    return med["beam"] / med["convert.py"]


if __name__ == "__main__":
    main()
