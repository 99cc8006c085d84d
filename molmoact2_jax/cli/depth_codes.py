"""`molmoact2-depth-codes (--sim-depth DIR | --lerobot DIR | --npy-dir DIR) --out DIR (--vqvae DIR | --train-steps N)`

Writes the depth-code companion dataset MolmoThink trains on (per frame `depth_buffer_codes`, the 100 VQ-VAE codes
of the first camera's depth, and `depth_updated_mask`); `molmoact2-data convert --depth-codes DIR` stores them in
the shards.

Inputs:
  --sim-depth DIR   a `molmoact2-sim record --depth` recording: MuJoCo's exact metric depth of the first camera.
  --lerobot DIR     a LeRobot dataset: frames of --camera go through --estimator (module:function, called as
                    fn(rgb HxWx3 uint8) -> depth HxW float). The default `placeholder` is NOT a depth model (inverted,
                    smoothed luminance, to exercise the tooling); do not train on its output.
  --npy-dir DIR     a folder of depth maps (*.npy, HxW or HxWx1), read in sorted order as one episode.
VQ-VAE: --vqvae DIR (one saved earlier, e.g. OUT/vqvae of another run) or --train-steps N to fit one on the input
first (saved to OUT/vqvae). Output: OUT/data/episode_XXXXXX.parquet and OUT/meta/info.json.
"""
from __future__ import annotations

import json
import os
import sys

from molmoact2_jax.cli.common import CommandParser, fail

PROG = "molmoact2-depth-codes"
EXAMPLES = (
    "molmoact2-depth-codes --sim-depth /tmp/sim --train-steps 400 --out /tmp/sim_depth",
    "molmoact2-depth-codes --lerobot /data/so100 --estimator my_pkg.depth:estimate --vqvae /tmp/sim_depth/vqvae "
    "--out /data/so100_depth",
    "molmoact2-depth-codes --npy-dir depth_maps/ --vqvae vqvae/ --out /tmp/npy_depth",
)


def build_parser() -> CommandParser:
    p = CommandParser(prog=PROG, description=__doc__, examples=EXAMPLES)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--npy-dir", help="a folder of depth maps (*.npy), read in sorted order as one episode")
    src.add_argument("--lerobot", help="a LeRobot dataset; its --camera frames go through --estimator")
    src.add_argument("--sim-depth", help="a molmoact2-sim record --depth recording (exact depth)")
    p.add_argument("--out", required=True, help="companion dataset folder to write (data/*.parquet, meta/)")
    p.add_argument("--camera", default=None, help="--lerobot: the camera key (default: the first camera)")
    p.add_argument("--estimator", default="placeholder",
                   help="--lerobot: 'placeholder' (not a depth model) or module:function (default: %(default)s)")
    vqvae = p.add_mutually_exclusive_group(required=True)
    vqvae.add_argument("--vqvae", default=None,
                       help="a VQ-VAE folder saved earlier (e.g. OUT/vqvae of a --train-steps run)")
    vqvae.add_argument("--train-steps", type=int, default=None,
                       help="fit a VQ-VAE on the input first, for this many steps (saved to OUT/vqvae)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.train_steps is not None and args.train_steps < 1:
        parser.error(f"argument --train-steps: expected an integer >= 1, got {args.train_steps}")
    from molmoact2_jax.depth import codes  # lazy: imports jax; --help must not
    from molmoact2_jax.depth import vqvae as vq  # lazy: as above
    try:
        if args.vqvae:
            params, cfg = vq.load_vqvae(args.vqvae)
        else:
            cfg = vq.VQVAEConfig()
            maps = codes.vqvae_training_maps(npy_dir=args.npy_dir, lerobot=args.lerobot, sim_depth=args.sim_depth,
                                             camera=args.camera, estimator=args.estimator)
            params, _ = vq.train_vqvae(maps, cfg, steps=args.train_steps, log_every=max(1, args.train_steps // 10))
            vq.save_vqvae(os.path.join(args.out, "vqvae"), params, cfg)
        if args.npy_dir:
            summary = codes.codes_for_npy_dir(args.npy_dir, args.out, params, cfg)
        elif args.sim_depth:
            summary = codes.codes_for_sim(args.sim_depth, args.out, params, cfg)
        else:
            summary = codes.codes_for_lerobot(args.lerobot, args.out, params, cfg, args.camera,
                                              codes.load_estimator(args.estimator), args.estimator)
    except (OSError, ValueError) as e:
        return fail(PROG, e)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
