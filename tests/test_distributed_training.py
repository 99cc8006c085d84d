"""Same losses on 1 device as on 8 fake devices under different meshes and on 2 real processes x 4 devices (gloo)."""
import json
import os
import re

import numpy as np
import pytest

from train_harness import failure_report, losses, read_metrics, run, run_multiprocess

# One xdist worker runs this file: its tests share the single-device run (pyproject.toml: --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed_training")]

STEPS = ["--config.total_steps=5", "--config.data.global_batch_size=8", "--config.checkpoint.every_steps=0"]
# Different meshes reduce in different orders (fp32): after 5 Adam steps losses agree to ~1e-6 relative.
RTOL = 2e-5


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("single"))
    r = run(wd, STEPS, devices=1)
    assert r.returncode == 0, r.stderr[-3000:]
    return wd, losses(wd)


@pytest.fixture(scope="module")
def single_device(single_device_run):
    return single_device_run[1]


FSDP8 = ["--config.mesh.data=1", "--config.mesh.fsdp=8"]
D2F2T2 = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]


@pytest.mark.parametrize("mesh,first", [(FSDP8, None), (FSDP8, D2F2T2)],
                         ids=["fsdp8", "data2_fsdp2_tensor2_resumed_as_fsdp8"])
def test_meshes_match_single_device(single_device, mesh, first, tmp_path):
    """8 fake devices against 1. With `first`, steps 1-2 run under that mesh and the trainer resumes steps 3-5
    under `mesh`, given on the command line over the checkpoint's saved config (the README's resume on
    another mesh). A fresh data=2 x fsdp=2 x tensor=2 run is the one XLA:CPU's concurrency-optimized schedule
    deadlocked (cpu_flags)."""
    ckpt = ["--config.checkpoint.every_steps=2"] if first else []
    if first:
        r = run(str(tmp_path), STEPS + first + ckpt + ["--config.total_steps=2"], devices=8)
        assert r.returncode == 0, r.stderr[-3000:]
    r = run(str(tmp_path), STEPS + mesh + ckpt, devices=8)
    assert r.returncode == 0, r.stderr[-3000:]
    if first:
        assert re.search(r"resumed from \S+/2\b", r.stdout + r.stderr), r.stderr[-3000:]
    got = losses(str(tmp_path))
    print("1 device:", single_device, "\n8 devices:", got)
    assert [row["step"] for row in read_metrics(str(tmp_path))] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(got, single_device, rtol=RTOL)
    info = json.load(open(tmp_path / "run_info.json"))
    assert info["devices"] == 8
    want = {f.split("--config.mesh.")[1].split("=")[0]: int(f.split("=")[1]) for f in mesh}
    assert {k: info["mesh"][k] for k in want} == want, info["mesh"]
    mem = info["train_step_memory_per_device"]  # the compiled step's plan, as molmoact2-compile reports it
    assert mem["total"] == mem["argument"] + mem["output"] + mem["temp"] - mem["alias"] > 0
    row = read_metrics(str(tmp_path))[0]
    assert row["flops_per_step_per_device"] == pytest.approx(info["hardware_flops_per_step"] / 8, rel=1e-12)
    assert 0 < row["model_flops_per_step_per_device"] < row["flops_per_step_per_device"]
    if "--config.mesh.fsdp=8" in mesh:
        s = info["params_and_optimizer"]
        print(f"fsdp=8: {s['max_bytes_per_device']} bytes on the fullest device of {s['total_bytes']} in total")
        # Tiny widths leave some tensors (norm scales, 9-row position table, small biases) replicated.
        assert s["max_bytes_per_device"] <= 0.15 * s["total_bytes"]  # ~1/8 plus the replicated bits


