"""Numbers that cannot hurt a robot, and serving / export that refuse bad input:

* norm stats with NaN/inf, a flipped range or a negative std are refused at load, naming tag, key, stat and dim;
* a model that produces NaN: `Policy.predict_action` raises, `/act` answers 500 with a request id and no actions,
  the client raises; nothing non-finite is returned anywhere;
* the cameras of a request must be those the checkpoint was trained with (count, and names for a dict);
* molmoact2-serve checks its port before it loads anything;
* a run directory resolves to its newest complete step (locally and on gs://); an incomplete checkpoint (no
  manifest.ocdbt) is one error naming the path;
* export-hf refuses a checkpoint without its assets, or takes them as flags.

The checkpoints are tiny and made with `testing.quick_params` (no compile of the model's init); only the NaN model's
forward is compiled, once per module.
"""
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import ml_collections
import numpy as np
import pytest

from data_pipelines.norm_stats import NormStats, NormStatsError
from molmoact2_jax import storage
from molmoact2_jax.checkpoint_io import params as params_io
from molmoact2_jax.checkpoint_io.steps import resolve_checkpoint
from molmoact2_jax.convert import molmoact2_hf
from molmoact2_jax.inference import testing as T
from molmoact2_jax.inference.client import PolicyClient, PolicyServerError, dumps, loads
from molmoact2_jax.inference.errors import NonFiniteActionError
from molmoact2_jax.inference.policy import Policy
from molmoact2_jax.inference.server import PolicyService, make_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = np.array([0.3, -0.2, 0.1, 0.0, 0.5, -0.4, 0.03], np.float32)
IMGS = T.random_images(2, hw=(32, 32), seed=1)


