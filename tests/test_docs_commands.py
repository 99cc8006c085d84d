"""The docs cannot drift from the code.

Every `molmoact2-*` command in a ```bash / ```shell / ```sh block of README.md and docs/**/*.md (also the trainer
arguments after a launcher's `--`, and a command quoted inside another one, e.g. xpk's `--command="..."`) must be a
console script of pyproject.toml, name a subcommand it has, and use only flags its parser defines; `--config.<field>`
must name a field of the recipe the command loads. The parsers are read, not guessed: each console script's `main` runs
in a subprocess until it parses its arguments (argparse) or hands them to absl (`app.run`), and stops there.

Also: every relative link in those pages resolves (a `#anchor` to a heading of the target page), the README's test
command is the one `.ci/run` runs, and no comment, docstring or page cites the unpublished reference by number
(spec/gap/issue N): a fact is cited by a titled section of docs/model_notes.md, or stated.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_LANGS = {"bash", "shell", "sh"}
TRAIN = "molmoact2-train"
# The launchers hand everything after `--` (slurm.sbatch: every argument) to molmoact2-train.
LAUNCHER = re.compile(r"(^|/)launch/[\w.-]+\.(sh|sbatch)$")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------------------------------------ reading the pages
def fenced_blocks(page: Path) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block of a markdown page, in order."""
    return [(m.group(1).lower(), m.group(2))
            for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", page.read_text(), re.S | re.M)]


def _words(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>()")
    lex.whitespace_split = True
    lex.commenters = "#"
    return list(lex)


def _segments(line: str) -> list[list[str]]:
    """A shell line -> its simple commands (split at `&&`, `||`, `|`, `;`, `&`), words unquoted."""
    segments, current = [], []
    for word in _words(line):
        if word and set(word) <= set(";&|<>()"):
            if word in ("<", ">", ">>", "2>", "&>"):
                current.append(word)
                continue
            segments.append(current)
            current = []
        else:
            current.append(word)
    segments.append(current)
    return [s for s in segments if s]


def _strip_prefix(words: list[str]) -> list[str]:
    """Drops `VAR=value` assignments and wrappers (env, exec, time, nohup) in front of a command."""
    while words and (re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]) or words[0] in ("env", "exec", "time", "nohup")):
        words = words[1:]
    return words


def _invocations(words: list[str]) -> list[list[str]]:
    """The molmoact2-* invocations one simple command holds: itself, the trainer arguments behind a launcher, and
    commands quoted inside its words (`--command="molmoact2-train ..."`)."""
    found = []
    words = _strip_prefix(words)
    if not words:
        return found
    if words[0].startswith("molmoact2-"):
        found.append(words)
    for i, w in enumerate(words):
        if LAUNCHER.search(w):
            rest = words[i + 1:]
            if w.endswith(".sbatch"):
                found.append([TRAIN, *rest])
            elif "--" in rest:
                found.append([TRAIN, *rest[rest.index("--") + 1:]])
    for w in words[1:]:
        inner = w.split("=", 1)[1] if w.startswith("--") and "=" in w else w
        if " " in inner and re.match(r"\s*molmoact2-", inner):
            for segment in _segments(inner):
                found += _invocations(segment)
    return found


def shell_commands(page: Path) -> list[list[str]]:
    """Every molmoact2-* invocation in the page's shell blocks, as words."""
    out = []
    for lang, body in fenced_blocks(page):
        if lang not in SHELL_LANGS:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            for segment in _segments(line):
                out += _invocations(segment)
    return out


def all_commands() -> list[tuple[str, list[str]]]:
    return [(_rel(page), cmd) for page in PAGES for cmd in shell_commands(page)]


