"""A pod run as users run it, on this machine: a run directory in a bucket (a real GCS emulator), 2 real processes x
4 fake devices, training data from local ArrayRecord shards, SIGTERM to one process, a resume from the bucket; and
the multi-host failure modes: a run directory that is not shared, a checkpoint one process cannot read."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_training_data import dataset  # noqa: F401 - the LeRobot fixture converted to shards, a module fixture
from train_harness import CACHE, failure_report, read_metrics, run_multiprocess, start_multiprocess, wait_all

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

RECIPE = """
from molmoact2_configs import pretrain


def get_config():
    c = pretrain.get_config("tiny")
    c.model.use_action_expert = True
    c.model.action_mode = "both"
    c.trainer.compilation_cache_dir = {cache!r}
    c.trainer.eval_every_steps = 0
    c.data.source = "arrayrecord"
    c.data.sources = [{{"path": {shards!r}, "weight": 1.0}}]
    c.data.norm_stats = {norm_stats!r}
    c.data.tokenizer = {tokenizer!r}
    c.data.openfast = {openfast!r}
    c.data.seq_len = 256
    c.data.global_batch_size = 8
    return c
"""
# Pure data parallelism over the 8 devices of both processes. With fsdp across the processes this recipe's step
# can deadlock under XLA:CPU's gloo collectives (an all-to-all outside the layer scan and the scan's FSDP all-gathers
# run in different orders on different devices; seen with jax 0.10.2, CPU only): the emulation's limit, not the
# trainer's. The multi-process FSDP paths run in test_distributed_training.py and below on synthetic batches.
TOTAL = 8
STEPS = [f"--config.total_steps={TOTAL}", "--config.checkpoint.every_steps=2", "--config.checkpoint.keep_last=10",
         "--config.mesh.data=8", "--config.mesh.fsdp=1"]


@pytest.fixture(scope="module")
def recipe(dataset, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("recipe") / "shards_recipe.py"
    path.write_text(RECIPE.format(cache=CACHE, shards=str(dataset / "shards"), norm_stats=str(dataset /
                    "norm_stats.json"), tokenizer=str(dataset / "tokenizer.json"), openfast=str(dataset / "openfast")))
    return [f"--config={path}"]


def _bucket_rows(gcs, bucket: str, name: str) -> list[dict]:
    """metrics.jsonl as the bucket holds it now (read from the emulator's storage folder)."""
    path = os.path.join(gcs.data, bucket, name, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_gs_run_directory_preempt_one_process_then_resume_matches(gcs, recipe, tmp_path):
    bucket = "pod-run"
    gcs.create_bucket(bucket)
    cwds = [tmp_path / "cwd0", tmp_path / "cwd1"]
    for c in cwds:
        c.mkdir()
    run = lambda wd, **kw: run_multiprocess(f"gs://{bucket}/{wd}", STEPS, 2, 4, env=gcs.env, cwd=cwds, base=recipe,
                                            **kw)

    codes, outs = run("reference")
    assert codes == [0, 0], failure_report(outs)
    reference = [r["loss"] for r in _bucket_rows(gcs, bucket, "reference")]
    assert len(reference) == TOTAL

    # SIGTERM to process 1 alone once step 2's checkpoint (and metrics upload) is in the bucket.
    procs, logs = start_multiprocess(f"gs://{bucket}/run", STEPS, 2, 4, env=gcs.env, cwd=cwds, base=recipe)
    deadline = time.monotonic() + 400
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if len(_bucket_rows(gcs, bucket, "run")) >= 2:
            procs[1].send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    codes, outs = wait_all(procs, logs)
    assert codes == [0, 0], failure_report(outs)
    saved = [int(o.split("preemption requested: saved step ")[1].split(",")[0]) for o in outs]
    assert saved[0] == saved[1] < TOTAL, failure_report(outs)
    stop = saved[0]
    assert f"preempted at step {stop}" in outs[0]
    objects = gcs.objects(bucket)
    assert f"run/checkpoints/{stop}/commit_success.txt" in objects
    assert [r["step"] for r in _bucket_rows(gcs, bucket, "run")] == list(range(1, stop + 1))

    codes, outs = run("run")
    assert codes == [0, 0], failure_report(outs)
    assert f"resumed from gs://{bucket}/run/checkpoints/{stop}" in outs[0]
    rows = _bucket_rows(gcs, bucket, "run")
    assert [r["step"] for r in rows] == list(range(1, TOTAL + 1))
    print("reference:", reference, "\npreempted at", stop, "and resumed:", [r["loss"] for r in rows])
    np.testing.assert_allclose([r["loss"] for r in rows], reference, rtol=2e-6)

    # Nothing under the processes' working directories; everything in the bucket.
    assert [os.listdir(c) for c in cwds] == [[], []]
    assert {"run/run_info.json", "run/assets/norm_stats.json", f"run/checkpoints/{TOTAL}/assets/tokenizer.json"} <= \
        set(objects) | set(gcs.objects(bucket))
    assert any(o.startswith("run/tensorboard/events.out.tfevents") for o in gcs.objects(bucket))
    info = json.loads(open(os.path.join(gcs.data, bucket, "run", "run_info.json")).read())
    assert info["cluster"]["source"] == "explicit" and info["cluster"]["processes"] == 2
    assert info["cluster"]["local_devices_per_process"] == 4
    good = info["goodput"]
    assert 0 < good["step_fraction"] < 1 and good["compile_s"] > 0 and good["checkpoint_save_s"] > 0
    assert good["checkpoint_restore_s"] > 0 and abs(sum(good[f"{k}_s"] for k in (
        "step", "data_wait", "compile", "checkpoint_save", "checkpoint_restore", "eval", "other")) -
        good["wall_s"]) < 0.01 * good["wall_s"] + 0.01
    assert all("data_wait_s" in r for r in rows)

    # The bucket's step directory serves on its own, and exports to an HF folder in the bucket that serves the same
    # actions; in a fresh process, as a user would load them.
    probe = SERVE_PROBE.format(ckpt=f"gs://{bucket}/run/checkpoints/{TOTAL}", hf=f"gs://{bucket}/hf",
                               dataset=str(recipe_dataset_root(recipe)))
    r = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **gcs.env, "JAX_PLATFORMS": "cpu"},
                       cwd=str(cwds[0]), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ACTIONS (8, 6) finite" in r.stdout, r.stderr[-3000:]
    assert "model.safetensors" in [o[len("hf/"):] for o in gcs.objects(bucket) if o.startswith("hf/")]
    assert "EXPORT MAX ABS DIFF" in r.stdout, r.stdout[-2000:]
    assert float(r.stdout.split("EXPORT MAX ABS DIFF")[1].split()[0]) < 1e-5, r.stdout[-2000:]
    assert os.listdir(cwds[0]) == []


SERVE_PROBE = """
import numpy as np
from data_pipelines.formats.lerobot_reader import LeRobotDataset
from molmoact2_jax.inference import Policy
policy = Policy.load({ckpt!r})
ds = LeRobotDataset({dataset!r} + "/so100")
cols = ds.episode_columns(0)
images = [ds.frames(0, k, [0])[0] for k in ds.camera_keys]
res = policy.predict_action(images, ds.task(0), cols["observation.state"][0], "so100_so101_molmoact2", seed=0)
print("ACTIONS", res.actions.shape, "finite" if np.isfinite(res.actions).all() else "NOT FINITE")
from molmoact2_jax.cli.convert import main as convert
assert convert(["export-hf", {ckpt!r}, {hf!r}, "--no-progress"]) == 0
exported = Policy.load({hf!r})
again = exported.predict_action(images, ds.task(0), cols["observation.state"][0], "so100_so101_molmoact2", seed=0)
print("EXPORT MAX ABS DIFF", float(np.abs(np.asarray(again.actions) - np.asarray(res.actions)).max()))
"""


def recipe_dataset_root(recipe):
    from pathlib import Path
    text = Path(recipe[0].split("=", 1)[1]).read_text()
    shards = text.split('"path": ')[1].split(",")[0].strip("'\"")
    return Path(shards).parent


def test_run_directory_not_shared_between_processes_is_one_line(recipe, tmp_path):
    """The same relative --workdir from two working directories: two disks at one path, as on hosts without a
    shared filesystem. Both processes stop with the one line, exit 2, before compiling anything."""
    cwds = [tmp_path / "host0", tmp_path / "host1"]
    for c in cwds:
        c.mkdir()
    t0 = time.monotonic()
    codes, outs = run_multiprocess("run", STEPS, 2, 4, cwd=cwds, base=recipe, timeout=300)
    took = time.monotonic() - t0
    assert codes == [2, 2], failure_report(outs)
    for out in outs:
        errors = [line for line in out.splitlines() if line.startswith("molmoact2-train: error:")]
        assert len(errors) == 1 and "is not shared between the run's processes" in errors[0], out[-2000:]
        assert "process(es) [1]" in errors[0] and "Traceback" not in out
    assert not glob.glob(str(tmp_path / "host*" / "run" / "checkpoints" / "*"))
    print(f"refused in {took:.1f} s")


def test_checkpoint_only_one_process_cannot_read_is_skipped_by_all(tmp_path):
    """fsdp=8 over 2 processes (synthetic batches): each process writes and reads only its own parameter shards.
    Step 4's files of process 1 are truncated: process 1 fails to restore it, process 0 would not; both agree, step
    4 is moved aside and both resume from step 2."""
    wd = str(tmp_path / "run")
    mesh = ["--config.mesh.data=1", "--config.mesh.fsdp=8", "--config.checkpoint.every_steps=2",
            "--config.checkpoint.keep_last=10", "--config.data.global_batch_size=8"]
    codes, outs = run_multiprocess(wd, mesh + ["--config.total_steps=4"], 2, 4)
    assert codes == [0, 0], failure_report(outs)
    files = [f for f in glob.glob(os.path.join(wd, "checkpoints", "4", "state", "ocdbt.process_1", "d", "*"))]
    assert files, os.listdir(os.path.join(wd, "checkpoints", "4", "state"))
    victim = max(files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    codes, outs = run_multiprocess(wd, mesh + ["--config.total_steps=6"], 2, 4)
    assert codes == [0, 0], failure_report(outs)
    for out in outs:
        assert "checkpoints/4 is incomplete or corrupt (failed on process(es) [1]" in out, out[-3000:]
    assert "resumed from" in outs[0] and "checkpoints/2" in outs[0].split("resumed from")[1].splitlines()[0]
    assert any(d.startswith("4.corrupt-") for d in os.listdir(os.path.join(wd, "checkpoints")))
    assert [r["step"] for r in read_metrics(wd)] == list(range(1, 7))