# ----------------------------------------------------------------------------------------------- norm stats
@pytest.mark.parametrize("key,stat,value,expect", [
    ("action_stats", "q01", float("nan"), "action_stats.q01[2] (joint_2) is nan: norm stats must be finite"),
    ("state_stats", "std", float("inf"), "state_stats.std[2] (joint_2) is inf"),
    ("action_stats", "mean", float("-inf"), "action_stats.mean[2] (joint_2) is -inf"),
    ("action_stats", "q01", 5.0, "action_stats.q01[2] (joint_2) = 5 > q99[2]"),
    ("state_stats", "min", 5.0, "state_stats.min[2] (joint_2) = 5 > max[2]"),
    ("state_stats", "std", -1.0, "state_stats.std[2] (joint_2) = -1 is negative"),
])
def test_bad_norm_stats_are_refused_at_load(tmp_path, key, stat, value, expect):
    stats = T.norm_stats()
    stats["metadata_by_tag"][T.TAG][key][stat][2] = value
    path = tmp_path / "norm_stats.json"
    path.write_text(json.dumps(stats))   # json writes NaN / Infinity, and reads them back as floats
    with pytest.raises(NormStatsError) as e:
        NormStats.load(str(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: metadata_by_tag['{T.TAG}'].") and expect in msg, msg
    assert "molmoact2-data stats" in msg
    NormStats.load(T.norm_stats())   # the untouched stats load


# ----------------------------------------------------------------------------------------------- a NaN model
@pytest.fixture(scope="module")
def nan_ckpt(tmp_path_factory):
    return T.quick_checkpoint(str(tmp_path_factory.mktemp("nan") / "ckpt"), nan_expert=True)


@pytest.fixture(scope="module")
def nan_policy(nan_ckpt):
    return Policy.load(nan_ckpt)


def test_policy_refuses_non_finite_actions(nan_policy):
    with pytest.raises(NonFiniteActionError, match="non-finite actions .*refusing to return them"):
        nan_policy.predict_action(IMGS, "pick up the block", STATE, T.TAG, seed=0, num_steps=2)


@pytest.fixture(scope="module")
def nan_server(nan_policy):
    log = io.StringIO()
    server = make_server(PolicyService(nan_policy, T.TAG, num_steps=2), "127.0.0.1", 0, log=log)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", log
    server.shutdown()
    server.server_close()


def _post(url, payload):
    req = urllib.request.Request(url + "/act", data=dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, loads(r.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def test_server_answers_500_with_a_request_id_and_no_actions(nan_server):
    url, log = nan_server
    start = len(log.getvalue())
    status, body = _post(url, {"images": IMGS, "instruction": "pick", "state": STATE, "seed": 0})
    assert status == 500 and "actions" not in body and "non-finite actions" in body["error"], body
    rid = body["request_id"]
    lines = [line for line in log.getvalue()[start:].splitlines() if line.strip()]
    assert len(lines) == 1 and f"request {rid}" in lines[0] and lines[0].startswith("molmoact2-serve: 500 POST /act")
    assert "Traceback" not in log.getvalue()
    with pytest.raises(PolicyServerError) as e:   # the client: an error naming the request, never the actions
        PolicyClient(url).act(images=IMGS, instruction="pick", state=STATE, seed=0)
    assert e.value.status == 500 and e.value.request_id and e.value.request_id in str(e.value)
    # the server keeps serving: health still answers
    with urllib.request.urlopen(url + "/health", timeout=30) as r:
        assert json.loads(r.read())["status"] == "ok"


# ----------------------------------------------------------------------------------------------- cameras
def test_cameras_must_match_the_checkpoint(nan_policy, nan_server):
    """The tag was trained with cameras cam0, cam1 (fixed order): one camera, an unknown name or a missing one is
    refused naming expected vs given (no model call: these fail in validation); a dict is put in the tag's order."""
    tag = nan_policy.tag(T.TAG)
    with pytest.raises(ValueError, match=r"expects 2 images \(observation.images.cam0, observation.images.cam1\), "
                                         r"got 1"):
        nan_policy.predict_action(IMGS[:1], "pick", STATE, T.TAG)
    with pytest.raises(ValueError, match=r"trained with cameras \['observation.images.cam0', "
                                         r"'observation.images.cam1'\].*got \['cam0', 'wrist'\]: unknown \['wrist'\]; "
                                         r"missing \['observation.images.cam1'\]"):
        nan_policy.predict_action({"cam0": IMGS[0], "wrist": IMGS[1]}, "pick", STATE, T.TAG)
    with pytest.raises(ValueError, match=r"missing \['observation.images.cam1'\]"):
        nan_policy.check_images({"cam0": IMGS[0]}, tag)
    ordered = nan_policy.check_images({"observation.images.cam1": IMGS[1], "cam0": IMGS[0]}, tag)
    assert all((a == b).all() for a, b in zip(ordered, nan_policy.check_images(IMGS, tag)))
    url, _ = nan_server
    for images, expect in (([IMGS[0]], "expects 2 images"), ({"cam0": IMGS[0], "cam9": IMGS[1]}, "unknown ['cam9']")):
        status, body = _post(url, {"images": images, "instruction": "pick", "state": STATE})
        assert status == 400 and expect in body["error"] and "actions" not in body, body
    status, body = _post(url, {"image": IMGS[0], "instruction": "pick", "state": STATE})
    assert status == 400 and "expects 2 images" in body["error"]


# ----------------------------------------------------------------------------------------------- the port
def _serve(*args, timeout=120):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "molmoact2_jax.cli.serve", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_port_in_use_fails_before_the_model_loads(tmp_path):
    """The checkpoint does not even exist: the port error comes first, so the port is checked before any load."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        t0 = time.perf_counter()
        r = _serve("--checkpoint", str(tmp_path / "no-such-ckpt"), "--port", str(port))
        took = time.perf_counter() - t0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0] == (f"molmoact2-serve: error: port {port} on 127.0.0.1 is already in use (another "
                        f"molmoact2-serve?); stop that process or choose another port with --port N (--port 0 picks "
                        f"a free one)")
    print(f"port-in-use refusal took {took:.1f}s")
    r = _serve("--checkpoint", str(tmp_path / "no-such-ckpt"), "--port", "70000")
    assert r.returncode == 2 and "--port 70000: expected 0..65535" in r.stderr


# ----------------------------------------------------------------------------------------------- run directories
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, nan_ckpt):
    """A trainer run directory written by the trainer's Checkpointer: steps 10 and 20 complete, step 30 without
    state/manifest.ocdbt, step 40 never committed (Orbax's temporary folder); assets in WORKDIR/assets only."""
    from molmoact2_jax.training.checkpointing import Checkpointer
    wd = tmp_path_factory.mktemp("run")
    params, cfg = params_io.load_params(nan_ckpt)
    (wd / "assets").mkdir()
    for name in ("norm_stats.json", "tokenizer.json"):
        shutil.copy(os.path.join(nan_ckpt, "assets", name), wd / "assets" / name)
    config = ml_collections.ConfigDict({"model": cfg.to_dict(), "data": {"max_cameras": 2}})
    ck = Checkpointer(str(wd), ml_collections.ConfigDict(dict(keep_last=5, keep_every=0, async_save=False)))
    for step in (10, 20, 30):
        ck.save(step, {"params": params, "step": step}, {"position": step}, config)
    ck.close()
    os.remove(wd / "checkpoints" / "30" / "state" / "manifest.ocdbt")
    shutil.copytree(wd / "checkpoints" / "20", wd / "checkpoints" / "40.orbax-checkpoint-tmp-1700000000")
    return str(wd)


def test_run_directory_resolves_to_its_newest_complete_step(run_dir, capsys):
    step20 = os.path.join(run_dir, "checkpoints", "20")
    for given in (run_dir, os.path.join(run_dir, "checkpoints")):
        assert resolve_checkpoint(given) == step20
        line = capsys.readouterr().err.strip()
        assert line == (f"{given}: a run directory; using its newest complete step 20 ({step20}); skipped newer "
                        f"incomplete step(s) 30 (no state/manifest.ocdbt)")
    assert resolve_checkpoint(step20) == step20 and capsys.readouterr().err == ""   # a step is taken as it is
    policy = Policy.load(run_dir)
    assert "using its newest complete step 20" in capsys.readouterr().err
    assert policy.max_images == 2   # the run's data.max_cameras
    out = os.path.join(os.path.dirname(run_dir), "hf-from-run")
    s = molmoact2_hf.export_hf(run_dir, out, progress=False)
    assert s["assets"] == ["norm_stats.json", "tokenizer.json"]   # from WORKDIR/assets
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "norm_stats.json", "tokenizer.json"]


def test_eval_takes_a_run_directory(run_dir, tmp_path, capsys):
    """molmoact2-eval --checkpoint WORKDIR: the step is resolved first (named on stderr), then the checkpoint is
    checked against the simulator (this tiny 7-D arm does not fit MetaWorld's 4-D actions: exit 2)."""
    os.environ.setdefault("MUJOCO_GL", "egl")   # before anything imports mujoco
    from molmoact2_jax.cli.eval import main as eval_main
    assert eval_main(["--checkpoint", run_dir, "--suite", "metaworld:reach-v3", "--episodes", "1",
                      "--out", str(tmp_path / "ev")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"{run_dir}: a run directory; using its newest complete step 20 "), lines
    assert lines[1].startswith("molmoact2-eval: error: ") and "predicts 7-D actions" in lines[1], lines
    assert not (tmp_path / "ev").exists()


def test_run_directory_without_a_complete_step(tmp_path, run_dir):
    wd = tmp_path / "run"
    (wd / "checkpoints").mkdir(parents=True)
    shutil.copytree(os.path.join(run_dir, "checkpoints", "30"), wd / "checkpoints" / "30")
    with pytest.raises(FileNotFoundError, match=r"a run directory with no complete checkpoint step \(its steps: 30 "
                                                r"\(no state/manifest.ocdbt\)\)"):
        Policy.load(str(wd))


def test_incomplete_checkpoint_is_one_error_naming_the_path(tmp_path, run_dir, nan_ckpt):
    step = tmp_path / "30"
    shutil.copytree(os.path.join(run_dir, "checkpoints", "30"), step)
    with pytest.raises(params_io.IncompleteCheckpointError,
                       match=f"^{step}/state/manifest.ocdbt: missing \\(an incomplete Orbax checkpoint\\)"):
        Policy.load(str(step))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(nan_ckpt, ckpt)
    os.remove(ckpt / "params" / "manifest.ocdbt")
    with pytest.raises(params_io.IncompleteCheckpointError, match=f"^{ckpt}/params/manifest.ocdbt: missing"):
        Policy.load(str(ckpt))
    with pytest.raises(params_io.IncompleteCheckpointError, match=f"^{ckpt}/params/manifest.ocdbt: missing"):
        molmoact2_hf.export_hf(str(ckpt), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_run_directory_on_a_bucket(gcs, run_dir, capsys):
    """gs://: the newest step without Orbax's commit marker is passed over as not committed."""
    import uuid
    bucket = gcs.create_bucket(f"run-{uuid.uuid4().hex[:10]}")
    storage.copy_tree(run_dir, f"{bucket}/run")
    storage.as_path(f"{bucket}/run/checkpoints/20/commit_success.txt").unlink()
    got = resolve_checkpoint(f"{bucket}/run")
    assert got == f"{bucket}/run/checkpoints/10"
    assert "skipped newer incomplete step(s) 30 (no state/manifest.ocdbt), 20 (not committed)" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- export assets
def test_export_refuses_missing_assets_or_takes_them_as_flags(tmp_path, nan_ckpt):
    bare = tmp_path / "bare"
    shutil.copytree(nan_ckpt, bare, ignore=shutil.ignore_patterns("assets"))
    out = tmp_path / "hf"
    with pytest.raises(molmoact2_hf.ConversionError, match="no norm_stats.json .*--norm-stats PATH"):
        molmoact2_hf.export_hf(str(bare), str(out), progress=False)
    norm = os.path.join(nan_ckpt, "assets", "norm_stats.json")
    with pytest.raises(molmoact2_hf.ConversionError, match="no tokenizer.json / tokenizer.model .*--tokenizer PATH"):
        molmoact2_hf.export_hf(str(bare), str(out), progress=False, norm_stats=norm)
    assert not out.exists()
    bad = tmp_path / "nan_stats.json"
    stats = json.loads(open(norm).read())
    stats["metadata_by_tag"][T.TAG]["action_stats"]["q99"][0] = float("nan")
    bad.write_text(json.dumps(stats))
    with pytest.raises(NormStatsError, match=r"action_stats.q99\[0\] \(joint_0\) is nan"):
        molmoact2_hf.export_hf(str(bare), str(out), progress=False, norm_stats=str(bad),
                               tokenizer=os.path.join(nan_ckpt, "assets", "tokenizer.json"))
    # a discrete-only model also needs its OpenFAST folder
    cfg = json.loads((bare / "model_config.json").read_text())
    cfg["use_action_expert"], cfg["action_mode"] = False, "discrete"
    (bare / "model_config.json").write_text(json.dumps(cfg))
    tok = os.path.join(nan_ckpt, "assets", "tokenizer.json")
    with pytest.raises(molmoact2_hf.ConversionError, match="OpenFAST action tokenizer .*--openfast PATH"):
        molmoact2_hf.export_hf(str(bare), str(out), progress=False, norm_stats=norm, tokenizer=tok)
    assert not out.exists()
    # given as flags, they land where the loaders look
    fast = tmp_path / "fast"
    T.fit_openfast(horizon=8).save(str(fast))
    cfg["use_action_expert"], cfg["action_mode"] = True, "both"
    (bare / "model_config.json").write_text(json.dumps(cfg))
    s = molmoact2_hf.export_hf(str(bare), str(out), progress=False, norm_stats=norm, tokenizer=tok, openfast=str(fast))
    assert s["assets"] == ["action_tokenizer", "norm_stats.json", "tokenizer.json"]
    assert (out / "action_tokenizer" / "processor_config.json").is_file()
    assert json.loads((out / "norm_stats.json").read_text()) == json.loads(open(norm).read())
