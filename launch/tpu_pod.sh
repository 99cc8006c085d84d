#!/usr/bin/env bash
# Training on a Cloud TPU VM pod: one trainer process per worker (host); JAX finds the pod from the TPU metadata.
#   export TPU_NAME=my-v5p-128 ZONE=us-east5-a [PROJECT=my-project]
#   launch/tpu_pod.sh setup     copy the code (git archive of HEAD, or REV) to every worker, make a Python >= 3.11
#                               venv there, install .[gcs] and jax[tpu] (the project's jax version) into it
#   launch/tpu_pod.sh run [--env=NAME=VALUE ...] -- --config=posttrain --workdir=gs://bucket/run ...
#                               start the trainer on every worker, detached (it outlives this shell and the laptop)
#   launch/tpu_pod.sh status    per worker: the newest run running, or its exit status
#   launch/tpu_pod.sh logs [--worker=N|all] [--lines=N] [--follow]    tail a worker's log (default worker 0)
#   launch/tpu_pod.sh stop      SIGTERM to every trainer: all hosts save the same step and exit 0
#   launch/tpu_pod.sh sync      copy the code only (after a commit; no installs)
# Optional environment:
#   REV             what `setup`/`sync` copy (default HEAD; uncommitted changes are not copied)
#   DATA_BUCKET     a bucket with the training data, mounted read-only with gcsfuse at DATA_MOUNT/DATA_BUCKET
#                   (DATA_MOUNT default /mnt) by `setup` and again before each `run`
#   REMOTE_DIR      where everything lives on a worker (default '$HOME/molmoact2', expanded on the worker)
#   JAX_VERSION     jax[tpu] version to install (default: the jax[tpu]==X pin of the copied pyproject.toml)
#   GCLOUD_SSH_FLAGS  extra flags for `gcloud compute tpus tpu-vm ssh/scp`, e.g. --tunnel-through-iap
# On each worker: REMOTE_DIR/logs/RUN_ID/worker-N.log (the trainer's output), worker-N.exit (its exit status); at
# the end both are copied to WORKDIR/logs/RUN_ID/ (`gcloud storage cp` for a gs:// workdir).
# The laptop side avoids bash 4 features (macOS has bash 3.2; untested there); the worker side is
# launch/tpu_pod_worker.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
worker_script=$here/tpu_pod_worker.sh

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

# POSIX single quotes, so the worker's login shell passes the text on unchanged (no expansion on either side).
sq() {
  local q="'\\''"
  printf "'%s'" "${1//\'/$q}"
}

common_flags() {
  gflags=("--zone=$ZONE")
  if [[ -n ${PROJECT:-} ]]; then gflags+=("--project=$PROJECT"); fi
  extra=()
  if [[ -n ${GCLOUD_SSH_FLAGS:-} ]]; then read -r -a extra <<<"$GCLOUD_SSH_FLAGS"; fi
}

# remote WORKER ACTION [ARGS...]: runs launch/tpu_pod_worker.sh's ACTION on WORKER (a number or "all").
remote() {
  local worker=$1 cmd="" a
  shift
  if [[ -n ${REMOTE_DIR:-} ]]; then cmd+="MOLMOACT2_REMOTE_DIR=$(sq "$REMOTE_DIR") "; fi
  if [[ -n ${STALE_WAIT_S:-} ]]; then cmd+="MOLMOACT2_STALE_WAIT_S=$(sq "$STALE_WAIT_S") "; fi
  cmd+="bash -c $(sq "$(<"$worker_script")") molmoact2-worker"
  for a in "$@"; do cmd+=" $(sq "$a")"; done
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gflags[@]}" --worker="$worker" ${extra[@]+"${extra[@]}"} \
    --command="$cmd"
}

repo_root() { git -C "$here" rev-parse --show-toplevel; }

