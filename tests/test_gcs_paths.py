"""Every read path of the stack, and the HF export writer, on `gs://` (a real GCS emulator, tests/gcs_emulator.py):
Policy.load, molmoact2-serve, molmoact2-eval, molmoact2-convert export-hf / import-hf bucket -> bucket, norm stats /
tokenizers / params metadata / a trainer step directory from a bucket, and the one-line errors (exit code 2) for a
missing `gcs` extra and a bucket that does not exist."""
import json
import os
import subprocess
import sys
import urllib.request
import uuid

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from data_pipelines.norm_stats import NormStats
from data_pipelines.pipeline.robot_dataset import Source
from molmoact2_jax import storage
from molmoact2_jax.checkpoint_io import params as params_io
from molmoact2_jax.checkpoint_io.assets import find_asset, find_norm_stats
from molmoact2_jax.convert import molmoact2_hf
from molmoact2_jax.cli import serve as server_cli
from molmoact2_jax.cli.convert import main as convert_main
from molmoact2_jax.inference import testing as T
from molmoact2_jax.inference.client import dumps, loads
from molmoact2_jax.inference.policy import Policy
from molmoact2_jax.inference.server import ServerProcess
from molmoact2_jax.tokenizers.openfast import OpenFAST
from molmoact2_jax.tokenizers.text import TextTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMGS = T.random_images(2, seed=1)
STATE = np.array([0.3, -0.2, 0.1, 0.0, 0.5, -0.4, 0.03], np.float32)
TASK = "pick up the red block"
NOISE = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
MISSING = "gs://no-such-bucket-molmoact2-test"


def eval_main(argv) -> int:
    """molmoact2-eval in this process; MUJOCO_GL is set before the evaluator imports mujoco (as test_sim_eval)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from molmoact2_jax.cli.eval import main
    return main(argv)


def _bucket(gcs, what: str) -> str:
    return gcs.create_bucket(f"{what}-{uuid.uuid4().hex[:10]}")


def _env(gcs, *first_on_path) -> dict:
    path = os.pathsep.join([*first_on_path, REPO, os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, **gcs.env, JAX_PLATFORMS="cpu", PYTHONPATH=path)


@pytest.fixture(scope="module")
def local_ckpt(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("gcs-ckpt"))
    cfg, params, stats, tok, fast = T.make_parts(d)
    return T.save_checkpoint(os.path.join(d, "ckpt"), cfg, params, stats, os.path.join(d, "tokenizer.json"), fast)


@pytest.fixture(scope="module")
def remote_ckpt(gcs, local_ckpt):
    """(bucket URI, gs:// checkpoint): the local checkpoint copied into a fresh bucket."""
    bucket = _bucket(gcs, "ckpt")
    copied = storage.copy_tree(local_ckpt, f"{bucket}/ckpt")
    assert "model_config.json" in copied and "assets/norm_stats.json" in copied
    return bucket, f"{bucket}/ckpt"


@pytest.fixture(scope="module")
def local_policy(local_ckpt):
    return Policy.load(local_ckpt)


def _act(policy, **kw):
    return policy.predict_action(IMGS, TASK, STATE, T.TAG, num_steps=4, **kw).actions


def test_policy_load_from_bucket_matches_local(remote_ckpt, local_policy):
    policy = Policy.load(remote_ckpt[1])
    assert sorted(policy.tags) == [T.TAG] and policy.action_tokenizer is not None
    np.testing.assert_array_equal(_act(policy, noise=NOISE), _act(local_policy, noise=NOISE))
    np.testing.assert_array_equal(policy.predict_action(IMGS, TASK, STATE, T.TAG, mode="discrete", seed=1).actions,
                                  local_policy.predict_action(IMGS, TASK, STATE, T.TAG, mode="discrete",
                                                              seed=1).actions)


def test_assets_and_params_metadata_from_bucket(remote_ckpt, local_ckpt):
    bucket, ckpt = remote_ckpt
    assets = f"{ckpt}/assets"
    assert find_norm_stats(ckpt) == f"{assets}/norm_stats.json"
    assert find_asset(ckpt, ["tokenizer.model", "tokenizer.json"]) == f"{assets}/tokenizer.json"
    assert find_asset(ckpt, ["sim_settings.json"]) is None
    stats = NormStats.load(f"{assets}/norm_stats.json")
    local_stats = NormStats.load(os.path.join(local_ckpt, "assets", "norm_stats.json"))
    assert stats.raw == local_stats.raw and stats.source == f"{assets}/norm_stats.json"
    text = "The task is to pick up the red block <action_start><action_3><action_end>"
    local_tok = TextTokenizer.from_file(os.path.join(local_ckpt, "assets", "tokenizer.json"))
    for src in (f"{assets}/tokenizer.json", assets):   # the file, or a folder holding tokenizer.json
        assert TextTokenizer.from_file(src).encode(text) == local_tok.encode(text)
    fast = OpenFAST.load(f"{assets}/action_tokenizer")
    chunk = np.random.default_rng(2).uniform(-1, 1, (1, 8, 7))
    assert fast.encode(chunk) == OpenFAST.load(os.path.join(local_ckpt, "assets", "action_tokenizer")).encode(chunk)
    # the params (what init_from reads): config, metadata and a sharded partial restore, straight from the bucket
    assert params_io.load_model_config(ckpt).to_dict() == params_io.load_model_config(local_ckpt).to_dict()
    meta = params_io.saved_param_metadata(ckpt)
    assert meta == params_io.saved_param_metadata(local_ckpt)
    key = next(k for k in sorted(meta) if k.startswith("action_expert/"))
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = traverse_util.unflatten_dict({tuple(key.split("/")): jax.ShapeDtypeStruct(*meta[key],
                                                                                     sharding=one_device)})
    got, want = params_io.restore_params_sharded(ckpt, target), params_io.restore_params_sharded(local_ckpt, target)
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(got)[0]), np.asarray(jax.tree.leaves(want)[0]))
    # absent files name the gs:// path in one line
    with pytest.raises(FileNotFoundError, match=f"norm stats file not found: {bucket}/nope.json"):
        NormStats.load(f"{bucket}/nope.json")
    with pytest.raises(FileNotFoundError, match=f"tokenizer file not found: {bucket}/tokenizer.json"):
        TextTokenizer.from_file(f"{bucket}/tokenizer.json")
    with pytest.raises(FileNotFoundError, match=f"OpenFAST tokenizer folder not found: {bucket}/fast"):
        OpenFAST.load(f"{bucket}/fast")
    with pytest.raises(FileNotFoundError, match=f"checkpoint directory not found: {bucket}/nockpt$"):
        Policy.load(f"{bucket}/nockpt")
    # ArrayRecord shards are not read from gs:// directly: one line saying how to mount the bucket
    with pytest.raises(ValueError, match=r"gcsfuse --implicit-dirs data-b /mnt/data-b, then pass /mnt/data-b/yam"):
        Source("gs://data-b/yam")


