"""`molmoact2-sim record --suite metaworld:TASK[,TASK...] --episodes N --out DIR [--workers 4] [--depth]`

Records MetaWorld's scripted experts as a LeRobot v3.0 dataset, ready for `molmoact2-data convert --embodiment
metaworld`. Bad input (unknown suite or task, an --out that cannot be written, no rendering backend) is one line
`molmoact2-sim: error: ...` and exit code 2.
"""
from __future__ import annotations

import os
import sys

from molmoact2_jax.cli.common import CommandParser, fail
from molmoact2_jax.evaluation.recorder import RecordOptions
from molmoact2_jax.evaluation.run import SimOverrides, record_suite
from molmoact2_jax.evaluation.errors import SimEvalError
from molmoact2_jax.storage import StorageError

PROG = "molmoact2-sim"
EXAMPLES = (
    "molmoact2-sim record --suite metaworld:reach-v3,push-v3 --episodes 50 --out /tmp/mw --workers 4",
    "molmoact2-sim record --suite metaworld:all --episodes 20 --out /tmp/mw_png --images png --only-success",
    "molmoact2-sim record --suite metaworld:reach-v3 --episodes 10 --out /tmp/mw_depth --depth",
)


def add_simulator_flags(p: CommandParser, checkpoint: bool) -> None:
    """The simulator flags molmoact2-sim record and molmoact2-eval share; `checkpoint`: the command reads a
    checkpoint, whose sim_settings.json supplies the defaults."""
    from_ckpt = "the checkpoint's sim_settings.json, else " if checkpoint else ""
    p.add_argument("--workers", type=int, default=0, help="parallel environment processes (0: in this process)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed: episode k of task i uses seed + 1000 * i + k (default: 0)")
    p.add_argument("--max-steps", type=int, default=None,
                   help=f"{'policy' if checkpoint else 'expert'} steps per episode (default: {from_ckpt}the "
                        "simulator's: 500 for MetaWorld" + (", 220-520 per LIBERO suite)" if checkpoint else ")"))
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help=f"camera image size in pixels (default: {from_ckpt}224 224 for MetaWorld"
                        + (", 256 256 for LIBERO)" if checkpoint else ")"))
    p.add_argument("--cameras", default=None,
                   help="comma-separated MetaWorld cameras in " + ("policy" if checkpoint else "dataset")
                        + f" order, e.g. corner2,gripperPOV (default: {from_ckpt}corner2,gripperPOV)")
    p.add_argument("--instruction-template", default=None,
                   help=("the policy's prompt" if checkpoint else "the task text stored with each episode")
                        + f", e.g. 'In simulation, {{instruction}}.' (default: {from_ckpt}the simulator's)")
    p.add_argument("--slow-render", action="store_true", help="keep shadows, reflections and multisampling (MetaWorld)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def sim_overrides(args) -> SimOverrides:
    """The simulator settings given on the command line (flags added by add_simulator_flags)."""
    return SimOverrides(image_hw=tuple(args.image_size) if args.image_size else None, cameras=args.cameras,
                        instruction_template=args.instruction_template, slow_render=args.slow_render,
                        norm_stats=getattr(args, "norm_stats", None), norm_tag=getattr(args, "norm_tag", None))


def build_parser() -> CommandParser:
    p = CommandParser(prog=PROG, description=__doc__, examples=EXAMPLES)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="record MetaWorld scripted experts as a LeRobot v3.0 dataset",
                       description=__doc__, examples=EXAMPLES)
    r.add_argument("--suite", required=True,
                   help="metaworld:TASK[,TASK...] (or metaworld:all): MetaWorld v3 tasks, which have scripted experts")
    r.add_argument("--episodes", type=int, default=10, help="episodes per task (default: %(default)s)")
    r.add_argument("--out", required=True, help="folder to write the LeRobot v3.0 dataset into")
    add_simulator_flags(r, checkpoint=False)
    r.add_argument("--codec", choices=("av1", "h264"), default="av1",
                   help="video codec of the dataset (default: av1, LeRobot's; h264 encodes faster)")
    r.add_argument("--images", choices=("video", "png"), default="video",
                   help="frame storage: video (mp4, LeRobot's crf 30; default) or png (lossless frames in the "
                        "parquet: small details such as a MetaWorld goal marker survive)")
    r.add_argument("--post-success-steps", type=int, default=5,
                   help="frames kept after the expert succeeds before the episode ends (default: %(default)s)")
    r.add_argument("--only-success", action="store_true", help="drop episodes the expert failed")
    r.add_argument("--action-noise", type=float, default=0.0,
                   help="std of Gaussian noise added to the executed action while the clean expert action is "
                        "stored (DART: states off the expert's path, labelled with its correction; default 0)")
    r.add_argument("--depth", action="store_true",
                   help="also store the first camera's metric depth per frame (MuJoCo, meters) as "
                        "depth/episode_XXXXXX.npy, for MolmoThink depth codes (molmoact2-depth-codes --sim-depth)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")   # before MuJoCo is imported: headless rendering
    try:
        summary = record_suite(args.suite, args.out, sim_overrides(args), RecordOptions(
            episodes=args.episodes, max_steps=args.max_steps, post_success_steps=args.post_success_steps,
            seed=args.seed, workers=args.workers, codec=args.codec,
            image_storage="image" if args.images == "png" else "video", only_success=args.only_success,
            depth=args.depth, action_noise=args.action_noise, progress=not args.quiet))
    except (SimEvalError, StorageError) as e:
        return fail(PROG, e)
    for task, s in summary["tasks"].items():
        print(f"  {task:28s} expert success {s['successes']}/{s['episodes']}  mean length {s['mean_length']:.1f}")
    print(f"wrote {summary['episodes_written']} episodes, {summary['frames']} frames (LeRobot v3.0) to "
          f"{args.out} in {summary['simulate_s'] + summary['write_s']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
