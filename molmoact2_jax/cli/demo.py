"""`molmoact2-demo [--workdir DIR] [--config=finetune:demo] [--config.<field>=VALUE ...]`

The whole stack end to end on a CPU: record MetaWorld expert episodes (LeRobot v3.0), convert them to ArrayRecord
shards with norm stats, fit the text and OpenFAST tokenizers, train the tiny MolmoAct2, score it on held-out
episodes against the mean action, export it to the Hugging Face layout, run it in closed loop against the
mean-action and random policies, and serve it over HTTP. --config=finetune:demo_think trains MolmoThink instead
(depth recorded in simulation, a depth VQ-VAE, the Think styles) and scores its depth codes.

The settings are the recipe variant's (configs/finetune.py, demo and demo_think): training fields such as
total_steps, data.global_batch_size, data.seq_len, optimizer.lr.llm (every parameter group follows it),
model.vit.hidden_size (the ViT and connector width), model.action_mode, model.flow.num_samples, ema.decay, and
config.demo: tasks, cameras, train_episodes, heldout_episodes, lossless, goal_marker, object_color, object_marker,
action_noise, execute_steps, max_steps, mode, workers, vqvae_steps, think_eval_frames, and the evaluation protocol:
eval_block (test: the block never used to choose a default; validation: the one every choice is made on),
eval_episodes, validation_seed, test_seed, validation_episodes (the model on the validation block as well).

Exit codes: 0 the model beat the mean action in closed loop (demo_think: the most frequent depth code), 1 it did
not, 2 a bad flag or setting (one line on stderr, before anything is written).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from molmoact2_jax.cli.common import CommandParser, add_config_flag, fail, is_user_error, option_names, parse_with_config
from molmoact2_jax.demo.settings import DemoSettingsError, resolve

PROG = "molmoact2-demo"
DEFAULT_RECIPE = "finetune:demo"
EXAMPLES = (
    "molmoact2-demo                                          # outputs in ./molmoact2_demo",
    "molmoact2-demo --workdir=/tmp/demo --config.total_steps=300 --config.demo.eval_episodes=5",
    "molmoact2-demo --config.demo.tasks=reach-v3 --config.demo.train_episodes=40 --config.optimizer.lr.llm=3e-4",
    "molmoact2-demo --config=finetune:demo_think --workdir=/tmp/think",
)


def build_parser() -> CommandParser:
    p = CommandParser(prog=PROG, description=__doc__, examples=EXAMPLES)
    add_config_flag(p, DEFAULT_RECIPE)
    p.add_argument("--workdir", default="molmoact2_demo",
                   help="folder for every output: recordings, shards, the training run, the export, plots and "
                        "demo_summary.json (default: %(default)s)")
    return p


def main(argv=None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless; before mujoco is imported (lazily, by the evaluation)
    parser = build_parser()
    args, cfg = parse_with_config(parser, argv, DEFAULT_RECIPE)
    try:
        settings = resolve(cfg)
    except DemoSettingsError as e:
        return fail(PROG, e)
    from molmoact2_jax.demo.run import run  # lazy: imports jax; --help must not
    try:
        return run(settings, Path(args.workdir).resolve())
    except Exception as e:
        if not is_user_error(e, option_names(parser)):
            raise
        logging.getLogger("molmoact2_jax.demo").debug("user error", exc_info=True)
        return fail(PROG, e)


if __name__ == "__main__":
    sys.exit(main())
