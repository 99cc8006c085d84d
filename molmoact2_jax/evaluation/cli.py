"""Command lines: molmoact2-sim (record expert demonstrations) and molmoact2-eval (closed-loop evaluation).

  molmoact2-sim record --suite metaworld:reach-v3,push-v3 --episodes 50 --out DIR [--workers 4] [--depth]
  molmoact2-eval --checkpoint CKPT --suite metaworld:reach-v3 --episodes 20 --out DIR
  molmoact2-eval --policy random|mean-action|expert --suite libero:libero_spatial:0,1 --episodes 5 --out DIR

Bad input (unknown suite or task, a checkpoint that does not fit the environment, no rendering
backend) prints one line `molmoact2-...: error: ...` and exits with code 2. A checkpoint may be a `gs://` URI (the
policy reads its weights in place; its norm stats and sim settings are copied to a temporary folder); --out is a
local folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

from data_pipelines.norm_stats import NORM_STATS_FILE
from molmoact2_jax import inference, storage
from molmoact2_jax.evaluation.errors import SimEvalError
from molmoact2_jax.checkpoint_io.assets import find_asset
from molmoact2_jax.evaluation.config import (SIM_SETTINGS_FILE, config_from_settings, get_config, parse_cameras,
                                             parse_suite)
from molmoact2_jax.evaluation.envs import check_libero_tasks, check_metaworld_tasks
from molmoact2_jax.evaluation.evaluator import EvalOptions, evaluate, format_report
from molmoact2_jax.evaluation.policies import ModelPolicy, check_checkpoint_fits, make_baseline
from molmoact2_jax.evaluation.recorder import RecordOptions, record


def _common(p: argparse.ArgumentParser):
    p.add_argument("--suite", required=True,
                   help="metaworld:TASK[,TASK...] (or metaworld:all) | libero:SUITE[:TASK_IDS]")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task (default: %(default)s)")
    p.add_argument("--out", required=True,
                   help="output folder (record: the LeRobot dataset; eval: report.json, summary.png, videos/)")
    p.add_argument("--workers", type=int, default=0, help="parallel environment processes (0: in this process)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed: episode k of task i uses seed + 1000 * i + k (default: 0)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="policy steps per episode (default: the checkpoint's sim_settings.json, else the "
                        "simulator's: 500 for MetaWorld, 220-520 per LIBERO suite)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="camera image size in pixels (default: the checkpoint's sim_settings.json, else 224 224 "
                        "for MetaWorld, 256 256 for LIBERO)")
    p.add_argument("--cameras", default=None,
                   help="comma-separated MetaWorld cameras in policy order, e.g. corner2,gripperPOV (default: "
                        "the checkpoint's sim_settings.json, else corner2,gripperPOV)")
    p.add_argument("--instruction-template", default=None, help="e.g. 'In simulation, {instruction}.'")
    p.add_argument("--slow-render", action="store_true", help="keep shadows, reflections and multisampling (MetaWorld)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _config(args, suite):
    """The simulator config: a checkpoint's sim_settings.json (how it was trained) if it has one, else the
    simulator's defaults; flags given on the command line win over both."""
    overrides = dict(image_hw=tuple(args.image_size) if args.image_size else None,
                     cameras=parse_cameras(suite.simulator, args.cameras),
                     instruction_template=args.instruction_template,
                     fast_render=False if args.slow_render else None,
                     norm_stats_path=getattr(args, "norm_stats", None),
                     norm_tag=getattr(args, "norm_tag", None))
    path = find_asset(args.checkpoint, [SIM_SETTINGS_FILE]) if getattr(args, "checkpoint", None) else None
    if path is None:
        return get_config(suite.simulator, **overrides)
    try:
        settings = json.loads(storage.as_path(path).read_text())
    except (OSError, ValueError) as e:
        raise SimEvalError(f"{path}: unreadable sim settings ({e})") from None
    if settings.get("simulator") != suite.simulator:
        raise SimEvalError(f"{path}: the checkpoint was set up for {settings.get('simulator')!r}, "
                           f"not the suite's simulator {suite.simulator!r}")
    return config_from_settings(settings, where=path, **overrides)


