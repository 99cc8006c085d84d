"""HTTP policy server speaking the reference `/act` wire protocol (docs/serving.md), standard library only.

    molmoact2-serve --checkpoint CKPT_DIR|WORKDIR [--host 127.0.0.1] [--port 8000] [--norm-tag TAG]
                    [--mode continuous] [--think] [--max-request-mb 32] [--warmup]
                    [--norm-stats PATH] [--tokenizer PATH] [--openfast DIR]

The port is bound before the model loads, so a port in use fails at once (one line, exit 2). A run directory
(WORKDIR with checkpoints/<step>/) serves its newest complete step, named on stderr.

Routes: `POST /act` (JSON body; arrays json_numpy-encoded or plain nested lists) -> `{"actions": (N, D) float32
json_numpy, "dt_ms": float, "action_shape": [N, D]}`; `GET /health`, `GET /healthz`, `GET /act` -> `{"status": "ok",
...}`.

Request keys:
  images     `images` (list, camera order; or an object {camera name: image}, names as the tag's camera_keys or
             their last part, reordered to the tag's order) | `image` (one) | DROID `external_cam`, `wrist_cam` |
             YAM `top_cam`, `left_cam`, `right_cam` (fixed order). DROID: when the tag's metadata lists 3 cameras
             the exterior view is duplicated ([external, external, wrist]), as the DROID fork does with 2 physical
             views. The cameras must be those the checkpoint was trained with (else 400, naming both).
  task       `instruction` | `task`
  state      `state` (raw units)
  tag        `tag` | `norm_tag` | `normalization_tag` (default: --norm-tag, or the only tag of the checkpoint)
  optional   `mode` ("continuous"/"discrete"), `num_steps`, `n_action_steps`, `seed`, `noise`, `reset_depth_cache`;
             `timestamp` and `enable_cuda_graph` are accepted and ignored.
  RTC        `prev_chunk` ((N, D) robot units, the previous chunk's actions from this observation on),
             `inference_delay`, `execution_horizon`, `max_guidance_weight`: real-time chunking, as
             `Policy.predict_action` (the reply's first `inference_delay` actions are prev_chunk's).

Every input problem is answered with a 4xx and `{"error": msg}` (400 bad JSON / fields / values, 404 route,
411 no Content-Length, 413 body over --max-request-mb) and logged as one line on stderr; the server keeps
serving. A failure of the model itself is a 500 with `{"error": msg, "request_id": id}`, logged as one line with the
same id (no traceback); in particular actions holding NaN/inf are never sent (the policy refuses them, and the
service checks again). It binds 127.0.0.1 unless told otherwise. No pickle anywhere.
"""
from __future__ import annotations

import errno
import json
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from molmoact2_jax.inference.client import WireError, dumps, encode_array, loads
from molmoact2_jax.inference.errors import NonFiniteActionError

DROID_KEYS = ("external_cam", "wrist_cam")
YAM_KEYS = ("top_cam", "left_cam", "right_cam")
TAG_KEYS = ("tag", "norm_tag", "normalization_tag")
TASK_KEYS = ("instruction", "task")
IGNORED_KEYS = ("timestamp", "enable_cuda_graph")
MAX_NUM_STEPS = 1000


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _array(value, name: str, dtype=None) -> np.ndarray:
    if isinstance(value, np.ndarray):
        arr = value
    else:
        if not isinstance(value, (list, tuple, int, float)) or isinstance(value, bool):
            raise RequestError(400, f"{name}: expected an array, got {type(value).__name__}")
        try:
            arr = np.asarray(value, dtype=dtype)
        except (ValueError, TypeError):
            raise RequestError(400, f"{name}: not a rectangular numeric array") from None
        if arr.dtype.kind not in "biuf":
            raise RequestError(400, f"{name}: not a numeric array")
        if dtype is None and arr.dtype.kind in "iu" and name != "state":
            arr = arr.astype(np.uint8) if arr.size and arr.min() >= 0 and arr.max() <= 255 else arr
    return arr


