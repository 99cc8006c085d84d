"""`molmoact2-eval (--checkpoint CKPT | --policy BASELINE) --suite SUITE --episodes N --out DIR`

Closed-loop success rates of a checkpoint (or of a baseline policy) in simulation: MetaWorld or LIBERO. Writes
DIR/report.json, DIR/summary.png and a video per task. A checkpoint may be a run directory (its newest complete
step), a trainer step, a params checkpoint or a Hugging Face export, local or `gs://` (the weights are read in
place); its sim_settings.json, written at training time, gives the cameras, image size and steps it was trained
with. Bad input (unknown suite or task, a checkpoint that does not fit the environment, no rendering backend) is
one line `molmoact2-eval: error: ...` and exit code 2.
"""
from __future__ import annotations

import os
import sys

from molmoact2_jax.cli.common import CommandParser, fail
from molmoact2_jax.cli.sim import add_simulator_flags, sim_overrides
from molmoact2_jax.evaluation.errors import SimEvalError
from molmoact2_jax.evaluation.evaluator import EvalOptions, format_report
from molmoact2_jax.evaluation.run import evaluate_suite
from molmoact2_jax.storage import StorageError

PROG = "molmoact2-eval"
EXAMPLES = (
    "molmoact2-eval --checkpoint /tmp/ft --suite metaworld:reach-v3 --episodes 20 --out /tmp/eval",
    "molmoact2-eval --checkpoint gs://bucket/run --suite libero:libero_spatial:0,1 --episodes 5 --out /tmp/libero",
    "molmoact2-eval --policy random --suite metaworld:reach-v3,push-v3 --episodes 5 --out /tmp/baseline",
)


def build_parser() -> CommandParser:
    p = CommandParser(prog=PROG, description=__doc__, examples=EXAMPLES)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint",
                     help="MolmoAct2 checkpoint: a run directory (its newest complete step), a trainer step, a params "
                          "checkpoint or a Hugging Face export; local or gs://")
    who.add_argument("--policy", choices=("mean-action", "random", "expert"),
                     help="a baseline policy instead of a checkpoint")
    p.add_argument("--suite", required=True,
                   help="metaworld:TASK[,TASK...] (or metaworld:all) | libero:SUITE[:TASK_IDS] "
                        "(e.g. libero:libero_spatial:0,3)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task (default: %(default)s)")
    p.add_argument("--out", required=True, help="local folder for report.json, summary.png and videos/")
    add_simulator_flags(p, checkpoint=True)
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
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")   # before MuJoCo is imported: headless rendering
    options = EvalOptions(episodes=args.episodes, max_steps=args.max_steps, n_action_steps=args.n_action_steps,
                          workers=args.workers, seed=args.seed, videos_per_task=args.videos_per_task,
                          progress=not args.quiet)
    try:
        report = evaluate_suite(args.suite, args.out, sim_overrides(args), options, checkpoint=args.checkpoint,
                                baseline=args.policy, mode=args.mode)
    except (SimEvalError, StorageError) as e:
        return fail(PROG, e)
    print(format_report(report))
    print(f"report: {os.path.join(args.out, 'report.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
