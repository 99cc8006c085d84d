"""`molmoact2-train --config=RECIPE[:variant] --workdir=DIR [--config.<field>=VALUE ...]`

The same command runs single-process, under launch/local_multiprocess.sh, on a TPU pod and under SLURM.
Re-running it with the same --workdir resumes from the newest good checkpoint; the command-line config (e.g. mesh
flags) wins over the one saved in the checkpoint.

Exit codes: 0 done (or preempted after saving), 2 bad config / input (one line on stderr), 1 internal error (with
its traceback).
"""
from __future__ import annotations

import logging
import sys

from absl import logging as absl_logging

from molmoact2_jax.sharding import cpu_flags, tpu_flags
from molmoact2_jax.cli.common import (CommandParser, add_config_flag, fail, is_user_error, option_names,
                                      parse_with_config)

PROG = "molmoact2-train"
DEFAULT_RECIPE = "pretrain:tiny"
EXAMPLES = (
    "molmoact2-train --config=pretrain:tiny --workdir=/tmp/run            # CPU, synthetic data",
    "molmoact2-train --config=finetune:robot_tiny --workdir=/tmp/ft --config.data.sources=SHARD_DIR",
    "molmoact2-train --config=posttrain --workdir=gs://bucket/run --config.mesh.fsdp=8 --config.total_steps=1000",
    "molmoact2-train --config=pretrain:tiny --workdir=/tmp/run --coordinator-address=127.0.0.1:1234 "
    "--num-processes=2 --process-id=0",
)


def build_parser() -> CommandParser:
    p = CommandParser(prog=PROG, description=__doc__, examples=EXAMPLES)
    add_config_flag(p, DEFAULT_RECIPE)
    p.add_argument("--workdir", required=True,
                   help="run directory: metrics.jsonl, TensorBoard events, run_info.json and checkpoints/<step>/; "
                        "re-running with the same directory resumes from its newest good checkpoint")
    p.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                   help="host:port of process 0 for a multi-process run (also MOLMOACT2_COORDINATOR); not needed "
                        "under SLURM or on a Cloud TPU pod, where JAX finds it")
    p.add_argument("--num-processes", type=int, default=None,
                   help="total number of processes, with --coordinator-address (also MOLMOACT2_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, default=None,
                   help="this process' index, 0 .. num-processes - 1, with --coordinator-address (also "
                        "MOLMOACT2_PROCESS_ID)")
    return p


def _setup_logging(primary: bool) -> None:
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax/JAX info lines would drown the progress bar
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pkg = logging.getLogger("molmoact2_jax")
    pkg.addHandler(handler)
    pkg.propagate = False
    pkg.setLevel(logging.INFO if primary else logging.WARNING)


def _train(args, cfg) -> int:
    from molmoact2_jax.sharding import distributed  # lazy: imports jax, which --help must not
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    import jax  # lazy: after distributed.initialize
    _setup_logging(jax.process_index() == 0)
    from molmoact2_jax.training.trainer import train  # lazy: after distributed.initialize
    out = train(cfg, args.workdir)
    if jax.process_index() == 0:
        m = out["last_metrics"]
        print(f"{PROG}: {'preempted' if out['preempted'] else 'done'} at step "
              f"{int(out['state'].step)}; loss {m.get('loss', float('nan')):.4f}")
    return 0


def run(args, cfg) -> int:
    """Trains; a user error (cli.common.is_user_error) becomes one line and exit code 2, anything else propagates."""
    try:
        return _train(args, cfg)
    except Exception as e:
        if not is_user_error(e, option_names(build_parser())):
            raise
        logging.getLogger("molmoact2_jax.cli.train").debug("user error", exc_info=True)
        return fail(PROG, e)


def main(argv=None) -> int:
    args, cfg = parse_with_config(build_parser(), argv, DEFAULT_RECIPE)
    tpu_flags.apply()   # before the TPU backend starts: libtpu reads LIBTPU_INIT_ARGS once
    cpu_flags.apply()   # likewise XLA_FLAGS: fake CPU devices must not deadlock in their collectives
    return run(args, cfg)


if __name__ == "__main__":
    sys.exit(main())
