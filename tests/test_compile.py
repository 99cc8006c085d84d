"""molmoact2-compile: the trainer's real Setup and train step compiled for devices this host does not have."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=" + os.path.join(ROOT, "configs", "posttrain.py") + ":tiny"]
KEYS = {"topology", "num_devices", "mesh", "bytes_per_device", "hbm_bytes_per_device", "fits", "compile_seconds",
        "model_flops_per_step", "hardware_flops_per_step", "step_time_floor_seconds"}


def compile_cli(tmp_path, *args):
    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, "-m", "molmoact2_jax.compile", *args, f"--out={out}"], env=env,
                       capture_output=True, text=True, timeout=600)
    report = json.load(open(out)) if out.exists() else None
    return r, report


def check_report(report, devices):
    assert KEYS <= set(report)
    assert report["num_devices"] == devices
    b = report["bytes_per_device"]
    assert b["total"] == b["argument"] + b["output"] + b["temp"] - b["alias"]
    assert 0 < b["alias"] <= b["argument"]  # the train state is donated
    assert report["hardware_flops_per_step"] > report["model_flops_per_step"] > 0


@pytest.mark.parametrize("args,devices,mesh", [
    (["--devices=cpu:8", "--config.data.global_batch_size=8", "--config.mesh.data=2", "--config.mesh.fsdp=4"], 8,
     {"slice": 1, "data": 2, "fsdp": 4, "tensor": 1}),
    (["--topology=v5e:2x2"], 4, {"slice": 1, "data": 4, "fsdp": 1, "tensor": 1}),
], ids=["cpu8", "v5e_2x2"])
def test_compile_reports_memory_and_flops(tmp_path, args, devices, mesh):
    r, report = compile_cli(tmp_path, *TINY, *args)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    print(r.stdout)
    check_report(report, devices)
    assert report["mesh"] == mesh and report["fits"] is True
    assert "fits" in r.stdout and "memory per device" in r.stdout
    if "v5e" in args[0]:
        assert report["hbm_bytes_per_device"] == 16 * 1024 ** 3
        floor = report["hardware_flops_per_step"] / devices / 197e12
        assert report["step_time_floor_seconds"] == pytest.approx(floor, rel=1e-9)


def test_compile_names_buffers_when_it_does_not_fit(tmp_path):
    # 4096 rows x 1024 tokens x ~3k vocab logits alone are ~50 GiB per device on 8 fake CPU devices.
    r, report = compile_cli(tmp_path, *TINY, "--devices=cpu:8", "--config.data.global_batch_size=32768",
                            "--config.data.seq_len=1024")
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-3000:]
    assert report["fits"] is False and report["largest_buffers"]
    big = report["largest_buffers"][0]
    assert big["bytes"] > report["hbm_bytes_per_device"] / 8
    assert "DOES NOT FIT" in r.stdout and big["shape"] in r.stdout
