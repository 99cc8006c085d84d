"""Data pipelines for MolmoAct2: real-format readers/writers (LeRobot v2.1/v3.0, DROID RLDS), conversion to
ArrayRecord, norm stats, and Grain input pipelines. CLI: `molmoact2-data` (molmoact2_jax/cli/data.py).

Kept import-free on purpose: `import data_pipelines` must not pull in grain, av or jax.
"""
