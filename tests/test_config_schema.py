"""One config schema: each field's default is set once, in configs/common.py base() (and the recipes); the library
(molmoact2_jax/, data_pipelines/) reads fields and never restates a default as `<config>.get("<field>", ...)`. The
recipes are found and imported under our own package name from any directory."""
import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_collections

from molmoact2_configs import common

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("molmoact2_jax", "data_pipelines")


def _field_names() -> set:
    """Every field name of base() at both sizes, nested sections and the entries of tuples of sections included."""
    names = set()

    def walk(node):
        for key, value in node.items():
            names.add(key)
            if isinstance(value, ml_collections.ConfigDict):
                walk(value)
            elif isinstance(value, (tuple, list)):
                for item in value:
                    if isinstance(item, ml_collections.ConfigDict):
                        walk(item)
    for variant in ("tiny", "full"):
        walk(common.base(variant, "pretrain"))
    return names


FIELDS = _field_names()
# A name that holds a config by the library's naming: cfg, config, opt_cfg, model_config, self.cfg ...
CONFIG_NAME = re.compile(r"^(cfg|config|\w+_cfg|\w+_config)$")
# Calls whose result is a config.
CONFIG_CALLS = {"get_model_config", "ConfigDict", "copy_and_resolve_references", "load_recipe", "load_model_config",
                "model_config_from_saved", "base", "get_config"}
# Calls whose result is a JSON record (a saved file's contents), whatever the name it is given.
RECORD_CALLS = {"load", "loads", "training_config", "read_json"}


def _root(node):
    """The name an expression starts from: `cfg` of cfg.data.get, `self.cfg` of self.cfg.trainer; else None."""
    while True:
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return f"self.{node.attr}"
            node = node.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def _call_name(node) -> str | None:
    if isinstance(node, ast.Call):
        f = node.func
        return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    return None


def _targets(target) -> list:
    return [t for e in (target.elts if isinstance(target, ast.Tuple) else [target]) for t in [_root(e)] if t]


class _Scope:
    """What each name of one function (or a module's top level) holds: "config", "record" or unknown (None)."""

    def __init__(self, node):
        self.kinds: dict = {}
        body = list(ast.walk(node)) if not isinstance(node, ast.Module) else [
            n for stmt in node.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            for n in ast.walk(stmt)]
        self.assigns = []
        for n in body:
            if isinstance(n, ast.Assign):
                values = n.value.elts if isinstance(n.value, ast.Tuple) else [n.value]
                targets = n.targets[0].elts if isinstance(n.targets[0], ast.Tuple) else [n.targets[0]]
                if len(values) == len(targets):
                    self.assigns += [(t, v) for t, v in zip(targets, values)]
                else:
                    self.assigns += [(t, n.value) for t in targets]
            elif isinstance(n, (ast.AnnAssign, ast.NamedExpr)) and n.value is not None:
                self.assigns.append((n.target, n.value))
        # expressions whose fields are read as attributes (`m.vit`): a dict has none, so they are configs
        self.attr_read = {ast.unparse(n.value) for n in body if isinstance(n, ast.Attribute) and n.attr in FIELDS
                          and isinstance(n.ctx, ast.Load)}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
                note = ast.unparse(a.annotation) if a.annotation is not None else ""
                if "ConfigDict" in note:
                    self.kinds[a.arg] = "config"
                elif note.startswith(("dict", "Mapping")):
                    self.kinds[a.arg] = "record"
        changed = True
        while changed:   # to a fixed point: `d = cfg.data` then `n = d.seq_len` ...
            changed = False
            for target, value in self.assigns:
                kind = self._kind_of_value(value)
                for name in _targets(target):
                    if kind and name not in self.kinds:
                        self.kinds[name] = kind
                        changed = True

    def _kind_of_value(self, value):
        call = _call_name(value)
        if call in RECORD_CALLS or isinstance(value, (ast.Dict, ast.DictComp)):
            return "record"
        if call in CONFIG_CALLS:
            return "config"
        root = _root(value)   # `d = cfg.data`: what it is read from
        return self.kind(root) if root else None

    def kind(self, name):
        if name in self.kinds:
            return self.kinds[name]
        return "config" if CONFIG_NAME.match(name.removeprefix("self.")) else None


