#!/usr/bin/env bash
# Runs the same training command on every worker of a Cloud TPU VM pod (JAX finds the pod from the TPU metadata).
#   TPU_NAME=my-v5p-128 ZONE=us-east5-a REPO_DIR=~/molmoact2-jax \
#     launch/tpu_pod.sh --config=configs/posttrain.py --workdir=gs://bucket/run --config.init_from=...
# Set SETUP=1 once to install the project (with the TPU build of jax) on every worker first.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
repo=${REPO_DIR:-~/molmoact2-jax}
args=$(printf ' %q' "$@")
if [[ ${SETUP:-0} == 1 ]]; then
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
    --command "cd $repo && pip install -e . 'jax[tpu]'"
fi
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "cd $repo && molmoact2-train${args} 2>&1 | tee -a ~/molmoact2-train.log"
