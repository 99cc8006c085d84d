#!/usr/bin/env bash
# Single-process training on this machine (CPU, or every local GPU/TPU core as one process).
#   launch/local.sh --config=configs/finetune.py:tiny --workdir=/tmp/run [--config.<field>=<value> ...]
set -euo pipefail
exec molmoact2-train "$@"