def restated_defaults(source: str, filename: str = "<source>") -> list:
    """`file:line: code` of each `<config>.get("<field>", ...)`, `<config>` being a name that holds a config."""
    tree = ast.parse(source)
    scopes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    found = {}
    for scope_node in scopes:
        scope = _Scope(scope_node)
        nodes = ast.walk(scope_node) if scope_node is not tree else (
            n for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            for n in ast.walk(stmt))
        for n in nodes:
            if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
                    and n.args and isinstance(n.args[0], ast.Constant) and n.args[0].value in FIELDS):
                continue
            receiver = n.func.value
            root = _root(receiver)
            if (root and scope.kind(root) == "config") or ast.unparse(receiver) in scope.attr_read:
                found[(n.lineno, n.col_offset)] = f"{filename}:{n.lineno}: {ast.unparse(n)}"
    return [found[k] for k in sorted(found)]


def test_the_walk_finds_restated_defaults_and_leaves_records_alone():
    source = textwrap.dedent('''
        import json
        def train(cfg, workdir):
            a = cfg.get("total_steps", 10)                      # a config by its name
            d = cfg.data
            b = d.get("seq_len", 256)                           # a section of one
            c = self.cfg.trainer.get("eval_batches", 1)
        def sized(m, n: int):
            return m.vit.image_size + m.get("max_cameras", 3)   # read as a config elsewhere: m.vit
        def read(path, hf: dict, plan):
            saved = json.loads(open(path).read())
            run_cfg = json.load(open(path))                     # a record, whatever its name
            return (saved.get("seed"), hf.get("head_dim"), {"x": 1}.get("seed"), run_cfg.get("data"),
                    plan.origins.get("tokenizer"), plan.tokenizer)
    ''')
    assert [line.split(": ", 1)[1] for line in restated_defaults(source)] == [
        "cfg.get('total_steps', 10)", "d.get('seq_len', 256)", "self.cfg.trainer.get('eval_batches', 1)",
        "m.get('max_cameras', 3)"]


def test_the_field_names_come_from_base():
    assert {"total_steps", "seed", "every_steps", "global_batch_size", "init_from", "max_cameras", "eval_batches",
            "position_init", "keep_last", "freeze", "async_save"} <= FIELDS


def test_the_library_never_restates_a_config_default():
    bad = []
    for pkg in LIBRARY:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            bad += restated_defaults(path.read_text(), str(path.relative_to(ROOT)))
    assert not bad, ("a default restated in the library: read the field (`cfg.data.seq_len`); its default belongs in "
                     "configs/common.py base():\n  " + "\n  ".join(bad))


def test_recipes_are_found_and_imported_from_any_directory(tmp_path):
    """Under the installed name `molmoact2_configs`, and from a checkout used without installing (the editable
    install's finder left out), where the folder is made importable under that name."""
    code = ("from molmoact2_jax.recipes import load_recipe, resolve_recipe; "
            "print(resolve_recipe('finetune:droid')); print(load_recipe('finetune_lora:tiny').lora.rank)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [f"{ROOT / 'configs' / 'finetune.py'}:droid", "4"]
    bare = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            "sys.path_hooks[:] = [h for h in sys.path_hooks if 'editable' not in repr(h).lower()]; "
            f"sys.path.insert(0, {str(ROOT)!r}); import importlib.util; "
            "assert importlib.util.find_spec('molmoact2_configs') is None, 'still installed'; " + code)
    out = subprocess.run([sys.executable, "-c", bare], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=""))
    assert out.stdout.split() == [f"{ROOT / 'configs' / 'finetune.py'}:droid", "4"]