# Packs REV with git archive, copies it to every worker's home and unpacks it into REMOTE_DIR/src there.
copy_code() {
  local repo rev tmp
  repo=$(repo_root)
  rev=$(git -C "$repo" rev-parse --verify "${REV:-HEAD}^{commit}") || die "REV=${REV:-HEAD} is not a commit"
  if [[ ${REV:-HEAD} == HEAD && -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
    echo "tpu_pod.sh: warning: uncommitted changes are not copied (git archive packs $rev)" >&2
  fi
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064  # expand $tmp now
  trap "rm -rf '$tmp'" EXIT
  git -C "$repo" archive --format=tar.gz -o "$tmp/molmoact2-src.tar.gz" "$rev"
  gcloud compute tpus tpu-vm scp "$tmp/molmoact2-src.tar.gz" "$TPU_NAME:molmoact2-src.tar.gz" "${gflags[@]}" \
    --worker=all ${extra[@]+"${extra[@]}"}
  remote all unpack "$rev"
  copied_rev=$rev
}

jax_spec() {
  local text re='jax\[tpu\]==([0-9][0-9A-Za-z.]*)'
  if [[ -n ${JAX_VERSION:-} ]]; then
    echo "jax[tpu]==$JAX_VERSION"
    return
  fi
  text=$(git -C "$(repo_root)" show "$1:pyproject.toml")
  [[ $text =~ $re ]] || die "no jax[tpu]==X pin in pyproject.toml at $1: set JAX_VERSION"
  echo "jax[tpu]==${BASH_REMATCH[1]}"
}

mount_data() {
  if [[ -n ${DATA_BUCKET:-} ]]; then
    remote all mount "${DATA_BUCKET#gs://}" "${DATA_MOUNT:-/mnt}"
  fi
}

cmd_setup() {
  copy_code
  remote all install "$(jax_spec "$copied_rev")"
  mount_data
}

cmd_run() {
  local -a envs=()
  local workdir="" run_id a prev=""
  while (($#)); do
    case $1 in
      --env=*=*)
        [[ ${1#--env=} =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "bad $1: expected --env=NAME=VALUE"
        envs+=("${1#--env=}")
        shift
        ;;
      --) shift; break ;;
      -*) break ;;
      *) die "run: unexpected '$1' (train arguments go after --)" ;;
    esac
  done
  (($#)) || die "run: no training arguments (run -- --config=... --workdir=...)"
  for a in "$@"; do
    case $a in
      --workdir=*) workdir=${a#--workdir=} ;;
    esac
    if [[ $prev == --workdir ]]; then workdir=$a; fi
    prev=$a
  done
  [[ -n $workdir ]] || die "run: the training arguments need --workdir (gs://bucket/run: shared by every worker)"
  [[ $workdir == gs://* ]] ||
    echo "tpu_pod.sh: warning: --workdir=$workdir is each worker's own disk; a pod needs a gs:// run directory" >&2
  run_id=${RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}
  mount_data
  remote all start "$run_id" "$workdir" "${#envs[@]}" ${envs[@]+"${envs[@]}"} "$@"
  echo "run $run_id started on every worker of $TPU_NAME. Next: $0 status | $0 logs [--worker=N] | $0 stop"
}

cmd_logs() {
  local worker=0 lines=100 follow=0
  while (($#)); do
    case $1 in
      --worker=*) worker=${1#--worker=} ;;
      --lines=*) lines=${1#--lines=} ;;
      -f | --follow) follow=1 ;;
      *) die "logs: unknown option '$1'" ;;
    esac
    shift
  done
  [[ $worker == all || $worker =~ ^[0-9]+$ ]] || die "logs: --worker=N or --worker=all"
  [[ $lines =~ ^[0-9]+$ ]] || die "logs: --lines=N"
  remote "$worker" logs "$lines" "$follow"
}

main() {
  local sub=${1:-help}
  shift || true
  case $sub in
    help | -h | --help)
      usage
      return
      ;;
    setup | sync | run | status | logs | stop) ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
  : "${TPU_NAME:?set TPU_NAME (the TPU VM pod)}" "${ZONE:?set ZONE}"
  command -v gcloud >/dev/null || die "gcloud not found (Google Cloud CLI)"
  common_flags
  case $sub in
    setup) cmd_setup ;;
    sync) copy_code ;;
    run) cmd_run "$@" ;;
    status) remote all status ;;
    logs) cmd_logs "$@" ;;
    stop) remote all stop ;;
  esac
}

main "$@"
