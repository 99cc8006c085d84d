"""What every command line shares.

- `CommandParser`: argparse with the house rules: dashed flags, no abbreviations, `--help` exits 0 and ends with an
  "Examples:" block, and a usage mistake (an unknown flag, a bad value, a missing argument) is one line
  `PROG: error: ...` on stderr with exit code 2. An unknown flag is named even when required arguments are missing
  too (argparse alone would only list the missing ones).
- `--config` / `--config.<field>=VALUE` (`add_config_flag`, `parse_with_config`): the ml_collections convention the
  recipes are written for. The overrides are parsed by ml_collections' own config_flags, on a private absl flag
  registry, so values are typed by the recipe's fields exactly as before; a recipe is a name (`finetune:droid`,
  found from any directory) or a file path.
- `is_user_error`: the rule telling a mistake the user fixes (one line, exit 2) from a bug (traceback).
Nothing here imports jax: `--help` stays fast.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from typing import Iterable, Sequence

from absl import flags as absl_flags
from ml_collections import config_flags

from data_pipelines.errors import DataError
from data_pipelines.norm_stats import NormStatsError
from molmoact2_jax.recipes import load_recipe, resolve_recipe
from molmoact2_jax.storage import StorageError

EXIT_USAGE = 2
CONFIG_OVERRIDE_PREFIXES = ("--config.", "--noconfig.")


def one_line(message) -> str:
    """`message` with every run of whitespace (newlines included) turned into one space."""
    return " ".join(str(message).split())


def fail(prog: str, message, code: int = EXIT_USAGE) -> int:
    """Prints `PROG: error: MESSAGE` as one line on stderr and returns `code` (for main() to return)."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return code


class UsageError(ValueError):
    """A mistake on the command line (a flag, a recipe, a config field); its message is the one line to print."""


