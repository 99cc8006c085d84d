"""`molmoact2-train --config=configs/<recipe>.py[:variant] --workdir=DIR [--config.<field>=<value> ...]`

The same command runs single-process, under launch/local_multiprocess.sh, on a TPU pod and under SLURM.
Re-running it with the same --workdir resumes from the newest good checkpoint; the command-line config (e.g.
mesh flags) wins over the one saved in the checkpoint.

Exit codes: 0 done (or preempted after saving), 2 bad config / input (one line on stderr), 1 internal error
(with its traceback).
"""
from __future__ import annotations

import logging
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from data_pipelines.errors import DataError
from data_pipelines.norm_stats import NormStatsError
from molmoact2_jax.recipes import recipe_path
from molmoact2_jax.storage import StorageError

PROG = "molmoact2-train"
EXIT_USER_ERROR = 2
_FLAG_NAMES = ("config", "workdir", "coordinator_address", "num_processes", "process_id")
# "config.data.seq_len=...", "config.mesh: ...", "--num_processes": the messages of our own validation.
_NAMES_A_SETTING = re.compile(r"\bconfig\.\w|--(?:%s)\b" % "|".join(_FLAG_NAMES))


def is_user_error(e: BaseException) -> bool:
    """Whether `e` is a problem the user fixes in the config, flags or data (one line, exit 2) rather than a bug.

    The rule (trainer.py has no config-error class, so it goes by type and message):
      - TrainingAborted: the run gave up on purpose (e.g. config.trainer.max_consecutive_bad_steps);
      - data_pipelines' DataError and NormStatsError: bad input data, the message names file / episode / key;
      - FileNotFoundError: a path given in the config or flags does not exist;
      - storage.StorageError: a path that cannot be used (gs:// without the `gcs` extra, no such bucket, a run
        directory that cannot be written or is not shared between the processes);
      - a ValueError whose message names a config field (`config.<field>`) or one of this command's flags
        (`--num_processes` ...): every deliberate check in training/, sharding/ and the data source says which.
    Anything else, a ValueError from inside JAX/Flax/Orbax included, is an internal error and keeps its traceback.
    """
    from molmoact2_jax.training.trainer import TrainingAborted  # lazy: imports jax; --help must not
    if isinstance(e, (TrainingAborted, DataError, NormStatsError, FileNotFoundError, StorageError)):
        return True
    return isinstance(e, ValueError) and bool(_NAMES_A_SETTING.search(str(e)))


def list_flags_in_help(holders, doc: str | None = None) -> None:
    """Makes `--help` of an absl CLI started as a console script list these flags.

    absl's `--help` prints the docstring of `__main__` and the key flags of the module named `sys.argv[0]`. Under
    `python -m molmoact2_jax.X` that is the module that defined the flags; under a console script it is the
    `bin/molmoact2-X` wrapper, which defines none, and `--help` printed only "Try --helpfull". So the flags are
    declared key for `sys.argv[0]` too, and the wrapper gets `doc` when it has no docstring of its own.
    """
    main_module = sys.modules.get("__main__")
    if doc and main_module is not None and not main_module.__doc__:
        main_module.__doc__ = doc
    for holder in holders:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[holder.name])


def define_flags() -> dict:
    """Defines this command's absl flags (at start-up, not on import: importing this module defines nothing)."""
    holders = dict(
        config=config_flags.DEFINE_config_file(
            "config", recipe_path("pretrain", "tiny"),
            "Recipe: a file configs/<recipe>.py with an optional :variant (pretrain, posttrain, finetune, "
            "finetune_lora, molmoer; variants such as full, tiny). Override any field with "
            "--config.<field>=<value>, e.g. --config.total_steps=100 --config.mesh.fsdp=8."),
        workdir=flags.DEFINE_string(
            "workdir", None, "Run directory: metrics.jsonl, TensorBoard events, run_info.json and checkpoints. "
            "Re-running with the same directory resumes from its newest good checkpoint.", required=True),
        coordinator_address=flags.DEFINE_string(
            "coordinator_address", None, "host:port of process 0 for a multi-process run (also "
            "MOLMOACT2_COORDINATOR). Not needed under SLURM or on a Cloud TPU pod, where JAX finds it."),
        num_processes=flags.DEFINE_integer(
            "num_processes", None, "Total number of processes, with --coordinator_address (also "
            "MOLMOACT2_NUM_PROCESSES)."),
        process_id=flags.DEFINE_integer(
            "process_id", None, "This process' index, 0 .. num_processes-1, with --coordinator_address (also "
            "MOLMOACT2_PROCESS_ID)."),
    )
    assert tuple(holders) == _FLAG_NAMES
    list_flags_in_help(holders.values(), __doc__)
    return holders


def _setup_logging(primary: bool) -> None:
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax/JAX info lines would drown the progress bar
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pkg = logging.getLogger("molmoact2_jax")
    pkg.addHandler(handler)
    pkg.propagate = False
    pkg.setLevel(logging.INFO if primary else logging.WARNING)


def _train(f: dict) -> int:
    from molmoact2_jax.sharding import distributed  # lazy: imports jax, which --help must not
    distributed.initialize(f["coordinator_address"].value, f["num_processes"].value, f["process_id"].value)
    import jax  # lazy: --help must not import jax
    _setup_logging(jax.process_index() == 0)
    from molmoact2_jax.training.trainer import train  # lazy: after distributed.initialize; --help must not import jax
    out = train(f["config"].value, f["workdir"].value)
    if jax.process_index() == 0:
        m = out["last_metrics"]
        print(f"{PROG}: {'preempted' if out['preempted'] else 'done'} at step "
              f"{int(out['state'].step)}; loss {m.get('loss', float('nan')):.4f}")
    return 0


def run(f: dict) -> int:
    """Trains; a user error (see is_user_error) becomes one line and exit code 2, anything else propagates."""
    try:
        return _train(f)
    except Exception as e:
        if not is_user_error(e):
            raise
        logging.getLogger("molmoact2_jax.train").debug("user error", exc_info=True)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


def main(argv=None):
    holders = define_flags()
    app.run(lambda _: sys.exit(run(holders)), argv=[sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