# ------------------------------------------------------------------------------------------------ reading the parsers
CAPTURE = r'''
import argparse, importlib, json, re, sys
prog, target = sys.argv[1], sys.argv[2]

class Parsed(BaseException):
    pass

def stop(self, *args, **kwargs):
    raise Parsed(self)

argparse.ArgumentParser.parse_args = stop
argparse.ArgumentParser.parse_known_args = stop
try:
    from absl import app
    def run(*args, **kwargs):
        raise Parsed("absl")
    app.run = run
except ImportError:
    pass

def describe(parser):
    node = {"flags": [], "config": None, "subcommands": {}}
    for action in parser._actions:
        node["flags"] += action.option_strings
        if "--config" in action.option_strings:   # the recipe it loads: its default, or "(default: X)" in its help
            stated = re.search(r"\(default: ([\w:./-]+)\)", action.help or "")
            node["config"] = action.default if isinstance(action.default, str) else stated and stated.group(1)
        if isinstance(action, argparse._SubParsersAction):
            node["subcommands"] = {name: describe(sub) for name, sub in action.choices.items()}
    return node

module, func = target.split(":")
sys.argv = [prog]
main = getattr(importlib.import_module(module), func)
try:
    try:
        main([])
    except TypeError:
        main()
except Parsed as p:
    if p.args[0] == "absl":
        from absl import flags
        node = {"flags": [], "config": None, "subcommands": {}, "absl": True}
        for name in list(flags.FLAGS):
            flag = flags.FLAGS[name]
            node["flags"].append("--" + name)
            if getattr(flag, "boolean", False):
                node["flags"].append("--no" + name)
        if "config" in flags.FLAGS:
            default = flags.FLAGS["config"].default_as_str   # the recipe path, quoted (None: '' or None)
            node["config"] = default.strip("'\"") if default and default not in ("None", "''") else None
    else:
        node = describe(p.args[0])
    print("PARSER " + json.dumps(node))
    sys.exit(0)
print("NO PARSER: main() returned without parsing its arguments")
sys.exit(1)
'''


