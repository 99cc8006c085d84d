"""The package graph: read from every import statement (module level and inside functions) of the library."""
import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> the package name it installs as (setup.py: configs/ is `molmoact2_configs`)
PACKAGES = {"molmoact2_jax": "molmoact2_jax", "data_pipelines": "data_pipelines", "configs": "molmoact2_configs"}


def _modules() -> dict:
    out = {}
    for folder, pkg in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = [pkg] + list(f.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _resolve(name: str):
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set:
    """Modules of ours that `module` imports; `from pkg import sub` counts as pkg.sub when that is a module.
    Edges to the module's own parent packages are left out (Python imports those first in any case)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            subs = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in MODULES]
            names = subs if len(subs) == len(node.names) else subs + [prefix]
        else:
            continue
        for n in names:
            target = _resolve(n)
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _subpackage(m: str) -> str:
    return ".".join(m.split(".")[:2])


def test_graph_is_read_from_the_sources():
    assert len(MODULES) > 100
    assert "molmoact2_jax.token_layout" in GRAPH["molmoact2_jax.tokenizers.text"]
    assert "molmoact2_jax.training.trainer" in GRAPH["molmoact2_jax.training.aot"]
    assert {"molmoact2_configs.common"} <= GRAPH["molmoact2_configs.pretrain"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules_or_subpackages():
    assert _cycles(GRAPH) == []
    packages = collections.defaultdict(set)
    for m, targets in GRAPH.items():
        for t in targets:
            if _subpackage(t) != _subpackage(m):
                packages[_subpackage(m)].add(_subpackage(t))
    assert _cycles(packages) == []


def _violations(source_prefix: str, allowed=None, forbidden=()) -> list:
    bad = []
    for m, targets in GRAPH.items():
        if m != source_prefix and not m.startswith(source_prefix + "."):
            continue
        for t in targets:
            inside = t == source_prefix or t.startswith(source_prefix + ".")
            if inside:
                continue
            if allowed is not None and not any(t == a or t.startswith(a + ".") for a in allowed):
                bad.append((m, t))
            if any(t == f or t.startswith(f + ".") for f in forbidden):
                bad.append((m, t))
    return sorted(set(bad))


def test_library_never_imports_recipes():
    for pkg in ("molmoact2_jax", "data_pipelines"):
        assert _violations(pkg, forbidden=("molmoact2_configs",)) == []


def test_layers():
    # models and tokenizers at the bottom
    assert _violations("molmoact2_jax.models", allowed=("molmoact2_jax.preprocessing",
                                                          "molmoact2_jax.token_layout")) == []
    # molmoact2_jax.storage (the path layer: local folders and gs://, etils only) may be used from any layer
    assert _violations("molmoact2_jax.tokenizers", allowed=("molmoact2_jax.token_layout",
                                                              "molmoact2_jax.progress", "molmoact2_jax.storage")) == []
    # data pipelines know no model, trainer or simulator
    assert _violations("data_pipelines", allowed=("molmoact2_jax.preprocessing", "molmoact2_jax.tokenizers",
                                                  "molmoact2_jax.token_layout", "molmoact2_jax.progress",
                                                  "molmoact2_jax.storage")) == []
    # inference and conversion need no trainer; inference knows no simulator
    assert _violations("molmoact2_jax.inference", forbidden=("molmoact2_jax.training", "molmoact2_jax.evaluation",
                                                             "molmoact2_jax.demo")) == []
    assert _violations("molmoact2_jax.convert", forbidden=("molmoact2_jax.training", "molmoact2_jax.inference",
                                                           "molmoact2_jax.evaluation")) == []
    # models.config: a saved model config is completed from the model schema (model_config_from_saved)
    assert _violations("molmoact2_jax.checkpoint_io", allowed=("molmoact2_jax.storage",
                                                                 "molmoact2_jax.models.config")) == []
    # the path layer itself imports nothing of ours
    assert GRAPH["molmoact2_jax.storage"] == set()
    # the deployment runtime runs exported graphs without JAX: no model code, trainer, exporter or JAX Policy (it
    # shares the numpy observation codec, inference.observation, with the Policy instead)
    assert _violations("molmoact2_jax.runtime", forbidden=("molmoact2_jax.models", "molmoact2_jax.training",
                                                           "molmoact2_jax.export", "molmoact2_jax.inference.policy"
                                                           )) == []
    assert "molmoact2_jax.inference.observation" in GRAPH["molmoact2_jax.runtime.onnx_policy"]
    assert _violations("molmoact2_jax.inference.observation", forbidden=(
        "molmoact2_jax.models", "molmoact2_jax.training", "molmoact2_jax.export", "molmoact2_jax.inference.policy",
        "molmoact2_jax.inference.think", "molmoact2_jax.inference.loading")) == []


def test_library_sits_below_the_entry_points():
    """molmoact2_jax.cli holds the command lines (argument parsing, exit codes); nothing of the library imports it."""
    cli = "molmoact2_jax.cli"
    assert {m for m in MODULES if m.startswith(cli + ".")} >= {f"{cli}.{c}" for c in (
        "common", "train", "compile", "serve", "convert", "openfast", "data", "sim", "eval", "depth_codes")}
    up = sorted((m, t) for m, targets in GRAPH.items() if not (m == cli or m.startswith(cli + "."))
                for t in targets if t == cli or t.startswith(cli + "."))
    assert up == [], up


def test_checkpoint_io_knows_no_data_schema():
    """Checkpoint folders (params, steps, assets by name) are read and written without the data pipelines: what an
    asset holds is read by whoever uses it."""
    assert _violations("molmoact2_jax.checkpoint_io", forbidden=("data_pipelines",)) == []
    assert GRAPH["molmoact2_jax.checkpoint_io.assets"] == {"molmoact2_jax.storage"}


def test_shard_readers_share_the_shard_module_not_the_writer():
    """Shard names, index.json and loading live in data_pipelines.shards; only the converters import convert.py."""
    importers = {m for m, targets in GRAPH.items() if "data_pipelines.convert" in targets}
    assert importers <= {"data_pipelines.beam_convert", "molmoact2_jax.cli.data",
                         "molmoact2_jax.demo.pipeline"}, importers
    for reader in ("data_pipelines.pipeline.robot_dataset", "data_pipelines.stats", "data_pipelines.inspect_data",
                   "data_pipelines.shard_tokenizers", "molmoact2_jax.training.run_setup"):
        assert "data_pipelines.shards" in GRAPH[reader], reader


def test_tokenizers_and_models_share_only_the_token_layout():
    """The text tokenizer builds the token layout and the model config carries its ids; neither imports the other,
    and what both need lives in one leaf module that imports nothing of ours."""
    assert _violations("molmoact2_jax.tokenizers", forbidden=("molmoact2_jax.models",)) == []
    assert _violations("molmoact2_jax.models", forbidden=("molmoact2_jax.tokenizers",)) == []
    assert GRAPH["molmoact2_jax.token_layout"] == set()
    assert "molmoact2_jax.token_layout" in GRAPH["molmoact2_jax.models.config"]


# ---------------------------------------------------------------- imports at the top of files
# Imports go at the top of a file. A function-level import is allowed only for (1) an optional dependency (not in
# pyproject's [project] dependencies), (2) the command-line entry modules, which set XLA_FLAGS / JAX_PLATFORMS /
# MUJOCO_GL or call jax.distributed.initialize first and keep `--help` from importing jax, and the package
# __init__ files that expose names lazily on purpose, or (3) an import marked with a trailing `# lazy: <why>`.
OPTIONAL_MODULES = {"metaworld", "mujoco", "gymnasium", "libero", "robosuite", "torch", "transformers", "libtpu",
                    "jax2onnx", "onnx", "onnxruntime"}
LAZY_IMPORT_MODULES = {
    "molmoact2_jax.evaluation.envs", "molmoact2_jax.evaluation.workers",
    "molmoact2_jax.inference", "molmoact2_jax.tokenizers", "data_pipelines",   # lazy __init__ on purpose
}
LAZY_MARKER = "# lazy:"
# (module, imported name) justified but not marked in the file itself. aot.py imports jax.experimental.topologies
# only after setting ALLOW_MULTIPLE_LIBTPU_LOAD (start-up order); its `# lazy:` comment belongs in aot.py.
UNMARKED_LAZY: set = set()   # (module, import) pairs allowed without a marker: none


def _function_imports(path: Path):
    """(node, dotted name) per name imported inside a function (nested functions included); `from a import b` is
    a.b."""
    out = []

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, ast.Import):
                out.extend((child, a.name) for a in child.names)
            elif in_function and isinstance(child, ast.ImportFrom):
                prefix = "." * child.level + (child.module or "")
                out.extend((child, f"{prefix}.{a.name}" if child.module else prefix + a.name)
                           for a in child.names)
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    walk(ast.parse(path.read_text()), False)
    return out


def _unjustified_function_imports() -> list:
    bad = []
    for m, path in sorted(MODULES.items()):
        if m.split(".")[0] not in ("molmoact2_jax", "data_pipelines") or m in LAZY_IMPORT_MODULES:
            continue
        lines = path.read_text().splitlines()
        for node, name in _function_imports(path):
            if name.split(".")[0] in OPTIONAL_MODULES or (m, name) in UNMARKED_LAZY:
                continue
            if any(LAZY_MARKER in line for line in lines[node.lineno - 1:node.end_lineno]):
                continue
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return bad


def test_function_imports_are_walked():
    names = {name for _, name in _function_imports(MODULES["molmoact2_jax.evaluation.envs"])}
    assert {"mujoco", "libero.libero.envs.OffScreenRenderEnv"} <= names


def test_imports_are_at_the_top_of_files():
    bad = _unjustified_function_imports()
    assert not bad, ("imports inside functions: move them to the top of the file, or mark a justified one (cycle, "
                     "start-up order, import cost) with a trailing `# lazy: <why>`:\n  " + "\n  ".join(bad))
