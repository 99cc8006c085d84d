"""`molmoact2-train --config=configs/<recipe>.py[:variant] --workdir=DIR [--config.<field>=<value> ...]`

The same command runs single-process, under launch/local_multiprocess.sh, on a TPU pod and under SLURM.
Re-running it with the same --workdir resumes from the newest good checkpoint; the command-line config (e.g.
mesh flags) wins over the one saved in the checkpoint.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from molmoact2_jax.recipes import recipe_path

_DEFAULT = recipe_path("pretrain", "tiny")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "Recipe config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints).", required=True)
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process runs.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "This process' index.")


def _main(_):
    from molmoact2_jax.sharding import distributed
    distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
    import jax
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax/JAX info lines would drown the progress bar
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pkg = logging.getLogger("molmoact2_jax")
    pkg.addHandler(handler)
    pkg.propagate = False
    pkg.setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    from molmoact2_jax.training.trainer import TrainingAborted, train
    try:
        out = train(_CONFIG.value, _WORKDIR.value)
    except (TrainingAborted, ValueError) as e:
        if not isinstance(e, TrainingAborted):
            logging.getLogger("molmoact2_jax.train").debug("config error", exc_info=True)
        print(f"molmoact2-train: error: {e}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        m = out["last_metrics"]
        print(f"molmoact2-train: {'preempted' if out['preempted'] else 'done'} at step "
              f"{int(out['state'].step)}; loss {m.get('loss', float('nan')):.4f}")
    return 0


def main(argv=None):
    app.run(lambda a: sys.exit(_main(a)), argv=[sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
