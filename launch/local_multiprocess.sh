#!/usr/bin/env bash
# N training processes on 127.0.0.1 (tests multi-host logic on one machine; CPU collectives over gloo).
#   launch/local_multiprocess.sh NUM_PROCESSES [DEVICES_PER_PROCESS] -- --config=... --workdir=DIR [...]
# Every process runs the same command; process 0 writes logs and metrics. If one process fails, all are stopped.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 NUM_PROCESSES [DEVICES_PER_PROCESS] -- molmoact2-train arguments" >&2
  exit 2
fi
num=$1
shift
devices=1
if [[ $1 != "--" ]]; then
  devices=$1
  shift
fi
if [[ $1 != "--" ]]; then
  echo "$0: expected -- before the training arguments" >&2
  exit 2
fi
shift
# below the OS's ephemeral range, so no outgoing connection takes it before process 0 binds it (molmoact2_jax/ports.py)
port=${MOLMOACT2_PORT:-$(python3 -c 'from molmoact2_jax.ports import coordinator_port; print(coordinator_port())')}
# molmoact2-train reads these as its --coordinator-address, --num-processes and (below) --process-id
export MOLMOACT2_COORDINATOR="127.0.0.1:${port}" MOLMOACT2_NUM_PROCESSES="$num"
# processes sharing one host's cores can starve the coordination heartbeats past jax's 100 s default
export MOLMOACT2_HEARTBEAT_TIMEOUT_S="${MOLMOACT2_HEARTBEAT_TIMEOUT_S:-600}"
# Several processes share this host's cores: a starved device thread must not trip XLA:CPU's collective
# rendezvous abort (seconds by default), so allow minutes.
export XLA_FLAGS="--xla_force_host_platform_device_count=${devices} --xla_cpu_collective_call_terminate_timeout_seconds=1200 ${XLA_FLAGS:-}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for ((i = 0; i < num; i++)); do
  MOLMOACT2_PROCESS_ID=$i molmoact2-train "$@" &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then
    status=1
    cleanup
  fi
done
trap - EXIT
exit "$status"