@functools.cache
def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@functools.cache
def parser_of(prog: str) -> dict:
    """{"flags": [...], "config": default recipe or None, "subcommands": {name: node}, "absl": bool}."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", CAPTURE, prog, console_scripts()[prog]], capture_output=True, text=True,
                       timeout=300, cwd=str(ROOT), env=env)
    lines = [line for line in r.stdout.splitlines() if line.startswith("PARSER ")]
    assert r.returncode == 0 and lines, f"{prog}: could not read its parser\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return json.loads(lines[-1][len("PARSER "):])


def _config_field_exists(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", part)
        if m is None or not hasattr(node, "keys") or m.group(1) not in node:
            return False
        node = node[m.group(1)]
        if m.group(2) is not None:
            if not isinstance(node, (list, tuple)) or not node:
                return False
            node = node[0]
    return True


@functools.cache
def _recipe(spec: str):
    from molmoact2_jax.recipes import load_recipe
    return load_recipe(spec if os.path.isabs(spec.split(":")[0]) or "/" not in spec else f"{ROOT}/{spec}")


def command_problems(cmd: list[str]) -> list[str]:
    """What is wrong with one invocation ([] when nothing)."""
    prog, args = cmd[0], cmd[1:]
    if prog not in console_scripts():
        return [f"{prog}: not a console script of pyproject.toml (known: {', '.join(sorted(console_scripts()))})"]
    node = parser_of(prog)
    flags = set(node["flags"])
    where = prog
    if node["subcommands"]:
        positional = [a for a in args if not a.startswith("-")]
        if not positional or positional[0] not in node["subcommands"]:
            return [f"{prog}: no subcommand {positional[:1]} (it has {', '.join(node['subcommands'])})"]
        where = f"{prog} {positional[0]}"
        sub = node["subcommands"][positional[0]]
        flags |= set(sub["flags"])
        node = {**sub, "config": sub["config"] or node["config"]}
    problems = []
    config = node["config"]
    used = []
    for a in args:
        if a == "--":
            break
        if a.startswith("--"):
            name, _, value = a.partition("=")
            used.append(name)
            if name == "--config" and value and value != "...":
                config = value
    for name in used:
        if name.startswith("--config."):
            if "--config" not in flags:
                problems.append(f"{where}: {name} given, but it takes no --config")
            elif config is not None and not _config_field_exists(_recipe(config), name[len("--config."):]):
                problems.append(f"{where}: {name} is not a field of the recipe {config}")
        elif name not in flags:
            problems.append(f"{where}: no flag {name}")
    return problems


# ------------------------------------------------------------------------------------------------ the tests
def test_the_pages_show_the_commands_users_run():
    progs = {cmd[0] for _, cmd in all_commands()}
    assert {"molmoact2-demo", "molmoact2-train", "molmoact2-data", "molmoact2-serve", "molmoact2-convert",
            "molmoact2-eval", "molmoact2-compile"} <= progs, progs


def test_every_documented_command_and_flag_exists():
    problems = []
    for page, cmd in all_commands():
        problems += [f"{page}: {p}\n    {shlex.join(cmd)}" for p in command_problems(cmd)]
    assert not problems, "\n".join(problems)


def test_shell_parsing_finds_commands_behind_prefixes_pipes_and_launchers(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("```bash\n"
                    "JAX_PLATFORMS=cpu molmoact2-data inspect X --deep | head -3  # comment --nope\n"
                    "pip install -e . && molmoact2-serve \\\n    --checkpoint C --port 8000\n"
                    "launch/tpu_pod.sh run -- --config=finetune:droid --workdir=gs://b/r\n"
                    "xpk workload create --command=\"molmoact2-train --config=pretrain --workdir=W\"\n"
                    "```\n```python\nmolmoact2-not-a-shell-block\n```\n")
    assert shell_commands(page) == [
        ["molmoact2-data", "inspect", "X", "--deep"],
        ["molmoact2-serve", "--checkpoint", "C", "--port", "8000"],
        [TRAIN, "--config=finetune:droid", "--workdir=gs://b/r"],
        [TRAIN, "--config=pretrain", "--workdir=W"]]


def test_a_wrong_flag_or_field_is_caught():
    assert command_problems(["molmoact2-serve", "--checkpoint", "C", "--norm_tag", "t"]) == [
        "molmoact2-serve: no flag --norm_tag"]
    assert command_problems(["molmoact2-nope"])
    assert command_problems(["molmoact2-data", "conver", "--out", "X"])
    assert command_problems([TRAIN, "--config=pretrain:tiny", "--workdir=W", "--config.total_step=3"])
    assert command_problems(["molmoact2-demo", "--config.demo.no_such_setting=1"])   # its default recipe's fields
    assert command_problems([TRAIN, "--config=pretrain:tiny", "--workdir=W", "--config.total_steps=3",
                             "--config.data.global_batch_size=2"]) == []


def test_the_readme_test_command_is_the_ci_command():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert len(ci) == 1, ci
    readme = "\n".join(body for lang, body in fenced_blocks(ROOT / "README.md") if lang in SHELL_LANGS)
    assert ci[0] in readme, f"README.md's quick start must show .ci/run's command verbatim: {ci[0]}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*$", text, re.M)}


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if re.match(r"[a-z][\w+.-]*:", target):   # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{_rel(page)}: {target} (no {dest})")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{_rel(page)}: {target} (no heading #{anchor} in {_rel(dest)})")
    assert not broken, "\n".join(broken)


# Citations of the unpublished reference by number ("spec 13", "gap 20.9", "issue 22", "rule 3.1", a section sign) or
# by the name of a reference file that does not ship with the code.
NUMERIC_CITATION = re.compile(r"\b(?:spec|gap|issue)(?:\s+\(?sections?)?[ -]?\d|\u00a7|\brule \d+\.\d|\btable \d+\.\d\b"
                              r"|molmoact2_spec\.md|data_formats\.md", re.I)
CODE_DIRS = ("molmoact2_jax", "data_pipelines", "configs", "launch", "benchmarks", "tests")


def test_no_numeric_citations_of_the_reference():
    found = []
    files = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".sh", ".sbatch", ".yaml")]
    for path in [*files, *PAGES]:
        if path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if NUMERIC_CITATION.search(line):
                found.append(f"{_rel(path)}:{n}: {line.strip()[:120]}")
    assert not found, ("cite a titled section of docs/model_notes.md ('see docs/model_notes.md, \"Flow matching\"') "
                       "or state the fact:\n" + "\n".join(found))


# A citation of a docs page by section title: docs/model_notes.md, "Flow matching" (also ("Title"), 'Title', and
# several titles joined by "and").
TITLE_CITATION = re.compile(r"(docs/[\w/.-]+\.md)\)?,?\s*\(?((?:[\"'][A-Z][^\"'\n]*[\"'](?:,?\s*and\s*)?)+)")


def _headings(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {re.sub(r"[`*]", "", m.group(1)).strip() for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*$", text, re.M)}


def test_every_section_cited_by_title_exists():
    missing, cited = [], 0
    files = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")] + PAGES
    for path in files:
        text = re.sub(r"\s+", " ", path.read_text(errors="replace"))
        for m in TITLE_CITATION.finditer(text):
            page = ROOT / m.group(1)
            for title in re.findall(r"[\"']([^\"']+)[\"']", m.group(2)):
                cited += 1
                if not page.exists() or title not in _headings(page):
                    missing.append(f"{_rel(path)}: {m.group(1)}, {title!r}")
    assert cited > 20, cited
    assert not missing, "no such section:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", [_rel(p) for p in PAGES])
def test_every_page_has_a_title(page):
    assert (ROOT / page).read_text().startswith("# "), page
