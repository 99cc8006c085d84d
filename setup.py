"""Kept so the top level reads as the usual Python project (`setup.py` beside the code); what it installs is
declared in pyproject.toml, which setuptools reads when this runs, except the package list: the recipes folder
configs/ installs under the name `molmoact2_configs` (a generic top-level `configs` would clash with other
projects'), and pyproject's package finder cannot rename a folder."""
from setuptools import find_namespace_packages, setup

setup(packages=find_namespace_packages(include=["molmoact2_jax*", "data_pipelines*"]) + ["molmoact2_configs"],
      package_dir={"molmoact2_configs": "configs"})
