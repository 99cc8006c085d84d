"""`molmoact2-data`: fixture | convert | stats | inspect | embodiment | openfast | tokenizer.

Robot datasets (LeRobot v2.1 / v3.0, RLDS) -> ArrayRecord shards that training reads, with their norm stats and,
for models trained from scratch, tokenizers fitted on them. Errors in the data or the command line are one line
`molmoact2-data: error: ...`, exit 2; Ctrl-C exits 130 (a conversion first removes its unfinished shards and says how
to resume)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.embodiments import EMBODIMENTS
from data_pipelines.errors import DataError
from data_pipelines.fixtures import FORMATS, make_fixture
from data_pipelines.formats.lerobot_writer import DIRTY_VARIANTS
from data_pipelines.inspect_data import inspect_path
from data_pipelines.norm_stats import NORM_STATS_FILE
from data_pipelines import shard_tokenizers
from data_pipelines.shard_tokenizers import MAX_ACTION_TOKENS, OPENFAST_SCALE, OPENFAST_VOCAB, TEXT_VOCAB
from data_pipelines.sources import write_embodiment_from
from data_pipelines.stats import norm_stats_out, write_norm_stats
from molmoact2_jax.cli.common import CommandParser, fail

PROG = "molmoact2-data"

EMB_HELP = ("a built-in robot (" + ", ".join(sorted(EMBODIMENTS)) + ") or the path of an embodiment .json "
            "file (molmoact2-data embodiment --from lerobot:DIR --out robot.json writes one)")


CONVERT = "molmoact2-data convert --source lerobot:/data/my_robot --embodiment robot.json --out shards/"
EXAMPLES = {
    "fixture": ("molmoact2-data fixture --format lerobot-v3.0 --embodiment so100 --out /tmp/so100",),
    "convert": (CONVERT,
                "molmoact2-data convert --source rlds:/data/droid --embodiment droid --out droid_shards/ --workers 8"),
    "stats": ("molmoact2-data stats shards/                     # writes shards/norm_stats.json",),
    "inspect": ("molmoact2-data inspect /data/my_robot --max-errors 10",),
    "embodiment": ("molmoact2-data embodiment --from lerobot:/data/my_robot --out robot.json",),
    "openfast": ("molmoact2-data openfast shards/                  # writes shards/openfast/",),
    "tokenizer": ("molmoact2-data tokenizer shards/ --vocab-size 1024",),
}


def build_parser() -> CommandParser:
    p = CommandParser(prog=PROG, description=__doc__,
                      examples=[EXAMPLES["embodiment"][0], CONVERT, EXAMPLES["stats"][0], EXAMPLES["inspect"][0]])
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fixture", help="write a small synthetic dataset in a real on-disk format",
                       examples=EXAMPLES["fixture"])
    f.add_argument("--format", required=True, choices=FORMATS, help="on-disk format to write")
    f.add_argument("--embodiment", required=True, metavar="NAME|FILE.json",
                   help="robot whose state/action names, cameras and fps the fixture uses: " + EMB_HELP)
    f.add_argument("--out", required=True, help="folder to write the dataset into")
    f.add_argument("--episodes", type=int, default=6, help="number of episodes (default: %(default)s)")
    f.add_argument("--seed", type=int, default=0, help="random seed of the synthetic episodes (default: 0)")
    f.add_argument("--codec", choices=("av1", "h264"), default=None,
                   help="LeRobot video codec (default: h264 for yam, av1 otherwise)")
    f.add_argument("--so100-naming", choices=("old", "new"), default=None,
                   help="so100: old (main_* joints, laptop/phone cameras) or new names "
                        "(default: old for lerobot-v2.1, new otherwise)")
    f.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="camera frame size in pixels (default: the embodiment's small fixture size)")
    f.add_argument("--dirty", nargs="*", default=[], metavar="VARIANT",
                   help="LeRobot quirks seen in the wild to write on purpose, to test readers: "
                        + ", ".join(DIRTY_VARIANTS))

    c = sub.add_parser("convert", help="LeRobot/RLDS source -> ArrayRecord shards", examples=EXAMPLES["convert"])
    c.add_argument("--source", required=True,
                   help="lerobot:PATH or rlds:PATH; lerobot:OWNER/NAME reads a hub dataset already in the local "
                        "Hugging Face cache ($HF_LEROBOT_HOME or $HF_HOME/hub; nothing is downloaded)")
    c.add_argument("--embodiment", required=True, metavar="NAME|FILE.json",
                   help="robot the source was recorded with (its tag, state/action names, cameras; a dataset of "
                        "another robot is refused): " + EMB_HELP + "; metaworld: datasets written by "
                        "molmoact2-sim record")
    c.add_argument("--out", required=True,
                   help="output folder for the .array_record shards and index.json; a rerun with the same source and "
                        "options resumes finished shards; one holding shards of another source or other options is "
                        "refused (see --overwrite)")
    c.add_argument("--overwrite", action="store_true",
                   help="first remove what an earlier conversion wrote in --out (shards, sidecars, index.json, "
                        "convert_options.json, norm_stats.json; nothing else) instead of refusing a folder converted "
                        "from another source or with other options")
    c.add_argument("--workers", type=int, default=1,
                   help="worker processes writing shards in parallel (default: 1, in this process)")
    c.add_argument("--episodes-per-shard", type=int, default=50, help="episodes per shard (default: %(default)s)")
    c.add_argument("--horizon", type=int, default=None,
                   help="action chunk length stored per frame (default: the embodiment's action horizon)")
    c.add_argument("--image-size", type=int, default=378,
                   help="store frames squashed to SxS (the model input size; default: %(default)s); 0 keeps "
                        "the aspect ratio")
    c.add_argument("--max-image-side", type=int, default=384,
                   help="with --image-size 0: cap on the longer side in pixels (default: %(default)s)")
    c.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="on a bad episode: stop (raise, the default) or skip it and list it in index.json")
    c.add_argument("--delta-action-dims", type=_dims, default=None, metavar="D,D,...",
                   help="action dims to train as deltas w.r.t. the same state dim (e.g. 0,1,2,3,4,5 for six "
                        "joints; 'none' for absolute; default: the embodiment's, absolute for the released tags)")
    c.add_argument("--tolerance-s", type=float, default=1e-4,
                   help="allowed timestamp error in seconds (frame spacing vs 1/fps, video frame times; "
                        "default: %(default)s)")
    c.add_argument("--image-format", choices=("jpeg", "png"), default="jpeg",
                   help="frame encoding in the shards: jpeg (quality 95, 4:4:4 chroma) or png (lossless; for "
                        "small targets such as a simulator's goal marker; default: %(default)s)")
    c.add_argument("--depth-codes", default=None, metavar="DIR",
                   help="MolmoThink: a depth-code companion dataset (depth_buffer_codes / depth_updated_mask "
                        "parquet under DIR/data, e.g. a released <repo>_depth or molmoact2-depth-codes output); "
                        "its codes are stored with every frame")
    c.add_argument("--runner", choices=("direct", "dataflow", "flink", "spark"), default=None,
                   help="run the conversion as an Apache Beam pipeline on this runner (same shards; also writes "
                        "OUT/norm_stats.json; needs pip install -e \".[beam]\"). direct: DirectRunner, "
                        "multi-process, with --workers processes. Default: no Beam, --workers processes on this host")
    c.add_argument("--beam-options", default=None, metavar='"--OPTION=V ..."',
                   help="with --runner: more Beam pipeline options as one string, given as "
                        "--beam-options=\"--project=P --region=R ...\" (with '=', as the string starts with '-'); "
                        "they override ours, e.g. --direct_running_mode=in_memory")

    s = sub.add_parser("stats", help="norm_stats.json from shard directories, or from raw datasets without video",
                       examples=EXAMPLES["stats"])
    s.add_argument("shard_dirs", nargs="+", metavar="SHARD_DIR|lerobot:PATH|rlds:PATH",
                   help="shard folders written by `molmoact2-data convert`, or raw sources (only their numeric "
                        "columns are read: no video is decoded; needs --embodiment)")
    s.add_argument("--out", default=None,
                   help="norm_stats.json file to write (default: SHARD_DIR/norm_stats.json of the first shard folder, "
                        "where training recipes look; required for lerobot:/rlds: sources)")
    s.add_argument("--embodiment", default=None, metavar="NAME|FILE.json",
                   help="with lerobot:/rlds: sources: their embodiment (tag, state names, tag metadata): " + EMB_HELP)
    s.add_argument("--horizon", type=int, default=None,
                   help="with lerobot:/rlds: sources: the action chunk length to record (default: the "
                        "embodiment's, as `convert` does)")
    s.add_argument("--delta-action-dims", type=_dims, default=None, metavar="D,D,...",
                   help="with lerobot:/rlds: sources: action dims trained as deltas (as for convert)")
    s.add_argument("--on-error", default="raise", choices=("raise", "skip"),
                   help="with lerobot:/rlds: sources: skip episodes with bad data instead of stopping")
    s.add_argument("--norm-mode", default="q01_q99",
                   help="normalisation recorded in the file: q01_q99 (default), mean_std, min_max, q10_q90 or none")

    i = sub.add_parser("inspect", help="episodes, frames, features and first errors", examples=EXAMPLES["inspect"])
    i.add_argument("path", help="a LeRobot dataset, RLDS folder or shard folder")
    i.add_argument("--max-errors", type=int, default=5,
                   help="report at most this many errors (default: %(default)s)")
    i.add_argument("--deep", action="store_true", help="decode every video frame")

    _add_tokenizer_parsers(sub)   # openfast, tokenizer: tokenizers fitted on converted shards

    e = sub.add_parser("embodiment", help="write a starting embodiment file (your robot as data) from a dataset",
                       examples=EXAMPLES["embodiment"])
    e.add_argument("--from", dest="source", required=True, metavar="lerobot:PATH",
                   help="a LeRobot dataset folder (or lerobot:OWNER/NAME in the local Hugging Face cache); its "
                        "meta/info.json gives the names, dims, cameras, fps and robot_type")
    e.add_argument("--out", required=True, help="embodiment .json file to write (an existing file is not overwritten)")
    e.add_argument("--state-key", default="observation.state",
                   help="feature holding the state (default: %(default)s)")
    e.add_argument("--action-key", default="action", help="feature holding the action (default: %(default)s)")
    return p


def _add_tokenizer_parsers(sub) -> None:
    """The `openfast` and `tokenizer` subcommands (data_pipelines/shard_tokenizers.py)."""
    o = sub.add_parser("openfast", help="fit the OpenFAST action tokenizer on converted shards' action chunks, "
                                        "normalised as training does", examples=EXAMPLES["openfast"])
    o.add_argument("shard_dirs", nargs="+", metavar="SHARD_DIR", help="shard folders written by convert")
    o.add_argument("--norm-stats", default=None, metavar="FILE",
                   help="norm_stats.json to normalise with, as training will (default: SHARD_DIR/norm_stats.json "
                        "of the first folder, written by molmoact2-data stats SHARD_DIR)")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="tokenizer folder to write (default: SHARD_DIR/openfast of the first folder); point "
                        "config.data.openfast at it")
    o.add_argument("--vocab-size", type=int, default=OPENFAST_VOCAB,
                   help=f"BPE vocabulary size, at most {MAX_ACTION_TOKENS} (default: %(default)s: ample for normalised "
                        f"chunks, small enough for a small model)")
    o.add_argument("--scale", type=float, default=OPENFAST_SCALE,
                   help="DCT coefficients are multiplied by this before rounding: larger keeps more detail and "
                        "gives more tokens per chunk (default: %(default)s)")

    t = sub.add_parser("tokenizer", help="train a small byte-level BPE text tokenizer on converted shards' task "
                                         "strings and the prompt template, for models trained from scratch",
                       examples=EXAMPLES["tokenizer"])
    t.add_argument("shard_dirs", nargs="+", metavar="SHARD_DIR", help="shard folders written by convert")
    t.add_argument("--out", default=None, metavar="FILE",
                   help="tokenizer.json to write (default: SHARD_DIR/tokenizer.json of the first folder); point "
                        "config.data.tokenizer at it")
    t.add_argument("--vocab-size", type=int, default=TEXT_VOCAB,
                   help="BPE vocabulary size before the model's robot tokens (default: %(default)s; training "
                        "stops early when the text has no more pairs to merge)")


def _fit_tokenizer(args) -> None:
    """Runs the `openfast` or `tokenizer` subcommand."""
    if args.command == "openfast":
        scale = int(args.scale) if float(args.scale).is_integer() else args.scale  # processor_config: 10, not 10.0
        out, tok, n = shard_tokenizers.write_openfast(args.shard_dirs, args.out, args.norm_stats, args.vocab_size,
                                                      scale)
        print(f"wrote {out}: fitted on {n} chunks of {tok.time_horizon or 'mixed'} steps x {tok.action_dim or 'mixed'} "
              f"dims; BPE vocab {tok.bpe_vocab_size}, min_token {tok.min_token}; set config.data.openfast="
              f"{out.resolve()}")
    else:
        out, text = shard_tokenizers.write_text_tokenizer(args.shard_dirs, args.out, args.vocab_size)
        print(f"wrote {out}: {text.layout.base_vocab} base tokens (model vocab {text.layout.vocab_size} with the "
              f"robot tokens); set config.data.tokenizer={out.resolve()}")


def _dims(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated action dims like 0,1,2, got {text!r}") from None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fixture":
            path = make_fixture(args.format, args.embodiment, args.out, episodes=args.episodes, seed=args.seed,
                                codec=args.codec, so100_naming=args.so100_naming, dirty=tuple(args.dirty),
                                image_hw=tuple(args.image_size) if args.image_size else None)
            print(f"wrote {args.format} {args.embodiment} fixture with {args.episodes} episodes to {path}")
        elif args.command == "convert":
            opts = ConvertOptions(source=args.source, embodiment=args.embodiment, out=args.out,
                                  workers=args.workers, episodes_per_shard=args.episodes_per_shard,
                                  horizon=args.horizon, image_size=args.image_size or None,
                                  max_image_side=args.max_image_side,
                                  on_error=args.on_error, tolerance_s=args.tolerance_s,
                                  delta_action_dims=args.delta_action_dims,
                                  depth_codes=args.depth_codes, image_format=args.image_format,
                                  overwrite=args.overwrite)
            if args.runner is None:
                if args.beam_options is not None:
                    raise ValueError("--beam-options only applies with --runner")
                index = convert(opts)
            else:
                try:
                    from data_pipelines.beam_convert import beam_convert  # lazy: apache-beam is an optional extra
                except ImportError as e:
                    return fail(PROG, e)
                index = beam_convert(opts, args.runner, args.beam_options)
            print(f"{index['total_episodes']} episodes, {index['total_frames']} frames in {len(index['shards'])} "
                  f"shards ({index['resumed_shards']} already done); skipped {len(index['skipped'])} episodes")
            for s in index["skipped"][:5]:
                print(f"  skipped {s['episode']}: {s['error']}")
            if args.runner is not None:
                stats = Path(args.out) / NORM_STATS_FILE
                print(f"wrote {stats}" if stats.exists() else "no frame converted: no norm_stats.json written")
        elif args.command == "stats":
            out = norm_stats_out(args.shard_dirs, args.out)
            stats = write_norm_stats(args.shard_dirs, out, args.norm_mode, embodiment=args.embodiment,
                                     horizon=args.horizon, on_error=args.on_error,
                                     delta_action_dims=args.delta_action_dims)
            for tag, m in stats["metadata_by_tag"].items():
                print(f"{tag}: {m['action_stats']['count']} frames from {len(m['repos'])} directories")
            print(f"wrote {out}")
        elif args.command in ("openfast", "tokenizer"):
            _fit_tokenizer(args)
        elif args.command == "embodiment":
            path, emb, notes = write_embodiment_from(args.source, args.out, args.state_key, args.action_key)
            print(f"wrote {path}: embodiment {emb.name}, tag {emb.tag}, {emb.state_dim} state / {emb.action_dim} "
                  f"action dims, cameras {list(emb.camera_keys)}, {emb.fps} Hz")
            for note in notes:
                print(f"  edit it: {note}")
            print(f"then: molmoact2-data convert --source {args.source} --embodiment {path} --out SHARD_DIR")
        elif args.command == "inspect":
            lines, errors = inspect_path(args.path, args.max_errors, args.deep)
            print("\n".join(lines))
            print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors))
            return 1 if errors else 0
    except (DataError, ValueError, FileNotFoundError) as e:
        return fail(PROG, e)
    except KeyboardInterrupt as e:  # convert's ConversionInterrupted says how to resume; no traceback
        return fail(PROG, str(e) or f"{args.command} interrupted", code=130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