def _int_option(payload, key, lo, hi):
    if key not in payload or payload[key] is None:
        return None
    v = payload[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise RequestError(400, f"{key}: expected an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


class PolicyService:
    """Transport-independent request handling around a `Policy`."""

    def __init__(self, policy, default_tag: str | None = None, mode: str = "continuous", think: bool = False,
                 num_steps: int | None = None):
        self.policy = policy
        self.num_steps = num_steps
        if default_tag is not None:
            policy.tag(default_tag)   # fail at start-up, not per request
        elif len(policy.tags) == 1:
            default_tag = next(iter(policy.tags))
        self.default_tag, self.mode, self.think = default_tag, mode, think
        self._depth_cache = None
        self._lock = threading.Lock()
        self.served = 0
        self.rejected = 0

    def health(self) -> dict:
        return {"status": "ok", "tags": sorted(self.policy.tags), "default_tag": self.default_tag,
                "mode": self.mode, "think": self.think, "served": self.served, "rejected": self.rejected}

    def parse(self, payload) -> dict:
        if not isinstance(payload, dict):
            raise RequestError(400, "request body must be a JSON object")
        tag = next((payload[k] for k in TAG_KEYS if payload.get(k) is not None), self.default_tag)
        if tag is None:
            raise RequestError(400, f"missing norm tag ({' / '.join(TAG_KEYS)}); known tags "
                                    f"{sorted(self.policy.tags)}")
        if not isinstance(tag, str) or tag not in self.policy.tags:
            raise RequestError(400, f"unknown norm tag {tag!r}; known tags {sorted(self.policy.tags)}")
        info = self.policy.tags[tag]
        if payload.get("images") is not None:
            raw = payload["images"]
            if isinstance(raw, np.ndarray) and raw.ndim == 4:
                raw = list(raw)
            if isinstance(raw, dict):   # {camera name: image}: the policy checks the names and orders them
                images = {str(k): _array(im, f"images[{k!r}]") for k, im in raw.items()}
            elif isinstance(raw, list):
                images = [_array(im, f"images[{j}]") for j, im in enumerate(raw)]
            else:
                raise RequestError(400, "images: expected a list of HxWx3 arrays in camera order, or an object "
                                        "{camera name: HxWx3 array}")
        elif payload.get("image") is not None:
            images = [_array(payload["image"], "image")]
        elif any(k in payload for k in YAM_KEYS):
            missing = [k for k in YAM_KEYS if payload.get(k) is None]
            if missing:
                raise RequestError(400, f"YAM request missing {missing}")
            images = [_array(payload[k], k) for k in YAM_KEYS]
        elif any(k in payload for k in DROID_KEYS):
            missing = [k for k in DROID_KEYS if payload.get(k) is None]
            if missing:
                raise RequestError(400, f"DROID request missing {missing}")
            ext, wrist = (_array(payload[k], k) for k in DROID_KEYS)
            images = [ext, ext, wrist] if len(info.camera_keys) == 3 else [ext, wrist]
        else:
            raise RequestError(400, "no images: send `images`, `image`, DROID (external_cam, wrist_cam) or YAM "
                                    "(top_cam, left_cam, right_cam) keys")
        task = next((payload[k] for k in TASK_KEYS if k in payload), None)
        if not isinstance(task, str):
            raise RequestError(400, "missing or non-string `instruction` / `task`")
        if len(task) > 10000:
            raise RequestError(400, "instruction longer than 10000 characters")
        if payload.get("state") is None:
            raise RequestError(400, "missing `state`")
        state = _array(payload["state"], "state", None)
        if state.dtype.kind not in "iuf":
            raise RequestError(400, f"state: dtype {state.dtype} is not numeric")
        mode = payload.get("mode", self.mode)
        if mode not in ("continuous", "discrete"):
            raise RequestError(400, f"mode must be continuous or discrete, got {mode!r}")
        noise = None
        if payload.get("noise") is not None:  # explicit flow noise, (horizon, 32): the same reply every time
            noise = _array(payload["noise"], "noise", None)
            if noise.dtype.kind != "f":
                raise RequestError(400, f"noise: dtype {noise.dtype} is not floating point")
        rtc = {}
        if payload.get("prev_chunk") is not None:   # real-time chunking
            prev = _array(payload["prev_chunk"], "prev_chunk", None)
            if prev.dtype.kind not in "iuf":
                raise RequestError(400, f"prev_chunk: dtype {prev.dtype} is not numeric")
            rtc = dict(prev_chunk=prev, inference_delay=_int_option(payload, "inference_delay", 0, info.horizon) or 0,
                       execution_horizon=_int_option(payload, "execution_horizon", 0, info.horizon))
            if payload.get("max_guidance_weight") is not None:
                beta = payload["max_guidance_weight"]
                if isinstance(beta, bool) or not isinstance(beta, (int, float)):
                    raise RequestError(400, f"max_guidance_weight: expected a number, got {beta!r}")
                rtc["max_guidance_weight"] = float(beta)
        elif any(payload.get(k) is not None for k in ("inference_delay", "execution_horizon")):
            raise RequestError(400, "inference_delay / execution_horizon need prev_chunk (real-time chunking)")
        return dict(images=images, task=task, state=state, norm_tag=tag, mode=mode, noise=noise,
                    num_steps=_int_option(payload, "num_steps", 1, MAX_NUM_STEPS) or self.num_steps,
                    n_action_steps=_int_option(payload, "n_action_steps", 1, info.horizon),
                    seed=_int_option(payload, "seed", 0, 2 ** 31 - 1),
                    reset=bool(payload.get("reset_depth_cache", False)), rtc=rtc)

    def act(self, payload) -> dict:
        req = self.parse(payload)
        t0 = time.perf_counter()
        try:
            with self._lock:
                cache = None if req["reset"] else self._depth_cache
                out = self.policy.predict_action(req["images"], req["task"], req["state"], req["norm_tag"],
                                                 mode=req["mode"], think=self.think, depth_cache=cache,
                                                 num_steps=req["num_steps"], n_action_steps=req["n_action_steps"],
                                                 seed=req["seed"], noise=req["noise"], **req["rtc"])
                if self.think:
                    self._depth_cache = out.depth_cache
        except ValueError as e:   # the policy's input validation
            raise RequestError(400, str(e)) from None
        except NonFiniteActionError as e:   # the model, not the request: 500
            raise RequestError(500, str(e)) from None
        dt = (time.perf_counter() - t0) * 1000.0
        actions = np.asarray(out.actions, np.float32)
        if not np.isfinite(actions).all():   # whatever policy object is served: NaN/inf never goes on the wire
            raise RequestError(500, "the policy returned non-finite actions (NaN/inf); refusing to send them")
        resp = {"actions": encode_array(actions), "dt_ms": dt, "action_shape": list(actions.shape)}
        if out.mode == "discrete":
            resp["valid"] = bool(out.valid)
        return resp


def make_handler(service: PolicyService, max_body: int, log=sys.stderr):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 60   # socket timeout: a stalled client cannot hold a thread forever
        server_version = "molmoact2-serve"

        def log_message(self, fmt, *args):   # no access log; errors are logged one line each by _error
            pass

        def _send(self, status: int, body: str, close: bool = False):
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, close: bool = False):
            service.rejected += 1
            msg = " ".join(str(message).split())[:500]
            body = {"error": msg}
            where = f"{self.command} {self.path}"
            if status >= 500:   # a server-side failure: an id the client can quote and the operator can grep
                body["request_id"] = uuid.uuid4().hex[:16]
                where += f" request {body['request_id']}"
            try:
                log.write(f"molmoact2-serve: {status} {where}: {msg}\n")
                log.flush()
            except Exception:  # noqa: BLE001 - logging must never take the server down
                pass
            self._send(status, json.dumps(body), close=close)

        def do_GET(self):
            if self.path.split("?")[0] in ("/health", "/healthz", "/act", "/"):
                self._send(200, json.dumps(service.health()))
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            if self.path.split("?")[0] != "/act":
                self._drain()
                return self._error(404, f"no route {self.path}", close=True)
            length = self.headers.get("Content-Length")
            if length is None:
                return self._error(411, "Content-Length required", close=True)
            try:
                n = int(length)
                if n < 0:
                    raise ValueError
            except ValueError:
                return self._error(400, f"bad Content-Length {length!r}", close=True)
            if n > max_body:
                if n <= 4 * max_body:   # drain moderately sized bodies so the client reads the 413 cleanly
                    self._drain(n)
                return self._error(413, f"request body of {n} bytes exceeds the {max_body}-byte limit", close=True)
            try:
                body = self.rfile.read(n)
            except OSError as e:
                return self._error(400, f"could not read the body ({e})", close=True)
            if len(body) != n:
                return self._error(400, "truncated body", close=True)
            try:
                payload = loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                return self._error(400, f"bad JSON: {e}")
            except (WireError, RecursionError) as e:
                return self._error(400, f"bad array: {e}")
            try:
                resp = service.act(payload)
            except RequestError as e:
                return self._error(e.status, e.message)
            except Exception as e:  # noqa: BLE001 - inference failure: 500, keep serving
                return self._error(500, f"inference failed: {type(e).__name__}: {e}")
            service.served += 1
            self._send(200, dumps(resp))

        def _drain(self, n=None):
            if n is None:
                try:
                    n = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    return
            n = min(n, 4 * max_body)
            while n > 0:
                chunk = self.rfile.read(min(n, 1 << 20))
                if not chunk:
                    break
                n -= len(chunk)

    return Handler


class PortError(OSError):
    """The address cannot be listened on; the message names host, port and the fix."""


def bind(host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """Binds and listens on (host, port) with no handler yet (`attach` sets it once the policy is loaded), so a
    port in use fails in a second, not after the model load. Connections made meanwhile wait in the backlog."""
    if isinstance(port, bool) or not 0 <= int(port) <= 65535:
        raise PortError(f"--port {port}: expected 0..65535 (0 picks a free port)")
    try:
        server = ThreadingHTTPServer((host, port), BaseHTTPRequestHandler)
    except socket.gaierror as e:
        raise PortError(f"--host {host}: cannot resolve it ({e.strerror}); use 127.0.0.1 (this machine only) or "
                        f"0.0.0.0 (all interfaces)") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            why = (f"port {port} on {host} is already in use (another molmoact2-serve?); stop that process or "
                   f"choose another port with --port N (--port 0 picks a free one)")
        elif e.errno == errno.EACCES:
            why = f"port {port} on {host}: permission denied (ports below 1024 need privileges); use --port 1024..65535"
        elif e.errno == errno.EADDRNOTAVAIL:
            why = (f"--host {host}: not an address of this machine; use 127.0.0.1 (this machine only) or 0.0.0.0 "
                   f"(all interfaces)")
        else:
            why = f"cannot listen on {host}:{port} ({e.strerror or e})"
        raise PortError(why) from None
    server.daemon_threads = True
    return server


def attach(server: ThreadingHTTPServer, service: PolicyService, max_request_bytes: int = 32 << 20,
           log=sys.stderr) -> ThreadingHTTPServer:
    server.RequestHandlerClass = make_handler(service, max_request_bytes, log)
    return server


def make_server(service: PolicyService, host: str = "127.0.0.1", port: int = 8000,
                max_request_bytes: int = 32 << 20, log=sys.stderr) -> ThreadingHTTPServer:
    return attach(bind(host, port), service, max_request_bytes, log)


LISTENING = "molmoact2-serve: listening on "


class ServerProcess:
    """`molmoact2-serve` in a subprocess on a port it picks itself (--port 0, so nothing can take the port
    between choosing and binding it); stdout and stderr are drained by threads into `output` / `errors` (lists of
    lines), so a talkative server never blocks on a full pipe."""

    def __init__(self, checkpoint, *args, timeout: float = 300.0, env=None, cwd=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "molmoact2_jax.cli.serve", "--checkpoint",
                                      str(checkpoint), "--port", "0", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        self.output: list = []
        self.errors: list = []
        started: queue.Queue = queue.Queue()   # stdout lines, watched until the listening line

        def drain(stream, sink, notify=None):
            for line in stream:
                sink.append(line)
                if notify is not None:
                    notify.put(line)

        threading.Thread(target=drain, args=(self.proc.stdout, self.output, started), daemon=True).start()
        threading.Thread(target=drain, args=(self.proc.stderr, self.errors), daemon=True).start()
        self.url = None
        deadline = time.monotonic() + timeout
        while self.url is None:
            if time.monotonic() > deadline or (self.proc.poll() is not None and started.empty()):
                self.stop()
                raise RuntimeError("policy server did not start:\n" + "".join(self.output + self.errors))
            try:
                line = started.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith(LISTENING):
                self.url = line[len(LISTENING):].split()[0]

    def stop(self, timeout: float = 20.0):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def warmup(service: PolicyService):
    """One prediction on dummy inputs per default tag so the first real request does not pay compilation."""
    tag = service.default_tag
    if tag is None:
        return
    info = service.policy.tags[tag]
    n = len(service.policy.expected_cameras(info)) or 1
    imgs = [np.zeros((224, 224, 3), np.uint8)] * n
    service.policy.predict_action(imgs, "warm up", np.zeros(info.state_dim), tag, mode=service.mode,
                                  think=service.think, seed=0)
