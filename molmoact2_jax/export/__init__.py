"""Exports a policy for runtimes without our model code: ONNX graphs (run by molmoact2_jax.runtime with
onnxruntime, no JAX) and StableHLO (jax.export, runs on any JAX). `molmoact2-export` is the command; see
docs/export.md, "Deploy without JAX"."""
