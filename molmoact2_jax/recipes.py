"""Finding and loading recipe files (`configs/<recipe>.py[:variant]`) by path.

Recipes import the library, never the reverse: the CLIs take a recipe *file* (`--config=PATH[:variant]`, as
ml_collections' config_flags and big_vision do), and these helpers only locate the project's own recipes for a
flag's default value and load a file the way `--config` does.

The folder configs/ installs as the package `molmoact2_configs` (setup.py maps it), the name recipes import each
other by (`from molmoact2_configs import common`); a user's own recipe file does the same.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE = "molmoact2_configs"


def recipes_dir() -> Path:
    """The recipes folder: the installed `molmoact2_configs` (editable or not), else the configs/ folder beside this
    package in a checkout used without installing, which is then made importable under that name (the recipes
    import their siblings by it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    folder = Path(__file__).resolve().parents[1] / "configs"
    init = folder / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return folder


def recipe_path(recipe: str, variant: str | None = None) -> str:
    """`recipe_path("pretrain", "tiny")` -> '/.../configs/pretrain.py:tiny', a value for `--config`."""
    path = recipes_dir() / f"{recipe}.py"
    if not path.is_file():
        raise ValueError(f"no recipe {recipe!r}: {path} does not exist")
    return f"{path}:{variant}" if variant else str(path)


def resolve_recipe(spec: str) -> str:
    """A `--config` value as users write it -> 'PATH.py[:variant]' (what ml_collections' config_flags reads).

    Accepts a recipe name with an optional variant (`finetune:droid`, `pretrain`), which works from any directory,
    and a file path with an optional variant (`configs/finetune.py:droid`, `/my/recipes/robot.py`), returned as
    given. A name that is no recipe raises ValueError naming the recipes there are.
    """
    spec = str(spec)
    recipes = recipes_dir()   # also makes the recipes' package importable for a recipe file given by path
    name, sep, variant = spec.partition(":")
    if name.endswith(".py") or "/" in name or "\\" in name:
        return spec
    path = recipes / f"{name}.py"
    if not name.isidentifier() or not path.is_file():
        known = sorted(p.stem for p in recipes.glob("*.py") if p.stem not in ("__init__", "common"))
        raise ValueError(f"--config={spec}: no recipe named {name!r}; use one of {', '.join(known)} "
                         "(e.g. --config=finetune:droid) or a recipe file path")
    return f"{path}:{variant}" if sep else str(path)


def load_recipe(spec: str):
    """'PATH[:variant]' -> the recipe's `get_config(variant)` (a ConfigDict), as `--config=PATH[:variant]` gives."""
    spec = resolve_recipe(spec)
    path, sep, variant = str(spec).rpartition(":")
    if not sep or not path.endswith(".py"):
        path, variant = str(spec), None
    if not Path(path).is_file():
        raise ValueError(f"recipe file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"_molmoact2_recipe_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()
