"""The command lines, one module per console script: `molmoact2-<command>` runs `molmoact2_jax.cli.<command>:main`
(`molmoact2-depth-codes`: `cli.depth_codes`), and `python -m molmoact2_jax.cli.<command>` is the same command.

Each module has `build_parser()` (a common.CommandParser) and `main(argv=None) -> int`; it parses its flags and calls
the library, importing jax only after parsing so that `--help` stays fast. Nothing of the library imports this
package (tests/test_package_graph.py). The conventions (common.py): dashed flags, `--config` / `--config.<field>`
for recipes, `--help` exits 0 and ends with examples, a usage error is one line on stderr and exit code 2.
"""
