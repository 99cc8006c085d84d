"""Runs `molmoact2-train` in subprocesses (fake CPU devices, several processes, kill/SIGTERM) for the tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from molmoact2_jax.ports import coordinator_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join("/tmp", f"molmoact2_test_xla_cache_{os.getuid()}")
BASE = ["--config=" + os.path.join(ROOT, "configs", "pretrain.py") + ":tiny",
        "--config.model.use_action_expert=True", "--config.model.action_mode=both",
        f"--config.trainer.compilation_cache_dir={CACHE}", "--config.trainer.eval_every_steps=0"]


def env_for(devices: int = 1) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    # The fake devices of one process meet at every collective; XLA:CPU aborts the process (SIGABRT) when one
    # device's thread has not arrived within its rendezvous timeout. With two xdist workers each running trainer
    # processes on 2 cores (load average ~12), a starved thread can miss it: give them minutes, as tests
    # measure results, not speed.
    env["MOLMOACT2_HEARTBEAT_TIMEOUT_S"] = "900"   # the same starvation for the coordination heartbeats
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=1200 "
                        "--xla_cpu_collective_timeout_seconds=1800")
    return env


def command(workdir: str, overrides=(), extra=()) -> list:
    return [sys.executable, "-m", "molmoact2_jax.cli.train", f"--workdir={workdir}", *BASE, *overrides, *extra]


def run(workdir: str, overrides=(), devices: int = 1, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command(workdir, overrides), env=env_for(devices), capture_output=True, text=True,
                          timeout=timeout)


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def losses(workdir: str) -> list[float]:
    return [r["loss"] for r in read_metrics(workdir)]


def run_until(workdir: str, overrides, step: int, sig=signal.SIGKILL, devices: int = 1, timeout: int = 400):
    """Starts a run, sends `sig` once metrics.jsonl reaches `step`, returns (returncode, output, sent). Output goes
    to a file, not a pipe: a pipe nobody drains while polling can fill and block the trainer before `step`."""
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(command(workdir, overrides), env=env_for(devices), stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        path = os.path.join(workdir, "metrics.jsonl")
        deadline = time.monotonic() + timeout
        sent = False
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if not sent and os.path.exists(path):
                    with open(path) as f:
                        n = sum(1 for line in f if line.strip())
                    if n >= step:
                        proc.send_signal(sig)
                        sent = True
                time.sleep(0.02)
            proc.wait(timeout=max(deadline - time.monotonic(), 60))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        return proc.returncode, log.read(), sent


def start_multiprocess(workdir: str, overrides, num_processes: int, devices_per_process: int, env=None,
                       cwd=None, base=BASE):
    """Starts `num_processes` trainers on one coordinator; returns (processes, log files). Each process writes to
    its own file, not a pipe, so a talkative process can never block on a full pipe while another is waited on.
    `env` adds variables; `cwd` is one folder for all or a list, one per process."""
    port = coordinator_port()
    procs, logs = [], []
    for pid in range(num_processes):
        extra = [f"--coordinator-address=127.0.0.1:{port}", f"--num-processes={num_processes}",
                 f"--process-id={pid}"]
        logs.append(tempfile.TemporaryFile(mode="w+"))
        cmd = [sys.executable, "-m", "molmoact2_jax.cli.train", f"--workdir={workdir}", *base, *overrides, *extra]
        procs.append(subprocess.Popen(cmd, env={**env_for(devices_per_process), **(env or {})},
                                      cwd=cwd[pid] if isinstance(cwd, (list, tuple)) else cwd,
                                      stdout=logs[-1], stderr=subprocess.STDOUT, text=True))
    return procs, logs


def wait_all(procs, logs, timeout: int = 400):
    """(exit codes, outputs) of processes from start_multiprocess; any still running at the deadline is killed."""
    deadline = time.monotonic() + timeout
    try:
        codes = [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outs = []
    for log in logs:
        log.seek(0)
        outs.append(log.read())
        log.close()
    return (codes or [p.returncode for p in procs]), outs


def run_multiprocess(workdir: str, overrides, num_processes: int, devices_per_process: int, timeout: int = 400,
                     env=None, cwd=None, base=BASE):
    """Runs `num_processes` trainers on one coordinator to the end; returns (exit codes, outputs)."""
    procs, logs = start_multiprocess(workdir, overrides, num_processes, devices_per_process, env, cwd, base)
    return wait_all(procs, logs, timeout)


def failure_report(outs, tail: int = 2500) -> str:
    """For an assert message: each process's error lines (XLA / coordination-service log lines E.../F..., Python
    errors) and the tail of its output; a bare tail loses the first error when the process dumps stacks."""
    parts = []
    for i, out in enumerate(outs):
        errors = [line for line in out.splitlines()
                  if line[:1] in "EF" and line[1:5].isdigit() or "Error" in line or "error:" in line]
        parts.append(f"--- process {i}: error lines\n" + "\n".join(errors[:30]) + f"\n--- tail\n{out[-tail:]}")
    return "\n".join(parts)
