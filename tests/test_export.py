"""molmoact2-export: ONNX and StableHLO exports of the continuous policy, the jax-free runtime, serving an export,
the parity gate, and bad input."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from molmoact2_jax.cli import export as export_cli
from molmoact2_jax.export.check import random_observation
from molmoact2_jax.inference import testing as T
from molmoact2_jax.inference.policy import Policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DELTA_DIMS = [0, 1, 2]
BLOCK_HEAVY = textwrap.dedent("""
    import sys
    class _NoHeavy:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("jax", "jaxlib", "flax", "optax", "orbax", "chex", "torch"):
                raise ImportError(f"{name} is not installed here")
    sys.meta_path.insert(0, _NoHeavy())
""")


def _checkpoint(d, variant):
    """A random model of `variant` with a delta-action tag of two cameras (norm_stats' delta_action_dims)."""
    cfg, params, stats, tok, _ = T.make_parts(str(d), variant, num_cameras=2)
    stats["metadata_by_tag"][T.TAG]["delta_action_dims"] = DELTA_DIMS
    return T.save_checkpoint(str(d / "ckpt"), cfg, params, stats, str(d / "tokenizer.json"))


def _observations(policy, n, seed=0):
    tag = policy.tag(T.TAG)
    rng = np.random.default_rng(seed)
    return [random_observation(tag, 2, tag.horizon, 32, rng) for _ in range(n)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """variant -> (checkpoint, ONNX export folder), each made once per module."""
    made = {}

    def get(variant):
        if variant not in made:
            d = tmp_path_factory.mktemp(f"onnx_{variant}")
            ckpt = _checkpoint(d, variant)
            out = str(d / "export")
            assert export_cli.main(["--checkpoint", ckpt, "--format", "onnx", "--out", out]) == 0
            made[variant] = ckpt, out
        return made[variant]
    return get


@pytest.fixture(params=["tiny", "small"])
def onnx_export(request, exports):
    return exports(request.param)


def test_onnx_export_runs_without_jax_and_equals_policy(onnx_export, tmp_path):
    ckpt, out = onnx_export
    policy = Policy.load(ckpt)
    obs = _observations(policy, 4)
    ref = [policy.predict_action(o["images"], o["task"], o["state"], T.TAG, noise=o["noise"]) for o in obs]
    np.savez(tmp_path / "obs.npz", **{f"{k}{i}_{j}" if k == "images" else f"{k}{i}": v
                                      for i, o in enumerate(obs) for k, vals in o.items()
                                      for j, v in (enumerate(vals) if k == "images" else [(0, vals)])})
    script = BLOCK_HEAVY + textwrap.dedent(f"""
        import numpy as np
        from molmoact2_jax.runtime import OnnxPolicy
        z = np.load({str(tmp_path / "obs.npz")!r})
        pol = OnnxPolicy.load({out!r})
        res = {{}}
        for i in range({len(obs)}):
            images = [z[f"images{{i}}_{{j}}"] for j in range(2)]
            r = pol.predict_action(images, str(z[f"task{{i}}"]), z[f"state{{i}}"], {T.TAG!r}, noise=z[f"noise{{i}}"])
            res[f"a{{i}}"], res[f"n{{i}}"] = r.actions, r.normalized_actions
        assert "jax" not in sys.modules and "torch" not in sys.modules
        np.savez({str(tmp_path / "out.npz")!r}, **res)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    tag = policy.tag(T.TAG)
    span = tag.action_stats.max - tag.action_stats.min
    worst = 0.0
    for i, r in enumerate(ref):
        assert got[f"a{i}"].shape == r.actions.shape
        np.testing.assert_allclose(got[f"n{i}"], r.normalized_actions, atol=1e-5, rtol=0)
        worst = max(worst, float(np.max(np.abs(got[f"a{i}"] - r.actions) / span)))
    print("worst |diff| / action range:", worst)
    assert worst <= 1e-4


def test_parity_gate_passes_then_fails_on_a_tampered_weight(exports, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper
    ckpt, out = exports("tiny")
    assert export_cli.main(["check", out, "--checkpoint", ckpt, "--observations", "2"]) == 0
    table = capsys.readouterr().out
    assert "PASS" in table and "cosine" in table
    tampered = str(tmp_path / "tampered")
    import shutil
    shutil.copytree(out, tampered)
    model = onnx.load(os.path.join(tampered, "flow.onnx"))
    big = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.data_type == onnx.TensorProto.FLOAT
              else 0)
    arr = numpy_helper.to_array(big).copy()
    arr.flat[0] += 0.5
    big.CopyFrom(numpy_helper.from_array(arr, big.name))
    onnx.save_model(model, os.path.join(tampered, "flow.onnx"))
    assert export_cli.main(["check", tampered, "--checkpoint", ckpt, "--observations", "2"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_stablehlo_symbolic_batch_runs_batch_1_and_3_equal_to_policy(tmp_path):
    from molmoact2_jax.runtime import StableHLOPolicy, load_exported
    ckpt = _checkpoint(tmp_path, "tiny")
    out = str(tmp_path / "shlo")
    assert export_cli.main(["--checkpoint", ckpt, "--format", "stablehlo", "--symbolic-batch", "--out", out]) == 0
    exported = load_exported(out)
    assert isinstance(exported, StableHLOPolicy) and json.load(open(os.path.join(out, "export.json")))["batch"] is None
    policy = Policy.load(ckpt)
    tag = policy.tag(T.TAG)
    obs = _observations(policy, 3, seed=1)
    ref = [policy.predict_action(o["images"], o["task"], o["state"], T.TAG, noise=o["noise"]) for o in obs]
    one = exported.predict_action(obs[0]["images"], obs[0]["task"], obs[0]["state"], T.TAG, noise=obs[0]["noise"])
    np.testing.assert_allclose(one.normalized_actions, ref[0].normalized_actions, atol=1e-5, rtol=0)
    np.testing.assert_allclose(one.actions, ref[0].actions, atol=1e-5 * float(np.max(tag.action_stats.max -
                                                                                      tag.action_stats.min)), rtol=0)
    # batch 3: three different observations in one call of the same graphs
    inputs = [exported.build_inputs(exported.check_images(o["images"], tag), o["task"], o["state"], tag)
              for o in obs]
    batch = {name: np.concatenate([i[key] for i in inputs]) for name, key in
             (("input_ids", "ids"), ("images", "images"), ("pooled_idx", "pooled"), ("attention_mask", "attn"))}
    valid = np.repeat((np.arange(32) < tag.action_dim)[None], 3, 0)
    out3 = exported.run_batch(batch, np.stack([o["noise"] for o in obs]), valid)
    assert out3.shape == (3, tag.horizon, 32)
    for i, r in enumerate(ref):
        np.testing.assert_allclose(out3[i, :, :tag.action_dim], r.normalized_actions, atol=1e-5, rtol=0)


def test_bf16_stablehlo_export_passes_its_stated_gate(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, "tiny")
    out = str(tmp_path / "bf16")
    assert export_cli.main(["--checkpoint", ckpt, "--format", "stablehlo", "--precision", "bf16", "--out", out]) == 0
    assert json.load(open(os.path.join(out, "export.json")))["precision"] == "bf16"
    assert export_cli.main(["check", out, "--checkpoint", ckpt, "--observations", "2"]) == 0
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    worst = float(verdict.split("worst ")[1].split()[0])
    print(verdict)
    assert "threshold 2.0e-02" in verdict and 1e-5 < worst   # bf16 differs measurably, within its stated bound


def _no_jax_site(tmp_path) -> str:
    """A folder whose sitecustomize.py makes jax, flax and torch unimportable in any Python started with it first on
    PYTHONPATH (the robot computer without them)."""
    site = tmp_path / "nojax_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_HEAVY)
    return str(site)


def test_serving_an_onnx_export_answers_like_the_jax_server(exports, tmp_path):
    from molmoact2_jax.inference.client import dumps, loads
    from molmoact2_jax.inference.server import ServerProcess
    import urllib.request
    ckpt, out = exports("tiny")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    jax_server = ServerProcess(ckpt, timeout=180, env=env, cwd=ROOT)
    onnx_env = dict(env, PYTHONPATH=os.pathsep.join([_no_jax_site(tmp_path), ROOT, env.get("PYTHONPATH", "")]))
    onnx_server = ServerProcess(out, "--warmup", timeout=180, env=onnx_env, cwd=ROOT)
    try:
        policy = Policy.load(ckpt)
        replies = []
        for o in _observations(policy, 2, seed=2):
            payload = {"images": o["images"], "instruction": o["task"], "state": o["state"], "tag": T.TAG,
                       "noise": o["noise"], "n_action_steps": 3}
            got = []
            for server in (jax_server, onnx_server):
                req = urllib.request.Request(server.url + "/act", data=dumps(payload).encode(),
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=120) as resp:
                    got.append(np.asarray(loads(resp.read().decode())["actions"]))
            replies.append(got)
        discrete = urllib.request.Request(onnx_server.url + "/act", data=dumps(dict(payload, mode="discrete")).encode(),
                                          headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(discrete, timeout=60)
        assert err.value.code == 400 and "mode='continuous'" in err.value.read().decode()
    finally:
        jax_server.stop()
        onnx_server.stop()
    tag = policy.tag(T.TAG)
    span = tag.action_stats.max - tag.action_stats.min
    for want, got in replies:
        assert got.shape == want.shape == (3, tag.action_dim)
        assert float(np.max(np.abs(got - want) / span)) <= 1e-4
    assert not any("Traceback" in line for line in onnx_server.errors), "".join(onnx_server.errors)


def test_bad_export_requests_are_one_line(exports, tmp_path, capsys):
    from molmoact2_jax.runtime import OnnxPolicy
    ckpt, out = exports("tiny")
    pol = OnnxPolicy.load(out)
    imgs = T.random_images(2)
    state = np.zeros(pol.tag(T.TAG).state_dim)
    for kwargs, words in ((dict(mode="discrete"), "mode='continuous'"), (dict(think=True), "think"),
                          (dict(num_steps=3), "--num-steps 3")):
        with pytest.raises(ValueError) as e:
            pol.predict_action(imgs, "open the drawer", state, T.TAG, **kwargs)
        assert words in str(e.value) and "\n" not in str(e.value)
    # an export folder with a graph missing: one line naming the file, from the command that reads it
    broken = str(tmp_path / "broken")
    import shutil
    shutil.copytree(out, broken)
    os.remove(os.path.join(broken, "flow.onnx"))
    assert export_cli.main(["check", broken, "--checkpoint", ckpt]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "flow.onnx" in err and "re-run molmoact2-export" in err
    r = subprocess.run([sys.executable, "-m", "molmoact2_jax.cli.serve", "--checkpoint", broken, "--port", "0"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "flow.onnx" in r.stderr, r.stderr
    # reduced precision where the format cannot run it: one line, nothing written
    assert export_cli.main(["--checkpoint", ckpt, "--format", "onnx", "--precision", "bf16", "--out",
                            str(tmp_path / "bf16")]) == 2
    assert "--precision bf16" in capsys.readouterr().err and not os.path.exists(tmp_path / "bf16")
    # a non-empty output folder is refused before anything is written
    assert export_cli.main(["--checkpoint", ckpt, "--format", "onnx", "--out", out]) == 2
    assert "not empty" in capsys.readouterr().err


def test_real_time_chunking_runs_in_the_export(exports, tmp_path):
    """A step export holds the guided step (the denoiser's vector-Jacobian product per Euler step): prev_chunk gives
    the JAX Policy's actions; a loop export has no guided graph and says so."""
    from molmoact2_jax.runtime import OnnxPolicy
    ckpt, out = exports("tiny")
    policy, exported = Policy.load(ckpt), OnnxPolicy.load(out)
    tag = policy.tag(T.TAG)
    o = _observations(policy, 1, seed=3)[0]
    prev = np.random.default_rng(4).uniform(-1, 1, (6, tag.action_dim)).astype(np.float32)
    rtc = dict(noise=o["noise"], prev_chunk=prev, inference_delay=2, execution_horizon=5)
    want = policy.predict_action(o["images"], o["task"], o["state"], T.TAG, **rtc)
    got = exported.predict_action(o["images"], o["task"], o["state"], T.TAG, **rtc)
    free = policy.predict_action(o["images"], o["task"], o["state"], T.TAG, noise=o["noise"])
    assert np.max(np.abs(want.normalized_actions - free.normalized_actions)) > 0.1   # the guidance acts
    np.testing.assert_allclose(got.normalized_actions, want.normalized_actions, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got.actions[:2], prev[:2])   # the delay's actions are the previous chunk's
    loop = str(tmp_path / "loop")
    assert export_cli.main(["--checkpoint", ckpt, "--format", "onnx", "--flow", "loop", "--out", loop]) == 0
    with pytest.raises(ValueError, match="--flow step") as e:
        OnnxPolicy.load(loop).predict_action(o["images"], o["task"], o["state"], T.TAG, **rtc)
    assert "\n" not in str(e.value)


def test_onnx_batch_export_runs_a_batch_and_refuses_single_calls(exports, tmp_path):
    from molmoact2_jax.runtime import OnnxPolicy
    ckpt, _ = exports("tiny")
    out = str(tmp_path / "batch2")
    assert export_cli.main(["--checkpoint", ckpt, "--format", "onnx", "--batch", "2", "--out", out]) == 0
    policy, exported = Policy.load(ckpt), OnnxPolicy.load(out)
    tag = policy.tag(T.TAG)
    obs = _observations(policy, 2, seed=5)
    inputs = [exported.build_inputs(exported.check_images(o["images"], tag), o["task"], o["state"], tag) for o in obs]
    batch = {name: np.concatenate([i[key] for i in inputs]) for name, key in
             (("input_ids", "ids"), ("images", "images"), ("pooled_idx", "pooled"), ("attention_mask", "attn"))}
    got = exported.run_batch(batch, np.stack([o["noise"] for o in obs]),
                             np.repeat((np.arange(32) < tag.action_dim)[None], 2, 0))
    for i, o in enumerate(obs):
        want = policy.predict_action(o["images"], o["task"], o["state"], T.TAG, noise=o["noise"])
        np.testing.assert_allclose(got[i, :, :tag.action_dim], want.normalized_actions, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="run_batch") as e:
        exported.predict_action(obs[0]["images"], obs[0]["task"], obs[0]["state"], T.TAG, noise=obs[0]["noise"])
    assert "\n" not in str(e.value)