class CommandParser(argparse.ArgumentParser):
    """argparse.ArgumentParser with one-line usage errors (exit 2) and an "Examples:" block closing `--help`.

    examples: command lines shown under "Examples:" (subcommand parsers made by `add_subparsers().add_parser` are
    CommandParsers too and take `examples=` as well).
    passthrough: option prefixes left for the caller (`parse_known_args` returns them), e.g. `--config.`.
    """

    def __init__(self, *args, examples: Sequence[str] = (), passthrough: Sequence[str] = (), **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)   # one spelling per flag: `--work` is not `--workdir`
        if examples:
            kwargs["epilog"] = "\n".join(["Examples:", *(f"  {e}" for e in examples)])
        super().__init__(*args, **kwargs)
        self.passthrough = tuple(passthrough)
        self._args_seen: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._args_seen = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def subcommands(self) -> dict[str, CommandParser]:
        """{name: parser} of this parser's subcommands (empty without any)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    def accepts_option(self, option: str) -> bool:
        """Whether `--name` (or `--name=value`) is a flag of this command or of one of its subcommands."""
        name = option.split("=", 1)[0]
        if name in self._option_string_actions or (self.passthrough and name.startswith(self.passthrough)):
            return True
        return any(sub.accepts_option(name) for sub in self.subcommands().values()
                   if isinstance(sub, CommandParser))

    def unknown_options(self, args: Iterable[str]) -> list[str]:
        """The flags in `args` that no part of this command defines (values after `--` are not flags)."""
        out = []
        for a in args:
            if a == "--":
                break
            if (a.startswith("-") and a != "-" and not self._negative_number_matcher.match(a)
                    and not self.accepts_option(a)):
                out.append(a.split("=", 1)[0])
        return out

    def error(self, message: str):
        unknown = self.unknown_options(self._args_seen)
        if unknown and not message.startswith("unrecognized arguments"):
            message = f"unrecognized arguments: {' '.join(unknown)}"   # the typo first, not its consequences
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------- --config, --config.*
def add_config_flag(parser: CommandParser, default: str) -> None:
    """Adds `--config` (a recipe, `default` when not given) and lets `--config.<field>=VALUE` through."""
    parser.add_argument(
        "--config", default=None, metavar="RECIPE[:VARIANT]",
        help=f"training recipe (default: {default}): a recipe name with an optional variant (pretrain, posttrain, "
             "finetune, finetune_lora, molmoer; e.g. finetune:droid, pretrain:tiny), found from any directory, or "
             "a recipe file path (configs/finetune.py:robot_tiny, /my/recipes/robot.py). Override any field with "
             "--config.<field>=VALUE (e.g. --config.total_steps=100 --config.mesh.fsdp=8); a list field is "
             "replaced by repeating the flag (--config.data.sources=DIR1 --config.data.sources=DIR2)")
    parser.passthrough = tuple(dict.fromkeys(parser.passthrough + CONFIG_OVERRIDE_PREFIXES))


def parse_with_config(parser: CommandParser, argv, default: str):
    """(args, config): the parser's flags, and the recipe of `--config` (or `default`) with the command line's
    `--config.<field>` overrides applied. Any mistake is one line and exit 2."""
    args, extras = parser.parse_known_args(argv)
    unknown = [a.split("=", 1)[0] for a in extras if a.startswith("-") and not a.startswith(CONFIG_OVERRIDE_PREFIXES)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args, load_config(args.config or default, extras)
    except UsageError as e:
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {one_line(e)}\n")


def load_config(spec: str, overrides: Sequence[str] = ()):
    """The ConfigDict of recipe `spec` (a name such as `finetune:droid`, or 'PATH.py[:variant]') with
    `--config.<field>=VALUE` overrides, parsed by ml_collections' config_flags (on a private absl registry).
    Raises UsageError naming the recipe or the field for a missing recipe, an unknown field or a bad value."""
    try:
        resolved = resolve_recipe(spec)
    except ValueError as e:
        raise UsageError(str(e)) from None
    path, sep, _ = resolved.rpartition(":")
    if not (sep and path.endswith(".py")):
        path = resolved
    if not os.path.isfile(path):   # ml_collections would defer this to the config's first use, as a traceback
        raise UsageError(f"--config={spec}: no such recipe file (e.g. --config=finetune:robot_tiny or "
                         "--config=configs/finetune.py:robot_tiny)")
    overrides = list(overrides)
    argv = ["molmoact2", f"--config={resolved}", *overrides]
    registry = absl_flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "recipe", flag_values=registry, sys_argv=argv)
    try:
        rest = registry(argv)
    except absl_flags.Error as e:
        # a recipe that fails to load comes wrapped with its traceback as text: say the recipe's own error instead
        raise UsageError(config_override_error(resolved, overrides, spec) or one_line(e)) from None
    except Exception:  # noqa: BLE001 - AttributeError/KeyError/IndexError/ValueError from ml_collections
        message = config_override_error(resolved, overrides, spec)
        if message is None:
            raise
        raise UsageError(message) from None
    if len(rest) > 1:
        raise UsageError(f"unexpected argument {rest[1]!r}")
    return holder.value


def config_override_error(spec: str, overrides: Sequence[str], shown: str | None = None) -> str | None:
    """The first `--config.<field>` of `overrides` that the recipe `spec` does not have, as one line naming it and
    the fields it may have meant; a recipe that fails to load, its error (naming it `--config={shown or spec}`);
    None if neither."""
    try:
        cfg = load_recipe(spec)
    except Exception as e:  # noqa: BLE001 - the recipe's own error (unknown variant, missing file) says it
        return f"--config={shown or spec}: {one_line(e)}"
    for a in overrides:
        if not a.startswith("--config."):
            continue
        dotted = a[len("--"):].split("=", 1)[0]
        node, where = cfg, "config"
        for key, index in re.findall(r"\.?([^.\[\]]+)|\[(\d+)\]", dotted[len("config"):]):
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


# ---------------------------------------------------------------------------------------- user error or bug
def is_user_error(e: BaseException, flags: Iterable[str] = ()) -> bool:
    """Whether `e` is a problem the user fixes in the config, flags or data (one line, exit 2) rather than a bug.

    The rule (the library has no config-error class, so it goes by type and message):
      - TrainingAborted: a run gave up on purpose (e.g. config.trainer.max_consecutive_bad_steps);
      - data_pipelines' DataError and NormStatsError: bad input data, the message names file / episode / key;
      - FileNotFoundError: a path given in the config or flags does not exist;
      - storage.StorageError: a path that cannot be used (gs:// without the `gcs` extra, no such bucket, a run
        directory that cannot be written or is not shared between the processes);
      - UsageError, and a ValueError whose message names a config field (`config.<field>`) or one of the command's
        `flags` (e.g. `--num-processes`): every deliberate check in training/, sharding/ and the data source says
        which.
    Anything else, a ValueError from inside JAX/Flax/Orbax included, is an internal error and keeps its traceback.
    """
    from molmoact2_jax.training.trainer import TrainingAborted  # lazy: imports jax; --help must not

    if isinstance(e, (TrainingAborted, DataError, NormStatsError, FileNotFoundError, StorageError, UsageError)):
        return True
    names = ["config"] + [re.escape(f.lstrip("-")) for f in flags]
    setting = re.compile(r"\bconfig\.\w|--(?:%s)(?![\w-])" % "|".join(names))
    return isinstance(e, ValueError) and bool(setting.search(str(e)))


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    """The long flags a parser defines (`--help` aside), e.g. for `is_user_error(e, option_names(parser))`."""
    return [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
