"""HTTP policy server in a real subprocess: 200 requests (180 good in DROID / YAM / generic / plain-list forms,
20 malformed) from 4 client threads; every good one answered, every bad one a 4xx with one stderr line, and the
server still healthy afterwards. Plus the json_numpy codec."""
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from molmoact2_jax.inference import testing as T
from molmoact2_jax.inference.client import PolicyClient, PolicyServerError, WireError, decode_array, dumps, \
    encode_array, loads
from molmoact2_jax.inference.server import ServerProcess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BI = "tiny_bimanual"


def test_json_numpy_codec():
    for a in (np.arange(12, dtype=np.uint8).reshape(2, 2, 3), np.linspace(0, 1, 5, dtype=np.float32),
              np.array([[True, False]]), np.zeros((0, 3), "<i8"), np.array(3.5)):
        b = loads(dumps({"x": a}))["x"]
        assert b.dtype == a.dtype and b.shape == a.shape and (b == a).all()
    enc = encode_array(np.ones((2, 3), np.float32))
    assert set(enc) == {"__numpy__", "dtype", "shape"} and enc["dtype"] == "<f4" and enc["shape"] == [2, 3]
    bad = [dict(enc, dtype="|O"), dict(enc, dtype="nope"), dict(enc, shape=[2, 4]), dict(enc, shape=[-1, 6]),
           dict(enc, __numpy__="***"), dict(enc, shape="2,3"), dict(enc, dtype="<U4")]
    for b in bad:
        with pytest.raises(WireError):
            decode_array(b)


