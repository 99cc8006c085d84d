#!/usr/bin/env bash
# The worker half of launch/tpu_pod.sh. It runs ON each TPU VM worker: tpu_pod.sh sends this file's text with
# every `gcloud compute tpus tpu-vm ssh --command` (so a worker never depends on an older copy of it). Not meant
# to be run on the laptop.
#   bash -c "<this file>" molmoact2-worker ACTION [ARGS...]
# ACTIONs: unpack REVISION | install JAX_SPEC | mount BUCKET MOUNT_BASE | start RUN_ID WORKDIR NENV [K=V ...] ARGS... |
#          status | logs LINES FOLLOW(0|1) | stop
#
# Layout on the worker (MOLMOACT2_REMOTE_DIR, default $HOME/molmoact2; "~" and "$HOME" expand here, on the worker):
#   src/             the code tpu_pod.sh packed with `git archive` (src/REVISION names the commit)
#   venv/            Python >= 3.11 with the project (.[gcs]) and jax[tpu] at the project's jax version
#   logs/RUN_ID/     worker-N.log      the trainer's own stdout and stderr (it writes the file; no tee, no pipe)
#                    worker-N.exit     the trainer's exit status, written when it ends
#                    worker-N.pid      the trainer's process id
#                    worker-N.job.log  messages of the detached job around the trainer (log copy)
#   logs/latest  ->  the newest RUN_ID
set -euo pipefail

