"""`molmoact2-train --config=configs/<recipe>.py[:variant] --workdir=DIR [--config.<field>=<value> ...]`

The same command runs single-process, under launch/local_multiprocess.sh, on a TPU pod and under SLURM.
Re-running it with the same --workdir resumes from the newest good checkpoint; the command-line config (e.g.
mesh flags) wins over the one saved in the checkpoint.

Exit codes: 0 done (or preempted after saving), 2 bad config / input (one line on stderr), 1 internal error
(with its traceback).
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from data_pipelines.errors import DataError
from data_pipelines.norm_stats import NormStatsError
from molmoact2_jax.recipes import load_recipe, recipe_path
from molmoact2_jax.storage import StorageError

PROG = "molmoact2-train"
EXIT_USER_ERROR = 2
_FLAG_NAMES = ("config", "workdir", "coordinator_address", "num_processes", "process_id")
DEFAULT_RECIPE = ("pretrain", "tiny")
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
        # No default here: ml_collections would load it, with the command line's --config.<field> overrides, when
        # the flag is defined (so an override the default recipe lacks failed before the user's recipe was read);
        # main() puts DEFAULT_RECIPE on the command line instead when --config is not given.
        config=config_flags.DEFINE_config_file(
            "config", None,
            f"Recipe (default configs/{DEFAULT_RECIPE[0]}.py:{DEFAULT_RECIPE[1]}): a file configs/<recipe>.py with an "
            "optional :variant (pretrain, posttrain, finetune, finetune_lora, molmoer; variants such as full, tiny). "
            "Override any field with "
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


def _user_error_exit(message: str):
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _parse_flags(argv):
    """absl's flag parsing (which loads the recipe and applies --config.<field> overrides), with every mistake in
    one line and exit 2: absl's own errors (a bad value, an unknown flag, a missing --workdir) and the exceptions
    ml_collections raises for an override of a field the recipe does not have (a misspelt name, an index past a
    list's end), which would otherwise be tracebacks."""
    spec = _recipe_arg(argv)
    path = spec.rpartition(":")[0] if spec and spec.rpartition(":")[0].endswith(".py") else spec
    if path and not os.path.isfile(path):
        # ml_collections defers this error to the first use of the config, as a traceback
        _user_error_exit(f"--config={spec}: no such recipe file (e.g. --config=configs/finetune.py:robot_tiny)")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        # a recipe that fails to load comes wrapped with its traceback as text: say the recipe's own error instead
        _user_error_exit(config_override_error(argv) or e)
    except Exception:  # noqa: BLE001 - AttributeError/KeyError/IndexError/ValueError from ml_collections
        message = config_override_error(argv)
        if message is None:
            raise
        _user_error_exit(message)


def config_override_error(argv) -> str | None:
    """The first `--config.<field>` of `argv` that the recipe (`--config=`, or the default) does not have, as one
    line naming it and the fields it may have meant; a recipe that fails to load, its error; None if neither."""
    spec = _recipe_arg(argv) or recipe_path(*DEFAULT_RECIPE)
    try:
        cfg = load_recipe(spec)
    except Exception as e:  # noqa: BLE001 - the recipe's own error (unknown variant, missing file) says it
        return f"--config={spec}: {e}"
    for a in argv[1:]:
        if not a.startswith("--config."):
            continue
        dotted = a[len("--"):].split("=", 1)[0]
        node, where = cfg, "config"
        for part in re.findall(r"\.?([^.\[\]]+)|\[(\d+)\]", dotted[len("config"):]):
            key, index = part
            if index:
                index = int(index)
                if not isinstance(node, (list, tuple)) or index >= len(node):
                    n = len(node) if isinstance(node, (list, tuple)) else 0
                    return (f"{where}[{index}]: {where} has {n} entr{'y' if n == 1 else 'ies'}; replace the whole list "
                            f"with repeated --{where}=VALUE flags (e.g. --config.data.sources=DIR1 "
                            f"--config.data.sources=DIR2; configs/common.py)")
                node, where = node[index], f"{where}[{index}]"
                continue
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
                hint = (f"; did you mean {' or '.join(f'{where}.{c}' for c in close)}?" if close else
                        f"; {where} has {sorted(keys)}" if keys else "")
                return f"{where}.{key}: no such config field{hint}"
            node, where = node[key], f"{where}.{key}"
    return None


def _recipe_arg(argv) -> str | None:
    for i, a in enumerate(argv[1:], 1):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def main(argv=None):
    holders = define_flags()
    argv = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
    if _recipe_arg(argv) is None:
        argv.insert(1, f"--config={recipe_path(*DEFAULT_RECIPE)}")
    app.run(lambda _: sys.exit(run(holders)), argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