def start_server(ckpt, *args):
    """Starts molmoact2-serve on `ckpt` on a port it picks; returns (url, process, stderr lines)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = ServerProcess(ckpt, *args, timeout=180, env=env, cwd=REPO)
    return server.url, server, server.errors


@pytest.fixture(scope="module")
def served_checkpoint(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("serve"))
    cfg, params, stats, tok, fast = T.make_parts(d)
    bi = T.norm_stats(tag=BI, action_dim=14, state_dim=14, num_cameras=3, horizon=8, n_action_steps=8, seed=1)
    stats["metadata_by_tag"].update(bi["metadata_by_tag"])
    return T.save_checkpoint(os.path.join(d, "ckpt"), cfg, params, stats, os.path.join(d, "tokenizer.json"), fast)


@pytest.fixture(scope="module")
def server(served_checkpoint):
    ckpt = served_checkpoint
    url, proc, errors = start_server(ckpt, "--norm-tag", T.TAG, "--max-request-mb", "1", "--num-steps", "4")
    yield url, proc, errors
    proc.stop()


@pytest.mark.parametrize("recipe", ["pretrain.py:tiny", "posttrain.py:tiny"])
def test_checkpoint_of_a_synthetic_run_serves(tmp_path, recipe):
    """A run on synthetic data writes its assets (norm stats, tokenizer, OpenFAST) into every step directory."""
    wd = str(tmp_path / "run")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-m", "molmoact2_jax.cli.train", f"--config={REPO}/configs/{recipe}",
                        f"--workdir={wd}", "--config.total_steps=2", "--config.trainer.eval_every_steps=0"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    step = os.path.join(wd, "checkpoints", "2")
    assert sorted(os.listdir(os.path.join(step, "assets"))) == ["norm_stats.json", "openfast", "tokenizer.json"]
    url, proc, errors = start_server(step)
    try:
        payload = {"image": np.zeros((64, 64, 3), np.uint8), "instruction": "move to the square",
                   "state": np.zeros(1, np.float32)}
        status, body = post_raw(url, dumps(payload).encode())
        assert status == 200, body + "".join(errors)
        reply = loads(body)
        actions = np.asarray(reply["actions"])
        assert actions.ndim == 2 and actions.shape[1] == 4 and np.isfinite(actions).all()
    finally:
        proc.stop()


def post_raw(url, body: bytes, path="/act", headers=None):
    req = urllib.request.Request(url + path, data=body, method="POST",
                                 headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def good_requests(n):
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 256, (int(rng.integers(24, 80)), int(rng.integers(24, 80)), 3), np.uint8)
    out = []
    for i in range(n):
        kind = i % 4
        state7 = rng.uniform(-1, 1, 7).astype(np.float32)
        if kind == 0:    # DROID keys, default tag
            p = {"external_cam": img(), "wrist_cam": img(), "instruction": "put the cup on the plate",
                 "state": state7, "timestamp": time.time(), "enable_cuda_graph": True}
            shape = (5, 7)
        elif kind == 1:  # YAM keys + normalization_tag
            p = {"top_cam": img(), "left_cam": img(), "right_cam": img(), "instruction": "fold the towel",
                 "state": rng.uniform(-1, 1, 14).astype(np.float32), "normalization_tag": BI}
            shape = (8, 14)
        elif kind == 2:  # generic images list + tag + n_action_steps
            p = {"images": [img(), img()], "task": "open the drawer", "state": state7, "tag": T.TAG,
                 "n_action_steps": 3, "seed": 4}
            shape = (3, 7)
        else:            # plain nested lists (no json_numpy)
            p = {"images": [img().tolist(), img().tolist()], "instruction": "stack blocks",
                 "state": state7.tolist(), "norm_tag": T.TAG}
            shape = (5, 7)
        out.append((dumps(p).encode(), shape))
    return out


def bad_requests(url):
    s7 = np.zeros(7, np.float32)
    ok = {"images": [np.zeros((32, 32, 3), np.uint8)] * 2, "instruction": "pick", "state": s7}
    enc = lambda **kw: dumps({**ok, **kw}).encode()
    return [
        ("bad json", b"{not json", "/act", 400),
        ("not an object", b"[1, 2, 3]", "/act", 400),
        ("missing state", dumps({k: v for k, v in ok.items() if k != "state"}).encode(), "/act", 400),
        ("wrong state size", enc(state=np.zeros(8, np.float32)), "/act", 400),
        ("unknown tag", enc(norm_tag="franka_droid"), "/act", 400),
        ("int32 image", enc(images=[np.zeros((8, 8, 3), np.int32)] * 2), "/act", 400),
        ("rank-2 image", enc(images=[np.zeros((8, 8), np.uint8)] * 2), "/act", 400),
        ("three images", enc(images=[np.zeros((8, 8, 3), np.uint8)] * 3), "/act", 400),
        ("missing instruction", dumps({k: v for k, v in ok.items() if k != "instruction"}).encode(), "/act", 400),
        ("object dtype", json.dumps({**json.loads(dumps(ok)), "state": {"__numpy__": base64.b64encode(
            b"x" * 56).decode(), "dtype": "|O", "shape": [7]}}).encode(), "/act", 400),
        ("byte count mismatch", json.dumps({**json.loads(dumps(ok)), "state": {"__numpy__": base64.b64encode(
            b"x" * 12).decode(), "dtype": "<f4", "shape": [7]}}).encode(), "/act", 400),
        ("bad base64", json.dumps({**json.loads(dumps(ok)), "state": {"__numpy__": "%%%", "dtype": "<f4",
                                                                       "shape": [7]}}).encode(), "/act", 400),
        ("ragged list", enc(images=[[[1, 2, 3], [4, 5]]] * 2), "/act", 400),
        ("no images", dumps({"instruction": "pick", "state": s7}).encode(), "/act", 400),
        ("YAM partial", dumps({"top_cam": np.zeros((8, 8, 3), np.uint8), "instruction": "x", "state": s7,
                               "normalization_tag": BI}).encode(), "/act", 400),
        ("bad num_steps", enc(num_steps=-3), "/act", 400),
        ("too large", b"{" + b" " * (2 << 20) + b"}", "/act", 413),
        ("wrong route", enc(), "/predict", 404),
        ("nan state", enc(state=np.full(7, np.nan, np.float32)), "/act", 400),
        ("bad mode", enc(mode="both"), "/act", 400),
    ]


def test_server_200_requests_with_20_malformed(server):
    url, proc, errors = server
    client = PolicyClient(url)
    assert client.health()["status"] == "ok"
    for route in ("/healthz", "/act"):
        with urllib.request.urlopen(url + route, timeout=30) as r:
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    # warm the two compiled shapes once (2 and 3 cameras)
    a = client.act(images=[np.zeros((40, 40, 3), np.uint8)] * 2, instruction="pick", state=np.zeros(7))
    assert a.shape == (5, 7) and a.dtype == np.float32
    n_err_before = len(errors)
    good = good_requests(180)
    bad = bad_requests(url)
    assert len(bad) == 20
    jobs = [("good", g) for g in good]
    for i, b in enumerate(bad):
        jobs.insert(i * 9 + 3, ("bad", b))
    assert len(jobs) == 200

    def run(job):
        kind, item = job
        if kind == "good":
            body, shape = item
            status, text = post_raw(url, body)
            return kind, shape, status, text
        name, body, path, want = item
        try:
            status, text = post_raw(url, body, path)
        except (ConnectionError, urllib.error.URLError) as e:   # 413 must still be readable: fail loudly
            status, text = -1, repr(e)
        return kind, (name, want), status, text

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(run, jobs))
    for kind, info, status, text in results:
        if kind == "good":
            assert status == 200, text
            resp = loads(text)
            assert resp["actions"].shape == info and resp["actions"].dtype == np.float32
            assert np.isfinite(resp["actions"]).all() and resp["dt_ms"] > 0
        else:
            name, want = info
            assert status == want, (name, status, text)
            assert "error" in json.loads(text), name
    time.sleep(0.5)
    assert proc.proc.poll() is None
    assert client.health()["status"] == "ok"
    new_errors = errors[n_err_before:]
    assert len(new_errors) == 20, new_errors
    assert all(line.startswith("molmoact2-serve: 4") for line in new_errors)
    # the client raises with the server's message
    with pytest.raises(PolicyServerError, match="unknown norm tag"):
        client.act(images=[np.zeros((8, 8, 3), np.uint8)] * 2, instruction="x", state=np.zeros(7), norm_tag="nope")


def test_replies_equal_policy_predict_action(server, served_checkpoint):
    """The actions of /act are Policy.predict_action's on the same observation and seed (or explicit noise)."""
    from molmoact2_jax.inference.policy import Policy
    url = server[0]
    policy = Policy.load(served_checkpoint)
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(2)]
    state = rng.uniform(-1, 1, 7).astype(np.float32)
    noise = rng.standard_normal((8, 32)).astype(np.float32)
    prev = rng.uniform(-1, 1, (6, 7)).astype(np.float32)
    cases = [dict(seed=0), dict(seed=11, n_action_steps=3), dict(seed=5, mode="discrete"),
             dict(seed=2, n_action_steps=8, prev_chunk=prev, inference_delay=2, execution_horizon=5), dict(noise=noise)]
    for extra in cases:
        payload = {"images": imgs, "instruction": "open the drawer", "state": state, "tag": T.TAG, **extra}
        status, body = post_raw(url, dumps(payload).encode())
        assert status == 200, body
        got = np.asarray(loads(body)["actions"])
        kw = {k: v for k, v in extra.items() if k != "mode"}
        want = policy.predict_action(imgs, "open the drawer", state, T.TAG, mode=extra.get("mode", "continuous"),
                                     num_steps=4, **kw).actions
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=str(list(extra)))
        if "prev_chunk" in extra:   # real-time chunking: the delay's actions are the previous chunk's
            np.testing.assert_array_equal(got[:2], prev[:2])
    again = np.asarray(loads(post_raw(url, dumps(payload).encode())[1])["actions"])
    np.testing.assert_array_equal(again, got)  # explicit noise: reproducible
    bad = dict(payload, noise=np.zeros((3, 32), np.float32))
    status, body = post_raw(url, dumps(bad).encode())
    assert status == 400 and "noise" in body
    for bad, word in ((dict(payload, prev_chunk=prev[:, :5]), "prev_chunk has shape"),
                      (dict(payload, prev_chunk=prev, inference_delay=7), "inference_delay=7"),
                      (dict(payload, inference_delay=1), "need prev_chunk"),
                      (dict(payload, prev_chunk=prev, mode="discrete"), "needs the flow head")):
        status, body = post_raw(url, dumps(bad).encode())
        assert status == 400 and word in body, (word, body)
