"""Environment workers: each owns its simulators (one per task, a few cached) and answers reset/step.

`LocalWorker` runs in this process (workers=0); `ProcessWorker` runs in a spawned process and is
driven over a pipe, so N workers step N environments in parallel while the policy runs here.
Both have send(cmd, payload) / recv() -> result.
"""
from __future__ import annotations

import multiprocessing as mp
import traceback
from collections import OrderedDict

from molmoact2_jax.evaluation.config import SimConfig
from molmoact2_jax.evaluation.envs import make_env
from molmoact2_jax.evaluation.errors import SimEvalError


class EnvHandler:
    def __init__(self, simulator: str, suite: str, cfg: SimConfig, render: bool = True, max_cached: int = 4):
        self.simulator, self.suite, self.cfg, self.render = simulator, suite, cfg, render
        self.max_cached = max_cached
        self.envs: OrderedDict[str, object] = OrderedDict()
        self.env = None

    def _env(self, task: str):
        if task in self.envs:
            self.envs.move_to_end(task)
        else:
            while len(self.envs) >= self.max_cached:
                _, old = self.envs.popitem(last=False)
                old.close()
            self.envs[task] = make_env(self.simulator, self.suite, task, self.cfg, self.render)
        return self.envs[task]

    def handle(self, cmd: str, payload):
        if cmd == "reset":
            task, seed, episode = payload
            self.env = self._env(task)
            return self.env.reset(seed=seed, episode=episode)
        if cmd == "step":
            action, render = payload
            obs, success, info = self.env.step(action, render=render)
            info["distance"] = self.env.goal_distance()
            return obs, success, info
        if cmd == "close":
            self.close()
            return None
        raise ValueError(f"unknown worker command {cmd!r}")

    def close(self):
        for env in self.envs.values():
            env.close()
        self.envs.clear()


class LocalWorker:
    def __init__(self, simulator, suite, cfg, render=True):
        self.handler = EnvHandler(simulator, suite, cfg, render)
        self._result = None

    def send(self, cmd, payload=None):
        self._result = self.handler.handle(cmd, payload)

    def recv(self):
        return self._result

    def close(self):
        self.handler.close()


def _worker_loop(conn, simulator, suite, cfg, render):
    handler = EnvHandler(simulator, suite, cfg, render)
    try:
        while True:
            cmd, payload = conn.recv()
            try:
                conn.send(("ok", handler.handle(cmd, payload)))
            except SimEvalError as e:
                conn.send(("sim_error", str(e)))
            except Exception:  # noqa: BLE001 - shipped to the parent with its traceback
                conn.send(("error", traceback.format_exc()))
            if cmd == "close":
                break
    except (EOFError, KeyboardInterrupt):
        handler.close()


class ProcessWorker:
    def __init__(self, simulator, suite, cfg, render=True):
        ctx = mp.get_context("spawn")   # no fork after GL/JAX initialisation
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_loop, args=(child, simulator, suite, cfg, render), daemon=True)
        self.proc.start()
        child.close()

    def send(self, cmd, payload=None):
        self.conn.send((cmd, payload))

    def recv(self):
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"environment worker {self.proc.pid} died (exit code {self.proc.exitcode})") from None
        if status == "sim_error":
            raise SimEvalError(value)
        if status == "error":
            raise RuntimeError(f"environment worker {self.proc.pid} failed:\n{value}")
        return value

    def close(self):
        try:
            self.conn.send(("close", None))
            self.conn.recv()
        except (OSError, EOFError, BrokenPipeError):
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


def make_workers(n: int, simulator: str, suite: str, cfg: SimConfig, render: bool = True) -> list:
    if n <= 0:
        return [LocalWorker(simulator, suite, cfg, render)]
    return [ProcessWorker(simulator, suite, cfg, render) for _ in range(n)]
