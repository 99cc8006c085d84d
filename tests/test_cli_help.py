"""Every command line documents itself: `--help` lists the key flags, every flag / argument has a help text, and
molmoact2-train tells config mistakes (one line, exit 2) from internal errors (traceback)."""
import argparse
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ argparse CLIs, introspected in process
class _Captured(Exception):
    pass


def _parser_of(main) -> argparse.ArgumentParser:
    """The parser `main` builds, caught at its parse_args call (nothing runs, nothing heavy is imported)."""
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = capture
    try:
        main([])
    except _Captured as c:
        return c.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{main.__module__}.{main.__name__} did not parse arguments")


def _undocumented(parser: argparse.ArgumentParser, where: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for cmd, sub in action.choices.items():
                if not (helps.get(cmd) or "").strip():
                    missing.append(f"{where} {cmd} (subcommand)")
                missing += _undocumented(sub, f"{where} {cmd}")
            continue
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            missing.append(f"{where} {name}")
        else:
            try:
                parser._get_formatter()._expand_help(action)  # a bad %(...)s would only fail at --help time
            except (KeyError, ValueError, TypeError) as e:
                missing.append(f"{where} {name}: help does not format ({e!r})")
    return missing


def _argparse_mains():
    from data_pipelines.cli import main as data_main
    from molmoact2_jax.convert.cli import main as convert_main
    from molmoact2_jax.demo import main as demo_main
    from molmoact2_jax.depth.codes import main as depth_codes_main
    from molmoact2_jax.evaluation.cli import eval_main, sim_main
    from molmoact2_jax.inference.server import main as serve_main
    from molmoact2_jax.tokenizers.openfast_cli import main as openfast_main
    return {"molmoact2-convert": convert_main, "molmoact2-data": data_main, "molmoact2-openfast": openfast_main,
            "molmoact2-sim": sim_main, "molmoact2-eval": eval_main, "molmoact2-serve": serve_main,
            "molmoact2-demo": demo_main, "molmoact2-depth-codes": depth_codes_main}


@pytest.mark.parametrize("prog", ["molmoact2-convert", "molmoact2-data", "molmoact2-openfast", "molmoact2-sim",
                                  "molmoact2-eval", "molmoact2-serve", "molmoact2-demo", "molmoact2-depth-codes"])
def test_every_argparse_argument_has_help(prog):
    parser = _parser_of(_argparse_mains()[prog])
    assert parser.prog == prog
    assert _undocumented(parser, prog) == []
    parser.format_help()


# ------------------------------------------------------------------ absl CLIs, as console scripts
ABSL = {
    "molmoact2-train": ("molmoact2_jax.train", {"config", "workdir", "coordinator_address", "num_processes",
                                                "process_id"}),
    "molmoact2-compile": ("molmoact2_jax.compile", {"config", "pod", "topology", "num_slices", "devices", "out"}),
    "molmoact2-forward": ("molmoact2_jax.demo_forward", {"config", "batch"}),
}


def _console_script(prog: str, *args: str, **kw) -> subprocess.CompletedProcess:
    """Runs `prog` the way its console script does: __main__ is a wrapper without flags or docstring."""
    module = ABSL[prog][0]
    code = f"import sys; sys.argv[0] = {prog!r}; from {module} import main; sys.exit(main())"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=120, **kw)


def _help_flags(text: str) -> dict[str, str]:
    """{flag: help} of the flags `--help` lists (absl: '  --name: help' with indented continuation lines)."""
    out, name = {}, None
    for line in text.splitlines():
        m = re.match(r"^  --(?:\[no\])?([\w.]+): ?(.*)$", line)
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif name and line.startswith("    ") and not line.strip().startswith("("):
            out[name] = (out[name] + " " + line.strip()).strip()
        elif not line.startswith("    "):
            name = None
    return out


@pytest.mark.parametrize("prog", sorted(ABSL))
def test_absl_help_lists_every_flag_with_help(prog):
    r = _console_script(prog, "--help")
    text = r.stdout + r.stderr
    assert "Try --helpfull" in text
    listed = _help_flags(text)
    assert set(listed) == ABSL[prog][1], text
    assert all(listed.values()), listed
    assert text.startswith(f"`{prog}")  # the module docstring (usage) is shown, not just "USAGE: ... [flags]"


# ------------------------------------------------------------------ molmoact2-train: user errors vs bugs
def test_train_user_error_rule():
    from data_pipelines.errors import DataError
    from data_pipelines.norm_stats import NormStatsError
    from molmoact2_jax.train import is_user_error
    from molmoact2_jax.training.trainer import TrainingAborted
    user = [ValueError("config.total_steps=0: must be >= 1"),
            ValueError("config.mesh: 8 devices are not divisible by the fixed axes"),
            ValueError("a coordinator address needs --num_processes and --process_id"),
            TrainingAborted("5 consecutive steps with non-finite loss"), DataError("bad parquet", path="x"),
            NormStatsError("norm_stats.json: no tag 'yam'"), FileNotFoundError("ckpt: no params/ directory")]
    internal = [ValueError("operands could not be broadcast together with shapes (2,3) (4,)"),
                ValueError("Incompatible shapes for broadcasting"), KeyError("params"), RuntimeError("boom"),
                TypeError("unsupported operand"), ValueError("reconfig.x")]
    assert [is_user_error(e) for e in user] == [True] * len(user)
    assert [is_user_error(e) for e in internal] == [False] * len(internal)


def test_train_run_prints_one_line_for_user_errors_and_reraises_bugs(monkeypatch, capsys):
    from molmoact2_jax import train

    def fails_with(e):
        def _train(_):
            raise e
        return _train

    monkeypatch.setattr(train, "_train", fails_with(ValueError("config.data.seq_len=8 is too short")))
    assert train.run({}) == 2
    assert capsys.readouterr().err == "molmoact2-train: error: config.data.seq_len=8 is too short\n"
    monkeypatch.setattr(train, "_train", fails_with(ValueError("shapes (2,) and (3,) do not match")))
    with pytest.raises(ValueError, match="do not match"):
        train.run({})


def test_train_config_error_exits_2_with_one_line(tmp_path):
    r = _console_script("molmoact2-train", f"--workdir={tmp_path}", "--config.total_steps=0")
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == ["molmoact2-train: error: config.total_steps=0: expected an integer >= 1"]


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