def _check_suite(suite):
    """Resolves 'all' / empty task lists and rejects unknown suites and tasks before any worker starts."""
    if suite.simulator == "metaworld":
        return dataclasses.replace(suite, tasks=check_metaworld_tasks(suite.tasks))
    return dataclasses.replace(suite, tasks=check_libero_tasks(suite.suite, suite.tasks))


def _check_local_out(args):
    if storage.is_remote(args.out):
        raise SimEvalError(f"--out {args.out}: must be a local folder (videos and reports are written locally; "
                           f"copy them to a bucket afterwards, e.g. gcloud storage cp -r)")
    _check_writable_out(args.out)


def _check_writable_out(out: str) -> None:
    """--out can be created and written (storage.local_write_problem): a read-only folder fails here, in one line,
    instead of after minutes of simulation."""
    where, problem = storage.local_write_problem(out)
    if problem == "a file, not a folder":
        raise SimEvalError(f"--out {out}: {where} is a file, not a folder; choose another --out")
    if problem is not None:
        raise SimEvalError(f"--out {out}: cannot write there ({problem}); choose a folder you can write to")


def _local_assets(checkpoint: str, into: str) -> str:
    """A local folder (named like the checkpoint) holding a remote checkpoint's norm_stats.json and
    sim_settings.json, the files the evaluator reads before the policy; the weights are not downloaded."""
    view = os.path.join(into, storage.as_path(checkpoint).name)
    os.makedirs(view)
    for name in (NORM_STATS_FILE, SIM_SETTINGS_FILE):
        path = find_asset(checkpoint, [name])
        if path is not None:
            storage.download(path, view)
    return view


