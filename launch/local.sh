#!/usr/bin/env bash
# Single-process training on this machine (CPU, or every local GPU/TPU core as one process).
#   launch/local.sh --config=finetune:robot_tiny --workdir=/tmp/run --config.data.sources[0].path=SHARDS \
#       [--config.<field>=<value> ...]
set -euo pipefail
exec molmoact2-train "$@"