root=${MOLMOACT2_REMOTE_DIR:-$HOME/molmoact2}
# shellcheck disable=SC2016,SC2088  # the literal texts "~" and "$HOME", sent unexpanded from the laptop
case $root in
  '~' | '$HOME') root=$HOME ;;
  '~/'*) root=$HOME/${root#'~/'} ;;
  '$HOME/'*) root=$HOME/${root#'$HOME/'} ;;
esac
venv=$root/venv
# Processes that held the TPU get this long after SIGTERM (a trainer saves a checkpoint first) before SIGKILL.
stale_wait_s=${MOLMOACT2_STALE_WAIT_S:-120}
version_ok='import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'
wid='?'   # this worker's number (worker_id), set in main

die() {
  echo "worker $wid: error: $*" >&2
  exit 1
}

worker_id() {
  # TPU VMs: the metadata server's agent-worker-number (the index `--worker=N` addresses); else the host name.
  if [[ -n ${TPU_WORKER_ID:-} ]]; then
    echo "$TPU_WORKER_ID"
    return
  fi
  curl -sf -m 5 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null ||
    hostname
}

latest_run() {
  [[ -L $root/logs/latest ]] || return 1
  basename "$(readlink "$root/logs/latest")"
}

alive() { ps -p "$1" -o pid= >/dev/null 2>&1; }

# The trainer of the newest run, if it still runs: its pid on stdout.
running_trainer() {
  local run pidf
  run=$(latest_run) || return 1
  pidf=$root/logs/$run/worker-$wid.pid
  [[ -f $pidf && ! -f ${pidf%.pid}.exit ]] || return 1
  alive "$(<"$pidf")" || return 1
  cat "$pidf"
}

find_python() {
  local c
  for c in python3.13 python3.12 python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "$version_ok" 2>/dev/null; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

act_unpack() {
  local rev=$1 tarball=$HOME/molmoact2-src.tar.gz pid
  [[ -f $tarball ]] || die "no $tarball: the copy (gcloud ... scp) did not arrive"
  if pid=$(running_trainer); then
    die "a run is active (pid $pid); 'launch/tpu_pod.sh stop' it before replacing the code"
  fi
  mkdir -p "$root"
  rm -rf "$root/src.new" "$root/src.old"
  mkdir "$root/src.new"
  tar -xzf "$tarball" -C "$root/src.new"
  printf '%s\n' "$rev" >"$root/src.new/REVISION"
  if [[ -d $root/src ]]; then
    mv "$root/src" "$root/src.old"
  fi
  mv "$root/src.new" "$root/src"
  rm -rf "$root/src.old" "$tarball"
  echo "worker $wid: code $rev in $root/src"
}

act_install() {
  local jax_spec=$1 py
  if ! py=$(find_python); then
    # e.g. the Ubuntu 22.04 TPU VM images: python3 is 3.10. Python 3.11 comes from the OS packages.
    echo "worker $wid: $(python3 --version 2>&1 || echo 'no python3') is older than 3.11;" \
      "installing python3.11 and python3.11-venv"
    sudo apt-get update -qq
    sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv
    py=$(find_python) || die "no Python >= 3.11 after installing python3.11"
  fi
  if [[ -x $venv/bin/python ]] && ! "$venv/bin/python" -c "$version_ok" 2>/dev/null; then
    rm -rf "$venv"   # made by an older Python
  fi
  if [[ ! -x $venv/bin/python ]]; then
    "$py" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$root/src[gcs]" "$jax_spec"
  echo "worker $wid: $("$venv/bin/python" --version 2>&1) in $venv with .[gcs] and $jax_spec"
}

install_gcsfuse() {
  local codename
  # shellcheck disable=SC1091  # the OS's file, on the worker
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  local key=/usr/share/keyrings/cloud.google.asc repo=https://packages.cloud.google.com/apt
  curl -fsSL "$repo/doc/apt-key.gpg" | sudo tee "$key" >/dev/null
  echo "deb [signed-by=$key] $repo gcsfuse-$codename main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  sudo apt-get update -qq
  sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcsfuse
}

act_mount() {
  local bucket=$1 mnt=$2/$1
  if mountpoint -q "$mnt" 2>/dev/null; then
    echo "worker $wid: gs://$bucket already mounted at $mnt"
    return
  fi
  command -v gcsfuse >/dev/null 2>&1 || install_gcsfuse
  sudo mkdir -p "$mnt"
  sudo chown "$(id -u):$(id -g)" "$mnt"
  # read-only: the training data; directories that exist only as object-name prefixes are listed too
  gcsfuse --implicit-dirs -o ro "$bucket" "$mnt"
  echo "worker $wid: gs://$bucket mounted read-only at $mnt"
}

# Ends whatever would keep the new run off the TPU: trainers of earlier runs (this layout's pid files and any
# molmoact2-train of this venv) and any process holding the TPU device files (/dev/accel*: v2-v4, v5p;
# /dev/vfio/*: v5e, v6e). SIGTERM first (a trainer saves), SIGKILL after MOLMOACT2_STALE_WAIT_S.
free_tpu() {
  local -a pids=() devs=() holders=()
  local f pid p t
  shopt -s nullglob
  for f in "$root"/logs/*/worker-*.pid; do
    pid=$(<"$f")
    if [[ ! -f ${f%.pid}.exit ]] && alive "$pid"; then pids+=("$pid"); fi
  done
  while read -r pid; do
    [[ -n $pid && $pid != "$$" ]] && pids+=("$pid")
  done < <(pgrep -u "$(id -u)" -f -- "$venv/bin/molmoact2-train" || true)
  devs=(/dev/accel* /dev/vfio/*)
  shopt -u nullglob
  if ((${#devs[@]})); then
    mapfile -t holders < <(sudo lsof -t "${devs[@]}" 2>/dev/null || true)
    pids+=("${holders[@]}")
  fi
  if ((${#pids[@]})); then
    mapfile -t pids < <(printf '%s\n' "${pids[@]}" | sort -un)
    echo "worker $wid: stopping earlier TPU users: ${pids[*]}"
    for pid in "${pids[@]}"; do
      kill -TERM "$pid" 2>/dev/null || sudo kill -TERM "$pid" 2>/dev/null || true
    done
    for ((t = 0; t < stale_wait_s; t++)); do
      p=0
      for pid in "${pids[@]}"; do
        if alive "$pid"; then p=1; fi
      done
      ((p)) || break
      sleep 1
    done
    for pid in "${pids[@]}"; do
      if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || sudo kill -KILL "$pid" 2>/dev/null || true
      fi
    done
  fi
  # libtpu's lock file; left behind by a killed process it makes the next one report the TPU as busy
  sudo rm -f /tmp/libtpu_lockfile
}

# The detached job (a new session: it outlives the ssh connection and the laptop). It runs the trainer with the
# trainer's stdout and stderr on the log file, records the exit status, then copies log and status to WORKDIR/logs/.
# SIGTERM/SIGINT to this job are passed on to the trainer, whose exit status is still recorded.
job() {
  local root=$1 logdir=$2 w=$3 workdir=$4 nenv=$5 kv rc=0 tpid dest
  shift 5
  for kv in "${@:1:nenv}"; do export "${kv?}"; done
  shift "$nenv"
  local log=$logdir/worker-$w.log
  cd "$root/src" || { echo 1 >"$logdir/worker-$w.exit"; return 1; }
  trap 'kill -TERM "$tpid" 2>/dev/null || true' TERM INT
  "$root/venv/bin/molmoact2-train" "$@" >"$log" 2>&1 </dev/null &
  tpid=$!
  echo "$tpid" >"$logdir/worker-$w.pid"
  echo "$(date -u +%FT%TZ) worker $w: trainer pid $tpid"
  wait "$tpid" || rc=$?
  # a trapped signal ends `wait` early (status > 128) while the trainer still runs: wait for its own status
  while alive "$tpid"; do
    rc=0
    wait "$tpid" || rc=$?
  done
  echo "$rc" >"$logdir/worker-$w.exit"
  echo "$(date -u +%FT%TZ) worker $w: trainer exited $rc"
  dest=${workdir%/}/logs/$(basename "$logdir")
  if [[ $workdir == gs://* ]]; then
    gcloud storage cp "$log" "$logdir/worker-$w.exit" "$dest/" || echo "worker $w: could not copy the log to $dest"
  elif [[ -n $workdir ]]; then
    { mkdir -p "$dest" && cp "$log" "$logdir/worker-$w.exit" "$dest/"; } ||
      echo "worker $w: could not copy the log to $dest"
  fi
  return "$rc"
}

act_start() {
  local run_id=$1 workdir=$2 nenv=$3 w=$wid logdir
  shift 3
  [[ -x $venv/bin/molmoact2-train ]] || die "no $venv/bin/molmoact2-train: run 'launch/tpu_pod.sh setup' first"
  free_tpu
  logdir=$root/logs/$run_id
  mkdir -p "$logdir"
  ln -sfn "$run_id" "$root/logs/latest"
  # nohup + setsid: no SIGHUP and no controlling terminal, so the job survives the ssh session; no descriptor of
  # the ssh session stays open in it (stdin, stdout, stderr redirected), so ssh returns at once.
  nohup setsid bash -c "$(declare -f alive job); job \"\$@\"" molmoact2-job \
    "$root" "$logdir" "$w" "$workdir" "$nenv" "$@" </dev/null >"$logdir/worker-$w.job.log" 2>&1 &
  echo "worker $w: started run $run_id; log $logdir/worker-$w.log"
}

act_status() {
  local run w=$wid pidf
  if ! run=$(latest_run); then
    echo "worker $w: no run"
    return
  fi
  pidf=$root/logs/$run/worker-$w.pid
  if [[ -f $root/logs/$run/worker-$w.exit ]]; then
    echo "worker $w: run $run exited $(<"$root/logs/$run/worker-$w.exit")"
  elif [[ -f $pidf ]] && alive "$(<"$pidf")"; then
    echo "worker $w: run $run running (pid $(<"$pidf"))"
  else
    echo "worker $w: run $run not running and no exit status (the VM restarted or the job was killed);" \
      "see $root/logs/$run/"
  fi
}

act_logs() {
  local lines=$1 follow=$2 run log
  run=$(latest_run) || die "no run yet"
  log=$root/logs/$run/worker-$wid.log
  [[ -f $log ]] || die "no $log"
  echo "==> worker $wid: $log <=="
  if [[ $follow == 1 ]]; then
    tail -n "$lines" -F "$log"
  else
    tail -n "$lines" "$log"
  fi
}

act_stop() {
  local pid
  if pid=$(running_trainer); then
    # the trainer's SIGTERM handling: every process agrees on a step, saves it and exits 0
    kill -TERM "$pid"
    echo "worker $wid: sent SIGTERM to the trainer (pid $pid)"
  else
    echo "worker $wid: no trainer running"
  fi
}

main() {
  local action=${1:-}
  shift || true
  wid=$(worker_id)
  case $action in
    unpack) act_unpack "$@" ;;
    install) act_install "$@" ;;
    mount) act_mount "$@" ;;
    start) act_start "$@" ;;
    status) act_status ;;
    logs) act_logs "$@" ;;
    stop) act_stop ;;
    *) die "unknown action '$action'" ;;
  esac
}

main "$@"
