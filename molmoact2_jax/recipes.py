"""Finding and loading recipe files (`configs/<recipe>.py[:variant]`) by path.

Recipes import the library, never the reverse: the CLIs take a recipe *file* (`--config=PATH[:variant]`, as
ml_collections' config_flags and big_vision do), and these helpers only locate the project's own recipes for a
flag's default value and load a file the way `--config` does.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def recipes_dir() -> Path:
    """The `configs/` folder installed with (or checked out next to) this package; found, not imported."""
    spec = importlib.util.find_spec("configs")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parents[1] / "configs"


def recipe_path(recipe: str, variant: str | None = None) -> str:
    """`recipe_path("pretrain", "tiny")` -> '/.../configs/pretrain.py:tiny', a value for `--config`."""
    path = recipes_dir() / f"{recipe}.py"
    if not path.is_file():
        raise ValueError(f"no recipe {recipe!r}: {path} does not exist")
    return f"{path}:{variant}" if variant else str(path)


def load_recipe(spec: str):
    """'PATH[:variant]' -> the recipe's `get_config(variant)` (a ConfigDict), as `--config=PATH[:variant]` gives."""
    path, sep, variant = str(spec).rpartition(":")
    if not sep or not path.endswith(".py"):
        path, variant = str(spec), None
    if not Path(path).is_file():
        raise ValueError(f"recipe file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"_molmoact2_recipe_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()