def test_cpu_flags_merge_with_the_users():
    """The flag molmoact2-train adds before the CPU backend starts (the deadlock it avoids is the fresh
    data=2 x fsdp=2 x tensor=2 run above); the user's own value of it wins, MOLMOACT2_CPU_FLAGS=0 adds none."""
    from molmoact2_jax.sharding import cpu_flags
    flag = "--xla_cpu_enable_concurrency_optimized_scheduler"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert cpu_flags.apply(env).split() == ["--xla_force_host_platform_device_count=8", f"{flag}=false"]
    assert cpu_flags.apply({"XLA_FLAGS": f"{flag}=true"}).split() == [f"{flag}=true"]
    assert cpu_flags.apply({"MOLMOACT2_CPU_FLAGS": "0", "XLA_FLAGS": "--a=1"}) == "--a=1"
    assert "`" + flag in open(os.path.join(os.path.dirname(__file__), "..", "docs", "training.md")).read()


@pytest.mark.multiprocess
def test_two_processes_data2_fsdp4_match_one_device_across_a_resume(single_device, tmp_path):
    """2 real processes x 4 devices under data=2 x fsdp=4 against the 1-device run: the README's "match one
    device" for both the multi-process path and that mesh, across a stop at step 2 and a joint resume (both
    processes save their shards of one checkpoint and restore it together)."""
    mesh = ["--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.checkpoint.every_steps=2"]
    two = str(tmp_path / "two")
    codes, outs = run_multiprocess(two, STEPS + mesh + ["--config.total_steps=2"], num_processes=2,
                                   devices_per_process=4)
    assert codes == [0, 0], failure_report(outs)
    codes, outs = run_multiprocess(two, STEPS + mesh, num_processes=2, devices_per_process=4)
    assert codes == [0, 0], failure_report(outs)
    assert "resumed from" in outs[0]
    print("1 device:", single_device, "\n2 processes:", losses(two))
    assert [r["step"] for r in read_metrics(two)] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(losses(two), single_device, rtol=2e-6)   # measured 2.3e-7 without the resume
    info = json.load(open(os.path.join(two, "run_info.json")))
    assert info["processes"] == 2 and info["devices"] == 8


@pytest.fixture(scope="module")
def source_checkpoint(single_device_run):
    """A 1-process run's last step directory: what a lab fine-tunes from."""
    return os.path.join(single_device_run[0], "checkpoints", "5")


INIT_STEPS = ["--config.total_steps=1", "--config.data.global_batch_size=8", "--config.checkpoint.every_steps=0"]


@pytest.fixture(scope="module")
def init_from_one_device(source_checkpoint, single_device, tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("init1"))
    r = run(wd, INIT_STEPS + [f"--config.init_from={source_checkpoint}"], devices=1)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "init_from" in r.stderr and "missing 0" in r.stderr and "unexpected 0" in r.stderr, r.stderr[-2000:]
    return losses(wd)[0], single_device[0]  # a fresh start's first step sees the same batch


@pytest.mark.parametrize("mesh", [["--config.mesh.data=1", "--config.mesh.fsdp=8"],
                                  ["--config.mesh.data=2", "--config.mesh.fsdp=4"]], ids=["fsdp8", "data2_fsdp4"])
@pytest.mark.multiprocess
def test_two_processes_init_from_match_one_device(source_checkpoint, init_from_one_device, mesh, tmp_path):
    """A params-only start restores straight into the multi-process shardings (nothing gathered on a host)."""
    one, fresh = init_from_one_device
    codes, outs = run_multiprocess(str(tmp_path), INIT_STEPS + mesh + [f"--config.init_from={source_checkpoint}"],
                                   num_processes=2, devices_per_process=4)
    assert codes == [0, 0], failure_report(outs)
    got = losses(str(tmp_path))[0]
    print(f"first-step loss: 1 device init_from {one:.7f}, 2 processes {got:.7f}, fresh init {fresh:.7f}")
    assert abs(one - fresh) > 1e-3 * abs(fresh)  # the checkpoint was really loaded
    np.testing.assert_allclose(got, one, rtol=1e-5)