def test_serve_from_bucket(gcs, remote_ckpt, local_policy, tmp_path):
    server = ServerProcess(remote_ckpt[1], "--num-steps", "4", timeout=180, env=_env(gcs), cwd=str(tmp_path))
    try:
        payload = {"images": IMGS, "instruction": TASK, "state": STATE, "tag": T.TAG, "noise": NOISE}
        req = urllib.request.Request(server.url + "/act", data=dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.status == 200
            got = np.asarray(loads(r.read().decode())["actions"])
    finally:
        server.stop()
    np.testing.assert_allclose(got, _act(local_policy, noise=NOISE), rtol=1e-6, atol=1e-6)
    assert os.listdir(tmp_path) == []


def test_export_hf_bucket_to_bucket(gcs, remote_ckpt, local_ckpt, local_policy, tmp_path):
    """export-hf gs:// -> gs:// puts the complete export in the bucket (the same files as a local export) and
    writes nothing under the current directory; Policy.load reads the exported HF folder from the bucket."""
    bucket, ckpt = remote_ckpt
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = subprocess.run([sys.executable, "-m", "molmoact2_jax.cli.convert", "export-hf", ckpt, f"{bucket}/hf",
                        "--no-progress"], env=_env(gcs), cwd=str(cwd), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"-> {bucket}/hf" in r.stdout
    assert os.listdir(cwd) == [] and os.listdir(tmp_path) == ["cwd"]
    local_hf = str(tmp_path / "hf")
    molmoact2_hf.export_hf(local_ckpt, local_hf, progress=False)
    want = sorted(os.path.relpath(os.path.join(d, f), local_hf) for d, _, fs in os.walk(local_hf) for f in fs)
    got = sorted(o[len("hf/"):] for o in gcs.objects(bucket[len("gs://"):]) if o.startswith("hf/"))
    assert got == want and "model.safetensors" in got and "action_tokenizer/tokenizer.json" in got
    for name in ("model.safetensors", "config.json", "norm_stats.json"):
        assert storage.as_path(f"{bucket}/hf/{name}").read_bytes() == open(os.path.join(local_hf, name), "rb").read()
    policy = Policy.load(f"{bucket}/hf")   # an HF folder in a bucket: converted in memory from a temp copy
    np.testing.assert_allclose(_act(policy, noise=NOISE), _act(local_policy, noise=NOISE), rtol=1e-6, atol=1e-6)
    # exporting over an export is refused, naming the bucket folder
    assert convert_main(["export-hf", ckpt, f"{bucket}/hf", "--no-progress"]) == 2
    # import-hf bucket -> bucket: Orbax writes the params straight to the bucket; they are the original ones
    assert convert_main(["import-hf", f"{bucket}/hf", f"{bucket}/reimported", "--no-progress"]) == 0
    chex.assert_trees_all_equal(params_io.load_params(f"{bucket}/reimported")[0], params_io.load_params(ckpt)[0])
    assert storage.as_path(f"{bucket}/reimported/assets/action_tokenizer/tokenizer.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["cwd", "hf"]


def test_trainer_step_directory_in_a_bucket(gcs, local_ckpt, tmp_path):
    """A trainer step directory (state/ + meta/metadata, assets in WORKDIR/assets/) read from a bucket: the
    params out of the saved state, the model config, the metadata, and the run's assets."""
    params, cfg = params_io.load_params(local_ckpt)
    step = tmp_path / "run" / "checkpoints" / "3"
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(str(step / "state"), {"params": params, "step": np.int32(3)})
    (step / "meta").mkdir()
    (step / "meta" / "metadata").write_text(json.dumps({"config": {"model": json.loads(cfg.to_json())}}))
    bucket = _bucket(gcs, "run")
    storage.copy_tree(tmp_path / "run", f"{bucket}/run")
    storage.copy_tree(os.path.join(local_ckpt, "assets"), f"{bucket}/run/assets")
    remote = f"{bucket}/run/checkpoints/3"
    assert params_io.is_training_step(remote)
    got, got_cfg = params_io.load_params(remote, weights="raw")
    chex.assert_trees_all_equal(got, params)
    assert got_cfg.to_dict() == cfg.to_dict()
    assert params_io.saved_param_metadata(remote) == params_io.saved_param_metadata(local_ckpt)
    assert find_norm_stats(remote) == f"{bucket}/run/assets/norm_stats.json"


class _FakePolicy:
    """Stands in for inference.Policy in molmoact2-eval: records what it loads, holds the arm still."""
    loaded: list = []

    @classmethod
    def load(cls, path, **kw):
        cls.loaded.append(str(path))
        return cls()

    def predict_action(self, images, task, state, norm_tag, n_action_steps=5, **kw):
        return np.zeros((n_action_steps, 4), np.float32)


@pytest.mark.sim
def test_eval_from_bucket(gcs, tmp_path, monkeypatch, capsys):
    """molmoact2-eval --checkpoint gs://...: the norm stats and sim settings come from the bucket (copied to a
    temporary folder, removed afterwards); the policy loads its weights from the gs:// path itself."""
    os.environ.setdefault("MUJOCO_GL", "egl")   # before anything imports mujoco
    pytest.importorskip("metaworld")
    from molmoact2_jax import inference
    from molmoact2_jax.evaluation.config import SIM_SETTINGS_FILE, get_config, sim_settings
    monkeypatch.setattr(inference, "Policy", _FakePolicy, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    bucket = _bucket(gcs, "eval")
    ckpt = f"{bucket}/run/mw_ckpt"
    stats = T.norm_stats(tag="metaworld_sawyer", action_dim=4, state_dim=4, num_cameras=2, n_action_steps=3)
    storage.write_text(f"{ckpt}/assets/norm_stats.json", json.dumps(stats))
    settings = dict(sim_settings(get_config("metaworld", image_hw=(64, 64))), n_action_steps=3, max_steps=6)
    storage.write_text(f"{ckpt}/assets/{SIM_SETTINGS_FILE}", json.dumps(settings))
    _FakePolicy.loaded.clear()
    out = tmp_path / "out"
    assert eval_main(["--checkpoint", ckpt, "--suite", "metaworld:reach-v3", "--episodes", "1", "--out", str(out),
                      "--quiet", "--videos-per-task", "0"]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert _FakePolicy.loaded == [ckpt] and report["policy"] == "model:mw_ckpt" and report["n_action_steps"] == 3
    assert report["episodes"][0]["queries"] == 2   # max_steps 6 from the bucket's sim settings, 3 per query
    assert os.listdir(tmp_path / "tmp") == []


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bucket_that_does_not_exist(gcs, remote_ckpt, tmp_path, capsys, monkeypatch):
    ckpt = f"{MISSING}/ckpt"
    assert convert_main(["export-hf", ckpt, str(tmp_path / "out"), "--no-progress"]) == 2
    assert _one_line(capsys.readouterr().err) == f"molmoact2-convert: error: {ckpt}: no such bucket"
    assert convert_main(["export-hf", remote_ckpt[1], f"{MISSING}/out", "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{MISSING}/out: cannot write there (no such bucket)" in line
    assert server_cli.main(["--checkpoint", ckpt, "--port", "0"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == f"molmoact2-serve: error: checkpoint directory not found: {ckpt} (no such bucket)"
    assert eval_main(["--checkpoint", ckpt, "--suite", "metaworld:reach-v3", "--out", str(tmp_path / "ev")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == f"molmoact2-eval: error: checkpoint directory not found: {ckpt} (no such bucket)"
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="no such bucket"):
        Policy.load(ckpt)


BLOCK_GCS = '''import sys


class _NoCloudClients:
    """The `gcs` extra not installed: importing gcsfs or google.cloud.storage fails."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "gcsfs" or name == "google.cloud.storage" or name.startswith("google.cloud.storage."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoCloudClients())
'''


def test_missing_gcs_extra_is_one_line(gcs, tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_GCS)
    env = _env(gcs, str(site))
    ckpt = "gs://some-bucket/ckpt"
    hint = "pip install 'molmoact2-jax[gcs]'"
    probe = subprocess.run([sys.executable, "-c", "import gcsfs"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'gcsfs'" in probe.stderr   # the block works
    for cmd, prefix in (
            (["-m", "molmoact2_jax.cli.convert", "export-hf", ckpt, str(tmp_path / "out")],
             "molmoact2-convert: error: "),
            (["-m", "molmoact2_jax.cli.serve", "--checkpoint", ckpt, "--port", "0"],
             "molmoact2-serve: error: ")):
        r = subprocess.run([sys.executable, *cmd], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                           timeout=300)
        line = _one_line(r.stderr)
        assert r.returncode == 2, r.stderr
        assert line.startswith(prefix + ckpt + ": ") and hint in line and "gcsfs" in line, line
    assert sorted(os.listdir(tmp_path)) == ["site"]
    # in process: the library calls raise the same StorageError (a ValueError) naming the path
    monkeypatch.setattr(storage, "_has_module", lambda name: False)
    for load in (lambda: Policy.load(ckpt), lambda: NormStats.load(ckpt + "/norm_stats.json"),
                 lambda: TextTokenizer.from_file(ckpt + "/tokenizer.json"), lambda: OpenFAST.load(ckpt + "/fast"),
                 lambda: params_io.load_params(ckpt)):
        with pytest.raises(storage.StorageError, match=r"^gs://some-bucket/ckpt\S*: gs:// paths need .*\[gcs\]"):
            load()
    assert eval_main(["--checkpoint", ckpt, "--suite", "metaworld:reach-v3", "--out", str(tmp_path / "ev")]) == 2
    assert hint in _one_line(capsys.readouterr().err)


def test_relative_local_paths(local_ckpt, monkeypatch):
    """Relative local paths resolve against the current directory (never taken for URIs)."""
    monkeypatch.chdir(os.path.dirname(local_ckpt))
    assert find_norm_stats("ckpt") == os.path.join(local_ckpt, "assets", "norm_stats.json")
    assert json.loads(storage.as_path("ckpt/model_config.json").read_text())["llm"]
    assert not storage.is_remote("ckpt") and storage.is_remote("gs://b/ckpt")


def test_train_refuses_unusable_run_directories_in_one_line(gcs, tmp_path):
    """molmoact2-train: a bucket that does not exist, a folder that cannot be written (in /proc), and gs:// without
    the `gcs` extra: one line naming the path, exit 2, before any compile, nothing written."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_GCS)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    recipe = ["--config=" + os.path.join(REPO, "configs", "pretrain.py") + ":tiny", "--config.total_steps=1"]
    cases = [(f"{MISSING}/run", _env(gcs), "cannot write there (no such bucket)"),
             ("/proc/molmoact2-run", _env(gcs), "cannot write there"),
             ("gs://some-bucket/run", _env(gcs, str(site)), "pip install 'molmoact2-jax[gcs]'")]
    for workdir, env, expect in cases:
        r = subprocess.run([sys.executable, "-m", "molmoact2_jax.cli.train", f"--workdir={workdir}", *recipe], env=env,
                           cwd=str(cwd), capture_output=True, text=True, timeout=300)
        line = _one_line(r.stderr)
        assert r.returncode == 2 and line.startswith(f"molmoact2-train: error: {workdir}: ") and expect in line, \
            r.stderr
    assert os.listdir(cwd) == [] and not os.path.exists("/proc/molmoact2-run")