def _run(prog: str, fn, argv) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        return fn(argv)
    except (SimEvalError, storage.StorageError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def sim_main(argv=None) -> int:
    """molmoact2-sim record ...: scripted-expert demonstrations -> LeRobot v3.0 dataset."""
    p = argparse.ArgumentParser(prog="molmoact2-sim", description=sim_main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="record MetaWorld scripted experts as a LeRobot v3.0 dataset")
    _common(r)
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
    args = p.parse_args(argv)

    def run(_):
        _check_local_out(args)
        suite = parse_suite(args.suite)
        if suite.simulator != "metaworld":
            raise SimEvalError(f"record supports metaworld suites only (scripted experts), got {args.suite!r}")
        suite = _check_suite(suite)
        cfg = _config(args, suite)
        summary = record(suite, cfg, RecordOptions(
            episodes=args.episodes, max_steps=args.max_steps, post_success_steps=args.post_success_steps,
            seed=args.seed, workers=args.workers, codec=args.codec,
            image_storage="image" if args.images == "png" else "video", only_success=args.only_success,
            depth=args.depth, action_noise=args.action_noise, progress=not args.quiet), args.out)
        for task, s in summary["tasks"].items():
            print(f"  {task:28s} expert success {s['successes']}/{s['episodes']}  mean length {s['mean_length']:.1f}")
        print(f"wrote {summary['episodes_written']} episodes, {summary['frames']} frames (LeRobot v3.0) to "
              f"{args.out} in {summary['simulate_s'] + summary['write_s']:.1f}s")
        return 0
    return _run("molmoact2-sim", run, argv)


def eval_main(argv=None) -> int:
    """molmoact2-eval: closed-loop success rates of a checkpoint or a baseline policy in simulation."""
    p = argparse.ArgumentParser(prog="molmoact2-eval", description=eval_main.__doc__)
    _common(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint", help="MolmoAct2 checkpoint directory (molmoact2_jax.inference.Policy)")
    who.add_argument("--policy", choices=("mean-action", "random", "expert"), help="baseline policy")
    p.add_argument("--norm-tag", default=None, help="norm tag in the checkpoint's norm_stats.json")
    p.add_argument("--norm-stats", default=None,
                   help="mean-action: norm_stats.json, checkpoint dir or LeRobot dataset with meta/stats.json")
    p.add_argument("--n-action-steps", type=int, default=None,
                   help="actions executed per policy query (default: the checkpoint's sim_settings.json, else its "
                        "norm tag's, else 8)")
    p.add_argument("--mode", default=None,
                   help="checkpoint only: continuous (action expert, Policy.predict_action's default) or discrete "
                        "(OpenFAST tokens)")
    p.add_argument("--videos-per-task", type=int, default=1,
                   help="episodes per task saved as videos/<task>_ep<k>.mp4 (default: 1; 0: none)")
    args = p.parse_args(argv)

    def run(_):
        _check_local_out(args)
        if args.checkpoint:   # a run directory: its newest complete step (named on stderr)
            from molmoact2_jax.checkpoint_io.steps import resolve_checkpoint  # lazy: orbax + jax, not for --help
            try:
                args.checkpoint = resolve_checkpoint(args.checkpoint)
            except FileNotFoundError as e:
                raise SimEvalError(str(e)) from None
        if not (args.checkpoint and storage.is_remote(args.checkpoint)):
            return evaluate_checkpoint(args.checkpoint, args.checkpoint)
        if not storage.as_path(args.checkpoint).is_dir():
            why = " (no such bucket)" if storage.missing_bucket(args.checkpoint) else ""
            raise SimEvalError(f"checkpoint directory not found: {args.checkpoint}{why}")
        with tempfile.TemporaryDirectory(prefix="molmoact2-eval-") as tmp:
            return evaluate_checkpoint(args.checkpoint, _local_assets(args.checkpoint, tmp))

    def evaluate_checkpoint(checkpoint, assets_dir):
        """`assets_dir`: where the checkpoint's norm stats and sim settings are read (the checkpoint itself, or a
        local copy of those two files for a bucket's checkpoint, whose weights Policy.load reads in place)."""
        args.checkpoint = assets_dir
        suite = parse_suite(args.suite)
        cfg = _config(args, suite)
        if checkpoint:
            check_checkpoint_fits(assets_dir, cfg, args.norm_tag)   # before any simulator starts
        suite = _check_suite(suite)
        if checkpoint:
            from_settings = cfg.n_action_steps if find_asset(assets_dir, [SIM_SETTINGS_FILE]) else None
            n_steps = args.n_action_steps or from_settings
            if checkpoint == assets_dir:
                policy = ModelPolicy.load(checkpoint, cfg, args.norm_tag, n_steps, args.mode)
            else:   # ModelPolicy.load's steps, the weights read from the bucket
                fit = check_checkpoint_fits(assets_dir, cfg, args.norm_tag)
                n = n_steps or fit["n_action_steps"] or cfg.n_action_steps
                policy = ModelPolicy(inference.Policy.load(checkpoint), fit["tag"], int(n), args.mode,
                                     fit["camera_order"])
            name = f"model:{os.path.basename(os.path.normpath(checkpoint))}"
            n_exec = policy.n_action_steps
        else:
            policy = make_baseline(args.policy, cfg, norm_stats=args.norm_stats, norm_tag=args.norm_tag,
                                   n_steps=args.n_action_steps, seed=args.seed)
            name, n_exec = args.policy, args.n_action_steps
        report = evaluate(policy, suite, cfg, EvalOptions(
            episodes=args.episodes, max_steps=args.max_steps, n_action_steps=n_exec, workers=args.workers,
            seed=args.seed, videos_per_task=args.videos_per_task, progress=not args.quiet, policy_name=name),
            args.out)
        print(format_report(report))
        print(f"report: {os.path.join(args.out, 'report.json')}")
        return 0
    return _run("molmoact2-eval", run, argv)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    sys.exit(sim_main(sys.argv[2:]) if cmd == "sim" else eval_main(sys.argv[2:] if cmd == "eval" else sys.argv[1:]))
