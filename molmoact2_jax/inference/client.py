"""Client for the MolmoAct2 HTTP policy server, and the json_numpy wire codec both sides use.

Wire format (what the reference clients send; docs/serving.md): the body is JSON in which every numpy array is
`{"__numpy__": <base64 of the raw C-order bytes>, "dtype": "<f4" | "|u1" | ..., "shape": [...]}`. No pickle.

    client = PolicyClient("http://127.0.0.1:8000")
    actions = client.act(images=[ext, wrist], instruction="put the cup on the plate", state=q, norm_tag="franka_droid")
"""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import numpy as np

ALLOWED_KINDS = "biuf"   # bool, int, uint, float: never object / void / string arrays
MAX_NDIM = 8


class WireError(ValueError):
    """A malformed json_numpy payload."""


def encode_array(arr) -> dict:
    a = np.asarray(arr)
    if not a.flags.c_contiguous:   # (ascontiguousarray would turn 0-d arrays into 1-d ones)
        a = np.ascontiguousarray(a)
    if a.dtype.kind not in ALLOWED_KINDS:
        raise WireError(f"cannot send arrays of dtype {a.dtype}")
    return {"__numpy__": base64.b64encode(a.tobytes()).decode("ascii"), "dtype": a.dtype.str,
            "shape": list(a.shape)}


def decode_array(d: dict) -> np.ndarray:
    """{"__numpy__", "dtype", "shape"} -> array, validated (dtype kind, shape, byte count)."""
    try:
        dtype = np.dtype(d.get("dtype"))
    except (TypeError, ValueError):
        raise WireError(f"bad array dtype {d.get('dtype')!r}") from None
    if dtype.kind not in ALLOWED_KINDS or dtype.hasobject:
        raise WireError(f"array dtype {dtype} not allowed (bool, int, uint or float only)")
    shape = d.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise WireError(f"bad array shape {shape!r}")
    data = d.get("__numpy__")
    if not isinstance(data, str):
        raise WireError("array data must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (ValueError, TypeError):
        raise WireError("array data is not valid base64") from None
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.itemsize != len(raw):
        raise WireError(f"array of shape {shape} and dtype {dtype} needs {count * dtype.itemsize} bytes, "
                        f"got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape)).copy()


def _hook(d):
    return decode_array(d) if "__numpy__" in d else d


def _default(obj):
    if isinstance(obj, np.ndarray):
        return encode_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps(obj) -> str:
    """JSON with numpy arrays json_numpy-encoded."""
    return json.dumps(obj, default=_default)


def loads(text):
    """JSON with json_numpy arrays decoded (raises WireError / json.JSONDecodeError on bad input)."""
    return json.loads(text, object_hook=_hook)


class PolicyServerError(RuntimeError):
    """An error reply (or a reply that must not be used). `request_id`: the server's id of a 5xx, which its log
    line names too."""

    def __init__(self, status: int, message: str, request_id: str | None = None):
        super().__init__(f"HTTP {status}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.status, self.message, self.request_id = status, message, request_id


class PolicyClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 120.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _send(self, req):
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")
            rid = None
            try:
                reply = json.loads(body)
                msg, rid = reply.get("error", body), reply.get("request_id")
            except (ValueError, AttributeError):
                msg = body
            raise PolicyServerError(e.code, msg, rid) from None

    def request(self, payload: dict) -> dict:
        """POST /act with an arbitrary payload; returns the decoded response dict."""
        req = urllib.request.Request(self.url + "/act", data=dumps(payload).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
        return self._send(req)

    def act(self, images=None, instruction: str | None = None, state=None, norm_tag: str | None = None,
            **extra) -> np.ndarray:
        """images: list of HxWx3 uint8 arrays in camera order, or {camera name: image} (or pass DROID/YAM keys
        through **extra). Returns actions float32 (N, D); raises PolicyServerError for an error reply or for
        actions holding NaN/inf."""
        payload = dict(extra)
        if isinstance(images, dict):
            payload["images"] = {str(k): np.asarray(im) for k, im in images.items()}
        elif images is not None:
            payload["images"] = [np.asarray(im) for im in images]
        if instruction is not None:
            payload["instruction"] = instruction
        if state is not None:
            payload["state"] = np.asarray(state, np.float32)
        if norm_tag is not None:
            payload["norm_tag"] = norm_tag
        out = self.request(payload)
        actions = np.asarray(out["actions"], np.float32)
        if not np.isfinite(actions).all():   # a server that does not check: never hand NaN/inf to the robot
            raise PolicyServerError(200, "the reply holds non-finite actions (NaN/inf); not using them")
        return actions

    def health(self) -> dict:
        return self._send(urllib.request.Request(self.url + "/health", method="GET"))
