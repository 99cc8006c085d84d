"""Restores the newest checkpoint of WORKDIR onto the mesh given by --config flags and dumps params to an npz."""

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from molmoact2_jax.training import checkpointing, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "config")
_WORKDIR = flags.DEFINE_string("workdir", None, "run dir")
_OUT = flags.DEFINE_string("out", None, "npz path")


def main(_):
    cfg = _CONFIG.value
    setup = trainer.Setup(cfg, next(iter(trainer.make_data(cfg))))
    step, state, _, _ = checkpointing.Checkpointer(_WORKDIR.value, cfg.checkpoint).restore_latest(
        setup.abstract_sharded_state())
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    np.savez(_OUT.value, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
    print("restored step", step, "mesh", dict(setup.mesh.shape))


if __name__ == "__main__":
    app.run(main)
