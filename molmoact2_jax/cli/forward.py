"""`molmoact2-forward [--config=RECIPE[:variant]] [--config.<field>=VALUE ...] [--batch N]`

One forward pass of the backbone on a synthetic camera image and prompt, with the recipe's model config and seed:
its parameter count, logits shape and init / forward times. Exit code 1 when the logits are not finite.
"""
from __future__ import annotations

import sys

from molmoact2_jax.cli.common import CommandParser, add_config_flag, parse_with_config

PROG = "molmoact2-forward"
DEFAULT_RECIPE = "pretrain:tiny"
EXAMPLES = (
    "molmoact2-forward                                       # the tiny model, CPU",
    "molmoact2-forward --config=pretrain:tiny --config.model.llm.num_layers=4 --batch=1",
)


def build_parser() -> CommandParser:
    p = CommandParser(prog=PROG, description=__doc__, examples=EXAMPLES)
    add_config_flag(p, DEFAULT_RECIPE)
    p.add_argument("--batch", type=int, default=2,
                   help="copies of the synthetic image + prompt in one forward pass (default: %(default)s)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args, cfg = parse_with_config(parser, argv, DEFAULT_RECIPE)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    from molmoact2_jax.demo.forward import run  # lazy: imports jax; --help must not
    r = run(cfg, args.batch)
    print(f"backbone ({cfg.variant}): {r['params'] / 1e6:.2f}M params; logits {r['logits']}, "
          f"per-layer keys {r['keys']}; init {r['init_s']:.1f}s, forward {r['forward_s']:.1f}s, "
          f"finite={r['finite']}")
    return 0 if r["finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
