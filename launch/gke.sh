#!/usr/bin/env bash
# Training on a GKE TPU slice as a JobSet (launch/gke_jobset.yaml): one pod per TPU host, each running
# molmoact2-train from a container image that holds the project (.[gcs]) and jax[tpu].
#   export IMAGE=us-docker.pkg.dev/PROJECT/REPO/molmoact2:TAG TPU_ACCELERATOR=tpu-v5p-slice TPU_TOPOLOGY=4x4x4
#   launch/gke.sh run -- --config=posttrain --workdir=gs://bucket/run ...   render + kubectl apply
#   launch/gke.sh render -- ...   print the manifest only
#   launch/gke.sh status          the JobSet and its pods
#   launch/gke.sh logs [--worker=N|all] [--lines=N] [--follow]    a host's trainer output (default host 0)
#   launch/gke.sh stop            delete the JobSet: SIGTERM to every pod, all hosts save the same step, exit 0
# Optional environment:
#   CHIPS_PER_HOST (default 4)  HOSTS (default: the chips in TPU_TOPOLOGY / CHIPS_PER_HOST)
#   JOBSET (name, default molmoact2)  NAMESPACE  SERVICE_ACCOUNT (Kubernetes service account with access to the
#   buckets, default "default")  GRACE_S (time for the save after SIGTERM, default 600)  MAX_RESTARTS (default 0)
#   DATA_BUCKET (mounted read-only with Cloud Storage FUSE at DATA_MOUNT/DATA_BUCKET; DATA_MOUNT default /mnt)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
template=$here/gke_jobset.yaml
name=${JOBSET:-molmoact2}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

die() {
  echo "gke.sh: $*" >&2
  exit 2
}

# A YAML double-quoted scalar's contents.
yaml_escape() {
  local s=$1
  case $s in
    *$'\n'* | *$'\r'* | *$'\t'*) die "a value with a newline or tab: '$s'" ;;
  esac
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '%s' "$s"
}

is_count() { [[ $1 =~ ^[0-9]+$ ]] && (($1 > 0)); }

render() {
  local workdir="" a prev="" args="" chips topo hosts product=1 d line data_path="" key val
  (($#)) || die "no training arguments: $0 run -- --config=... --workdir=gs://..."
  for a in "$@"; do
    case $a in --workdir=*) workdir=${a#--workdir=} ;; esac
    if [[ $prev == --workdir ]]; then workdir=$a; fi
    prev=$a
    args+="${args:+, }\"$(yaml_escape "$a")\""
  done
  [[ -n $workdir ]] || die "the training arguments need --workdir (gs://bucket/run, shared by every host)"
  : "${IMAGE:?set IMAGE (a container image with the project and jax[tpu])}"
  : "${TPU_ACCELERATOR:?set TPU_ACCELERATOR (e.g. tpu-v5p-slice, tpu-v5-lite-podslice, tpu-v6e-slice)}"
  : "${TPU_TOPOLOGY:?set TPU_TOPOLOGY (e.g. 4x4x4, 16x16)}"
  chips=${CHIPS_PER_HOST:-4}
  is_count "$chips" || die "CHIPS_PER_HOST=$chips"
  topo=$TPU_TOPOLOGY
  [[ $topo =~ ^[0-9]+(x[0-9]+)+$ ]] || die "TPU_TOPOLOGY=$topo: expected AxB or AxBxC"
  for d in ${topo//x/ }; do product=$((product * d)); done
  ((product % chips == 0)) || die "TPU_TOPOLOGY=$topo has $product chips, not a multiple of CHIPS_PER_HOST=$chips"
  hosts=${HOSTS:-$((product / chips))}
  is_count "$hosts" || die "HOSTS=$hosts"
  ((hosts * chips == product)) || die "HOSTS=$hosts x CHIPS_PER_HOST=$chips != $product chips of $topo"
  [[ ${GRACE_S:-600} =~ ^[0-9]+$ ]] || die "GRACE_S=${GRACE_S:-}"
  [[ ${MAX_RESTARTS:-0} =~ ^[0-9]+$ ]] || die "MAX_RESTARTS=${MAX_RESTARTS:-}"
  if [[ -n ${DATA_BUCKET:-} ]]; then data_path=${DATA_MOUNT:-/mnt}/${DATA_BUCKET#gs://}; fi
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line == *'  #data' ]]; then
      [[ -n ${DATA_BUCKET:-} ]] || continue
      line=${line%'  #data'}
    fi
    for key in JOBSET MAX_RESTARTS HOSTS SERVICE_ACCOUNT GRACE_S TPU_ACCELERATOR TPU_TOPOLOGY IMAGE ARGS \
      CHIPS_PER_HOST DATA_PATH DATA_BUCKET; do
      [[ $line == *"\${$key}"* ]] || continue
      case $key in
        JOBSET) val=$(yaml_escape "$name") ;;
        MAX_RESTARTS) val=${MAX_RESTARTS:-0} ;;
        HOSTS) val=$hosts ;;
        SERVICE_ACCOUNT) val=$(yaml_escape "${SERVICE_ACCOUNT:-default}") ;;
        GRACE_S) val=${GRACE_S:-600} ;;
        TPU_ACCELERATOR) val=$(yaml_escape "$TPU_ACCELERATOR") ;;
        TPU_TOPOLOGY) val=$topo ;;
        IMAGE) val=$(yaml_escape "$IMAGE") ;;
        ARGS) val=$args ;;
        CHIPS_PER_HOST) val=$chips ;;
        DATA_PATH) val=$(yaml_escape "$data_path") ;;
        DATA_BUCKET) val=$(yaml_escape "${DATA_BUCKET#gs://}") ;;
      esac
      line=${line//"\${$key}"/"$val"}
    done
    printf '%s\n' "$line"
  done <"$template"
}

kube() {
  command -v kubectl >/dev/null || die "kubectl not found"
  kubectl ${NAMESPACE:+-n "$NAMESPACE"} "$@"
}

cmd_logs() {
  local worker=0 lines=100 follow=()
  while (($#)); do
    case $1 in
      --worker=*) worker=${1#--worker=} ;;
      --lines=*) lines=${1#--lines=} ;;
      -f | --follow) follow=(--follow) ;;
      *) die "logs: unknown option '$1'" ;;
    esac
    shift
  done
  [[ $lines =~ ^[0-9]+$ ]] || die "logs: --lines=N"
  local selector=jobset.sigs.k8s.io/jobset-name=$name
  if [[ $worker == all ]]; then
    kube logs -l "$selector" --prefix --max-log-requests=1000 --tail="$lines" ${follow[@]+"${follow[@]}"}
  else
    [[ $worker =~ ^[0-9]+$ ]] || die "logs: --worker=N or --worker=all"
    kube logs -l "$selector,batch.kubernetes.io/job-completion-index=$worker" --tail="$lines" \
      ${follow[@]+"${follow[@]}"}
  fi
}

main() {
  local sub=${1:-help}
  shift || true
  if [[ ${1:-} == -- ]]; then shift; fi
  case $sub in
    help | -h | --help) usage ;;
    render) render "$@" ;;
    run)
      local manifest
      manifest=$(render "$@")
      printf '%s\n' "$manifest" | kube apply -f -
      echo "JobSet $name applied. Next: $0 status | $0 logs [--worker=N] | $0 stop"
      ;;
    status)
      kube get jobset "$name"
      kube get pods -l "jobset.sigs.k8s.io/jobset-name=$name" -o wide
      ;;
    logs) cmd_logs "$@" ;;
    stop) kube delete jobset "$name" ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
