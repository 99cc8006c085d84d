"""Every command line documents itself and fails the same way: each console script of pyproject.toml answers
`--help` with exit 0 (without importing jax) and a help that ends with examples; an unknown flag is one line on
stderr naming it, exit 2; every flag is spelt with dashes and has a help text; `molmoact2-sim record` and
`molmoact2-eval` each document only their own options; molmoact2-train tells config mistakes (one line, exit 2) from
internal errors (traceback)."""
import argparse
import importlib
import os
import re
import subprocess
import sys
import tomllib

import pytest

from molmoact2_jax.cli.common import CommandParser, UsageError, load_config, parse_with_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _f:
    SCRIPTS = tomllib.load(_f)["project"]["scripts"]   # {"molmoact2-train": "molmoact2_jax.cli.train:main", ...}
DASHED = re.compile(r"--[a-z0-9]+(-[a-z0-9]+)*")


def _run_script(prog: str, *args: str, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    """Runs `prog` as its console script does (`sys.exit(main())` with argv[0] the command name), then reports on
    stderr's last line whether jax was imported."""
    module, func = SCRIPTS[prog].split(":")
    code = (f"import sys; sys.argv[0] = {prog!r}\nfrom {module} import {func}\n"
            f"try:\n    code = {func}()\nexcept SystemExit as e:\n    code = e.code\n"
            "print('JAX_IMPORTED' if 'jax' in sys.modules else 'NO_JAX', file=sys.stderr)\nsys.exit(code)")
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _parser(prog: str) -> CommandParser:
    """The parser of a console script: every module of molmoact2_jax/cli exposes `build_parser()`."""
    module, _ = SCRIPTS[prog].split(":")
    return importlib.import_module(module).build_parser()


def _all_parsers(parser: CommandParser, where: str):
    yield where, parser
    for name, sub in parser.subcommands().items():
        yield from _all_parsers(sub, f"{where} {name}")


def test_every_console_script_lives_in_the_cli_package():
    assert len(SCRIPTS) >= 11
    for prog, target in SCRIPTS.items():
        assert target == f"molmoact2_jax.cli.{prog.removeprefix('molmoact2-').replace('-', '_')}:main", prog


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_help_exits_0_ends_with_examples_and_imports_no_jax(prog):
    r = _run_script(prog, "--help")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith(f"usage: {prog} "), r.stdout[:200]
    last_block = r.stdout.rstrip().split("\n\n")[-1]
    assert last_block.startswith("Examples:\n  ") and f"  {prog}" in last_block, r.stdout[-1500:]
    assert r.stderr.strip().splitlines()[-1] == "NO_JAX"


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_unknown_flag_is_one_line_exit_2(prog):
    r = _run_script(prog, "--no-such-flag")
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == "NO_JAX"
    assert r.returncode == 2 and len(lines) == 2, r.stderr[-3000:]
    assert lines[0].startswith(f"{prog}: error: ") and "--no-such-flag" in lines[0], lines[0]


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_every_flag_is_dashed_documented_and_every_help_has_examples(prog):
    parser = _parser(prog)
    assert parser.prog == prog
    for where, p in _all_parsers(parser, prog):
        assert p.epilog and p.epilog.startswith("Examples:\n"), f"{where}: no examples in its help"
        p.format_help()   # a bad %(...)s would only fail at --help time
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                if isinstance(action, argparse._SubParsersAction):
                    helps = {a.dest: a.help for a in action._choices_actions}
                    assert all((helps.get(c) or "").strip() for c in action.choices), f"{where}: subcommand help"
                continue
            name = "/".join(action.option_strings) or action.dest
            assert (action.help or "").strip() and action.help != argparse.SUPPRESS, f"{where} {name}: no help"
            for option in action.option_strings:
                assert DASHED.fullmatch(option), f"{where} {option}: flags are spelt with dashes"


def test_unknown_flag_is_named_before_missing_required_arguments(capsys):
    for prog, argv, flag in [("molmoact2-data", ["convert", "--source", "x", "--no-such-flag"], "--no-such-flag"),
                             ("molmoact2-eval", ["--no-such-flag=3"], "--no-such-flag"),
                             ("molmoact2-train", ["--num_processes=2"], "--num_processes")]:
        with pytest.raises(SystemExit) as e:
            _parser(prog).parse_args(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and f"unrecognized arguments: {flag}" in err[0], err
    r = _run_script("molmoact2-train", "--num_processes=2")   # the old absl spelling
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == ("molmoact2-train: error: unrecognized arguments: --num_processes "
                                        "(see molmoact2-train --help)")


def test_sim_record_and_eval_each_document_only_their_own_options():
    record = _parser("molmoact2-sim").subcommands()["record"].format_help()
    evaluate = _parser("molmoact2-eval").format_help()
    for text in ("--checkpoint", "sim_settings.json", "report.json", "LIBERO", "--norm-tag", "policy order"):
        assert text not in record, text
    for text in ("--codec", "--only-success", "--depth", "LeRobot v3.0", "dataset order", "expert steps"):
        assert text not in evaluate, text
    assert "--codec" in record and "--checkpoint" in evaluate


# ------------------------------------------------------------------ --config and --config.<field>
def test_config_takes_a_recipe_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = _parser("molmoact2-train")
    args, cfg = parse_with_config(parser, ["--config=finetune:robot_tiny", "--workdir=run", "--config.total_steps=3",
                                           "--config.seed", "7", "--num-processes=1"], "pretrain:tiny")
    assert (cfg.total_steps, cfg.seed, args.num_processes, args.workdir) == (3, 7, 1, "run")
    assert load_config("pretrain:tiny").total_steps == load_config(f"{ROOT}/configs/pretrain.py:tiny").total_steps


@pytest.mark.parametrize("spec,overrides,expect", [
    ("finetun:tiny", [], "--config=finetun:tiny: no recipe named 'finetun'"),
    ("configs/nope.py:tiny", [], "--config=configs/nope.py:tiny: no such recipe file"),
    ("pretrain:nope", [], "--config=pretrain:nope: "),
    ("pretrain:tiny", ["--config.data.seq_lenn=3"], "config.data.seq_lenn: no such config field; did you mean "
                                                     "config.data.seq_len?"),
    ("pretrain:tiny", ["--config.total_steps=many"], "--config.total_steps=many"),
])
def test_config_mistakes_are_one_line(spec, overrides, expect):
    with pytest.raises(UsageError) as e:
        load_config(spec, overrides)
    assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)


# ------------------------------------------------------------------ molmoact2-train: user errors vs bugs
def test_train_user_error_rule():
    from data_pipelines.errors import DataError
    from data_pipelines.norm_stats import NormStatsError
    from molmoact2_jax.cli.common import is_user_error, option_names
    from molmoact2_jax.training.trainer import TrainingAborted
    flags = option_names(_parser("molmoact2-train"))
    assert {"--workdir", "--coordinator-address", "--num-processes", "--process-id"} <= set(flags)
    user = [ValueError("config.total_steps=0: must be >= 1"),
            ValueError("config.mesh: 8 devices are not divisible by the fixed axes"),
            ValueError("a coordinator address needs --num-processes and --process-id"),
            TrainingAborted("5 consecutive steps with non-finite loss"), DataError("bad parquet", path="x"),
            NormStatsError("norm_stats.json: no tag 'yam'"), FileNotFoundError("ckpt: no params/ directory"),
            UsageError("--config=x: no such recipe file")]
    internal = [ValueError("operands could not be broadcast together with shapes (2,3) (4,)"),
                ValueError("Incompatible shapes for broadcasting"), KeyError("params"), RuntimeError("boom"),
                TypeError("unsupported operand"), ValueError("reconfig.x"), ValueError("--num-processes-x"),
                ValueError("set --xla_force_host_platform_device_count")]
    assert [is_user_error(e, flags) for e in user] == [True] * len(user)
    assert [is_user_error(e, flags) for e in internal] == [False] * len(internal)


def test_train_run_prints_one_line_for_user_errors_and_reraises_bugs(monkeypatch, capsys):
    from molmoact2_jax.cli import train

    def fails_with(e):
        def _train(args, cfg):
            raise e
        return _train

    monkeypatch.setattr(train, "_train", fails_with(ValueError("config.data.seq_len=8 is too short")))
    assert train.run(None, None) == 2
    assert capsys.readouterr().err == "molmoact2-train: error: config.data.seq_len=8 is too short\n"
    monkeypatch.setattr(train, "_train", fails_with(ValueError("shapes (2,) and (3,) do not match")))
    with pytest.raises(ValueError, match="do not match"):
        train.run(None, None)


def test_train_config_error_exits_2_with_one_line(tmp_path):
    r = _run_script("molmoact2-train", f"--workdir={tmp_path}", "--config.total_steps=0", timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[:-1] == [
        "molmoact2-train: error: config.total_steps=0: expected an integer >= 1"]


def test_entry_modules_run_with_python_m(tmp_path):
    """`python -m molmoact2_jax.cli.<command>` is the same command (the tests start the trainer and server so)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "molmoact2_jax.cli.compile", "--help"], env=env, capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and "--num-slices" in r.stdout, r.stderr[-2000:]


# ------------------------------------------------------------------ progress bars in logs
def test_progress_bar_in_a_log_is_throttled_to_lines():
    import io

    from molmoact2_jax.progress import progress_bar
    log = io.StringIO()  # not a TTY, like a job log
    with progress_bar(total=1000, desc="train", unit="step", file=log, dynamic_ncols=True) as bar:
        for i in range(1000):
            bar.update(1)
            bar.set_postfix(loss=f"{i:.4f}")  # tqdm would redraw on every call
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 2 and "0/1000" in lines[0] and "1000/1000" in lines[1] and "loss=999" in lines[1], lines
    quiet = io.StringIO()
    for _ in progress_bar(range(3), file=quiet, disable=True):
        pass
    assert quiet.getvalue() == ""
