"""The deployment runtime (molmoact2_jax.runtime) and the observation codec it shares with the JAX Policy import
no JAX, Flax, Optax, Orbax, Chex or torch, and an export folder with a file missing is refused in one line naming
it. (Running exported graphs end to end: the export tests.)"""
import json
import os
import subprocess
import sys

import pytest

from molmoact2_jax.runtime.export_folder import EXPORT_FORMAT, EXPORT_JSON, ExportFolder, ExportFolderError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN = ("jax", "jaxlib", "flax", "optax", "orbax", "chex", "torch")
RUNTIME_MODULES = ("molmoact2_jax.runtime", "molmoact2_jax.runtime.onnx_policy", "molmoact2_jax.runtime.export_folder",
                   "molmoact2_jax.inference.observation")

_NO_JAX = f"""
import importlib.abc, sys
FORBIDDEN = {FORBIDDEN!r}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"refused import of {{name}} (the runtime must not need it)")
        return None

sys.meta_path.insert(0, Refuse())
for m in {RUNTIME_MODULES!r}:
    __import__(m)
import molmoact2_jax.runtime as rt
assert rt.OnnxPolicy.has_expert and rt.ExportFolderError
loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
assert not loaded, loaded
print("ok")
"""


def test_runtime_imports_without_jax_or_torch():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _NO_JAX], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def _folder(tmp_path):
    """A minimal export folder: export.json and (empty) files where it points; nothing is parsed beyond the json."""
    d = tmp_path / "export"
    (d / "assets").mkdir(parents=True)
    spec = [{"name": "x", "shape": [1, 4], "dtype": "float32"}]
    prefix_inputs = [{"name": n, "shape": [1, 4], "dtype": t} for n, t in
                     (("input_ids", "int32"), ("images", "float32"), ("pooled_idx", "int32"),
                      ("attention_mask", "bool"))]
    meta = {"format": EXPORT_FORMAT, "graph_format": "onnx", "precision": "fp32", "batch": 1, "model_config": {},
            "policy": {"prompt_bucket": 16}, "prompt_tokens": 16, "num_cameras": 1, "horizon": 8, "num_steps": 10,
            "max_action_dim": 32, "tags": ["tiny_arm"],
            "graphs": {"prefix": {"file": "prefix.onnx", "inputs": prefix_inputs, "outputs": spec},
                       "flow": {"file": "flow.onnx", "kind": "loop", "inputs": spec + [
                           {"name": "noise", "shape": [1, 8, 32], "dtype": "float32"},
                           {"name": "action_dim_valid", "shape": [1, 32], "dtype": "bool"}], "outputs": spec}},
            "assets": {"norm_stats": "assets/norm_stats.json", "tokenizer": "assets/tokenizer.json",
                       "action_tokenizer": None}}
    for f in ("prefix.onnx", "flow.onnx", "assets/norm_stats.json", "assets/tokenizer.json"):
        (d / f).write_text("")
    (d / EXPORT_JSON).write_text(json.dumps(meta))
    return d, meta


def _refused(d) -> str:
    with pytest.raises(ExportFolderError) as e:
        ExportFolder.load(str(d))
    msg = str(e.value)
    assert "\n" not in msg and "molmoact2-export" in msg, msg
    return msg


def test_export_folder_reads_a_complete_folder(tmp_path):
    d, meta = _folder(tmp_path)
    ex = ExportFolder.load(str(d))
    assert (ex.prompt_tokens, ex.num_cameras, ex.horizon, ex.num_steps, ex.tags) == (16, 1, 8, 10, ("tiny_arm",))
    assert ex.flow.kind == "loop" and [s.name for s in ex.prefix.inputs][0] == "input_ids"
    assert str(ex.prefix.file).endswith("prefix.onnx") and ex.action_tokenizer is None


@pytest.mark.parametrize("missing", ["export.json", "prefix.onnx", "flow.onnx", "assets/tokenizer.json",
                                     "assets/norm_stats.json"])
def test_export_folder_with_a_file_missing_is_one_line_naming_it(tmp_path, missing):
    d, _ = _folder(tmp_path)
    (d / missing).unlink()
    assert str(d / missing) in _refused(d)


def test_export_folder_of_another_format_is_one_line(tmp_path):
    d, meta = _folder(tmp_path)
    (d / EXPORT_JSON).write_text(json.dumps(dict(meta, format="molmoact2_export.v99")))
    assert "molmoact2_export.v99" in _refused(d)
    (d / EXPORT_JSON).write_text("{not json")
    assert "not valid JSON" in _refused(d)
    assert "not found" in _refused(tmp_path / "nowhere")


def test_a_training_process_does_not_import_torch(tmp_path):
    """torch is a test dependency here, as on many users' hosts; tensorboardX would import it (1.5 s, ~300 MB per
    training process) only to accept torch tensors. The metric writer keeps it out, and torch stays importable."""
    code = ("import sys\nfrom molmoact2_jax.training import trainer\nfrom molmoact2_jax.training.metrics import "
            f"MetricWriter\nw = MetricWriter({str(tmp_path)!r})\nw.write(1, {{'loss': 1.0}})\nw.close()\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nimport torch\nprint('OK', torch.__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0 and "OK torch" in r.stdout, r.stderr[-2000:]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents*"))
