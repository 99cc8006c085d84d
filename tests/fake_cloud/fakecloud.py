"""Fake cloud and cluster tools for tests/test_launchers.py; bin/ and worker_bin/ hold the commands that call this.

Every call appends one JSON line {"tool", "argv", "cwd", "worker", "env"} to $FAKE_CLOUD_LOG, and where it can, the
fake does the work on this machine:
  gcloud compute tpus tpu-vm ssh NAME --worker=W --command=CMD
        runs CMD with bash once per fake worker (0 .. $FAKE_TPU_WORKERS-1), like a login over ssh: a clean
        environment, HOME=$FAKE_WORKERS_DIR/wN/home and the fake image's PATH (worker_bin/, what the fake apt-get
        installed, this directory's bin/, then a few real tools); exit status non-zero if any worker's was
  gcloud compute tpus tpu-vm scp SRC... NAME:DEST --worker=W   copies into each worker's HOME/DEST
  gcloud storage cp SRC... gs://BUCKET/PATH/                   copies into $FAKE_GCS_ROOT/BUCKET/PATH/
  kubectl apply -f -     keeps the manifest as $FAKE_KUBE_DIR/applied-N.yaml; other kubectl calls only record
  sbatch [OPTS] SCRIPT ARGS...   runs SCRIPT with bash (like sbatch --wait), SLURM_* set from its #SBATCH lines
        and OPTS as sbatch sets them for the batch step
  srun [OPTS] CMD ARGS...        FAKE_SRUN_MODE=run: SLURM_NTASKS local processes of CMD on one fake node (task i:
        SLURM_PROCID=SLURM_LOCALID=i, SLURM_STEP_NODELIST=localhost, JAX_COORDINATOR_PORT a free port), waits for
        all, exit status non-zero if any failed; otherwise records only
The fake TPU VM image (worker_bin/): python3 (3.10, as the Ubuntu 22.04 TPU images), sudo (records; runs only
fakes), apt-get (installing python3.X puts a fake python3.X on the worker), curl (the metadata server's worker
number), gcsfuse, lsof; python3.X -m venv DIR makes a fake venv whose python's `-m pip install -e` adds a fake
bin/molmoact2-train. That trainer prints to stdout and stderr, runs FAKE_TRAIN_SECONDS (stopping early on SIGTERM,
exit 0 "after saving") and exits FAKE_TRAIN_EXIT.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.realpath(__file__))
# Real tools a worker may use; everything else on its PATH is a fake.
WORKER_SYSTEM_TOOLS = ("bash", "sh", "tar", "gzip", "mkdir", "rm", "mv", "cp", "ln", "cat", "tail", "head", "sleep",
                       "setsid", "nohup", "ps", "date", "id", "hostname", "env", "sort", "basename", "dirname",
                       "readlink", "mountpoint", "pgrep", "touch", "chmod", "ls", "grep", "sed", "true", "false",
                       "uname", "mktemp", "wc", "tr", "cut")
RECORDED_ENV = ("SLURM_", "JAX_", "MOLMOACT2_", "XLA_", "MY_", "FAKE_WORKER_ID", "HOME", "PATH")


def record(tool: str, argv: list, **extra) -> None:
    log = os.environ.get("FAKE_CLOUD_LOG")
    if not log:
        return
    env = {k: v for k, v in os.environ.items() if k.startswith(RECORDED_ENV)}
    line = json.dumps(dict(tool=tool, argv=argv, cwd=os.getcwd(), worker=os.environ.get("FAKE_WORKER_ID"), env=env,
                           pid=os.getpid(), **extra))
    with open(log, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line + "\n")


def write_tool(path: str, tool: str | None = None) -> None:
    """A command at `path` that runs this file as `tool` (default: the command's own name)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    name = f'"{tool}"' if tool else '"${BASH_SOURCE[0]}"'
    with open(path, "w") as f:
        f.write(f'#!/usr/bin/env bash\nexec "${{FAKE_CLOUD_PYTHON:?}}" {os.path.abspath(__file__)} {name} "$@"\n')
    os.chmod(path, 0o755)


def worker_system_bin() -> str:
    """A folder of links to the few real tools a fake worker gets (so no real python3.x, pip or sudo)."""
    path = os.path.join(os.environ["FAKE_WORKERS_DIR"], "system-bin")
    if not os.path.isdir(path):
        os.makedirs(path + ".tmp", exist_ok=True)
        for name in WORKER_SYSTEM_TOOLS:
            real = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
            if real and not os.path.exists(os.path.join(path + ".tmp", name)):
                os.symlink(real, os.path.join(path + ".tmp", name))
        os.replace(path + ".tmp", path)
    return path


def worker_dirs(i: int) -> tuple[str, str]:
    root = os.path.join(os.environ["FAKE_WORKERS_DIR"], f"w{i}")
    home = os.path.join(root, "home")
    os.makedirs(home, exist_ok=True)
    return root, home


def worker_env(i: int) -> dict:
    root, home = worker_dirs(i)
    path = os.pathsep.join([os.path.join(HERE, "worker_bin"), os.path.join(root, "usr-bin"), os.path.join(HERE, "bin"),
                            worker_system_bin()])
    env = {k: v for k, v in os.environ.items() if k.startswith("FAKE_") and k != "FAKE_TPU_WORKERS"}
    env.update(HOME=home, USER="fake", LANG="C.UTF-8", PATH=path, FAKE_WORKER_ID=str(i), FAKE_WORKER_ROOT=root)
    return env


def selected_workers(argv: list) -> list[int]:
    n = int(os.environ.get("FAKE_TPU_WORKERS", "1"))
    value = "0"
    for a in argv:
        if a.startswith("--worker="):
            value = a.split("=", 1)[1]
    if value == "all":
        return list(range(n))
    return [int(v) for v in value.split(",")]


def option(argv: list, name: str) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def positionals(argv: list, with_value=("--command", "--zone", "--project", "--worker")) -> list:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in with_value:
            skip = True
        elif not a.startswith("-"):
            out.append(a)
    return out


def gcloud(argv: list) -> int:
    record("gcloud", argv)
    if argv[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
        command = option(argv, "--command")
        if command is None:
            print("fake gcloud: ssh without --command is not faked", file=sys.stderr)
            return 1
        bash = shutil.which("bash")
        status = 0
        for i in selected_workers(argv):
            env = worker_env(i)
            rc = subprocess.run([bash, "-c", command], cwd=env["HOME"], env=env).returncode
            status = status or rc
        return status
    if argv[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
        args = positionals(argv[4:])
        *sources, dest = args
        dest_path = dest.split(":", 1)[1]
        for i in selected_workers(argv):
            _, home = worker_dirs(i)
            target = os.path.join(home, dest_path)
            for src in sources:
                shutil.copy(src, target)
        return 0
    if argv[:2] == ["storage", "cp"]:
        *sources, dest = positionals(argv[2:])
        assert dest.startswith("gs://"), dest
        target = os.path.join(os.environ["FAKE_GCS_ROOT"], dest[len("gs://"):])
        if dest.endswith("/") or len(sources) > 1:
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
        for src in sources:
            shutil.copy(src, target)
        return 0
    return 0


def kubectl(argv: list) -> int:
    if "apply" in argv and option(argv, "-f") == "-":
        manifest = sys.stdin.read()
        folder = os.environ["FAKE_KUBE_DIR"]
        os.makedirs(folder, exist_ok=True)
        n = len([f for f in os.listdir(folder) if f.startswith("applied-")])
        path = os.path.join(folder, f"applied-{n}.yaml")
        with open(path, "w") as f:
            f.write(manifest)
        record("kubectl", argv, manifest=path)
        name = re.search(r'^  name: "?([^"\n]+)"?$', manifest, re.M)
        print(f"jobset.jobset.x-k8s.io/{name.group(1) if name else '?'} created")
        return 0
    record("kubectl", argv)
    return 0


def parse_slurm_options(tokens: list) -> tuple[dict, list]:
    """`--key=value` / `--flag` options up to the first other word; returns (options, rest)."""
    opts = {}
    for i, t in enumerate(tokens):
        if not t.startswith("--"):
            return opts, tokens[i:]
        key, _, value = t[2:].partition("=")
        opts[key] = value
    return opts, []


def sbatch(argv: list) -> int:
    cli, rest = parse_slurm_options(argv)
    script, args = rest[0], rest[1:]
    directives = []
    with open(script) as f:
        for line in f:
            if line.startswith("#SBATCH"):
                directives.append(line.split(None, 1)[1].strip())
            elif line.strip() and not line.startswith("#"):
                break   # sbatch reads directives up to the first command
    opts, _ = parse_slurm_options(directives)
    opts.update(cli)
    nodes = int(opts.get("nodes", "1"))
    env = dict(os.environ, SLURM_JOB_ID=os.environ.get("FAKE_SLURM_JOB_ID", "4242"),
               SLURM_JOB_NAME=opts.get("job-name", os.path.basename(script)), SLURM_JOB_NUM_NODES=str(nodes),
               SLURM_NNODES=str(nodes), SLURM_SUBMIT_DIR=os.getcwd(),
               SLURM_JOB_NODELIST="localhost" if nodes == 1 else f"node[001-{nodes:03d}]")
    if "ntasks-per-node" in opts:
        env["SLURM_NTASKS_PER_NODE"] = opts["ntasks-per-node"]
        env["SLURM_NTASKS"] = str(nodes * int(opts["ntasks-per-node"]))
    if "gpus-per-node" in opts:
        env["SLURM_GPUS_PER_NODE"] = opts["gpus-per-node"]
    if "cpus-per-task" in opts:
        env["SLURM_CPUS_PER_TASK"] = opts["cpus-per-task"]
    record("sbatch", argv, directives=directives, options=opts)
    return subprocess.run([shutil.which("bash"), script, *args], env=env).returncode


def srun(argv: list) -> int:
    opts, command = parse_slurm_options(argv)
    record("srun", argv, options=opts)
    if os.environ.get("FAKE_SRUN_MODE") != "run":
        return 0
    from molmoact2_jax.ports import coordinator_port
    ntasks = int(opts.get("ntasks") or os.environ["SLURM_NTASKS"])
    port = str(coordinator_port())
    pattern = opts.get("output")
    procs, files = [], []
    for i in range(ntasks):
        env = dict(os.environ, SLURM_STEP_NODELIST="localhost", SLURM_NODELIST="localhost", SLURM_NTASKS=str(ntasks),
                   SLURM_PROCID=str(i), SLURM_LOCALID=str(i), SLURM_NODEID="0", SLURM_STEP_NUM_NODES="1",
                   SLURM_STEP_NUM_TASKS=str(ntasks), SLURM_STEP_ID="0", JAX_COORDINATOR_PORT=port)
        env.setdefault("SLURM_JOB_ID", "4242")
        out = None
        if pattern:
            path = (pattern.replace("%j", env["SLURM_JOB_ID"]).replace("%t", str(i)).replace("%N", "localhost")
                    .replace("%s", "0").replace("%x", env.get("SLURM_JOB_NAME", "job")))
            out = open(path, "w")
            files.append(out)
        procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
    kill_on_bad_exit = opts.get("kill-on-bad-exit", "0") not in ("0", "")
    codes = [None] * ntasks
    while any(c is None for c in codes):
        for i, p in enumerate(procs):
            if codes[i] is None:
                codes[i] = p.poll()
        if kill_on_bad_exit and any(c not in (None, 0) for c in codes):
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.1)
    for f in files:
        f.close()
    record("srun-done", argv, codes=codes)
    bad = [c for c in codes if c != 0]
    return (abs(bad[0]) or 1) if bad else 0


def fake_python(path: str, argv: list) -> int:
    """python3 of the fake image (FAKE_IMAGE_PYTHON, default 3.10.12), python3.X from the fake apt, or a venv's."""
    name = os.path.basename(path)
    venv = os.path.dirname(os.path.dirname(path))
    cfg = os.path.join(venv, "pyvenv.cfg")
    if os.path.exists(cfg):
        version = dict(line.split(" = ", 1) for line in open(cfg).read().splitlines())["version"]
        tool = "venv-python"
    else:
        m = re.fullmatch(r"python(3\.\d+)", name)
        version = m.group(1) + ".9" if m else os.environ.get("FAKE_IMAGE_PYTHON", "3.10.12")
        venv = None
        tool = name
    record(tool, argv, version=version)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"Python {version}")
        return 0
    if argv[:1] == ["-c"]:
        sys.version_info = tuple(int(x) for x in version.split("."))[:3] + ("final", 0)
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        return 0
    if argv[:2] == ["-m", "venv"]:
        target = os.path.abspath(argv[2])
        os.makedirs(os.path.join(target, "bin"), exist_ok=True)
        with open(os.path.join(target, "pyvenv.cfg"), "w") as f:
            f.write(f"home = {os.path.dirname(path)}\nversion = {version}\n")
        for exe in ("python", "python3", "python" + ".".join(version.split(".")[:2]), "pip"):
            write_tool(os.path.join(target, "bin", exe))
        return 0
    if argv[:2] == ["-m", "pip"] and venv:
        if "install" in argv and "-e" in argv:
            write_tool(os.path.join(venv, "bin", "molmoact2-train"), "molmoact2-train")
        return 0
    return 0


def sudo(argv: list) -> int:
    record("sudo", argv)
    args = list(argv)
    while args and args[0].startswith("-"):
        args.pop(0)
    if args and args[0] == "env":
        args.pop(0)
    env = dict(os.environ)
    while args and re.fullmatch(r"[A-Za-z_]\w*=.*", args[0]):
        k, v = args.pop(0).split("=", 1)
        env[k] = v
    exe = shutil.which(args[0], path=env["PATH"]) if args else None
    fakes = (HERE, os.environ.get("FAKE_WORKERS_DIR", HERE))
    if exe and os.path.realpath(exe).startswith(fakes) and "system-bin" not in exe:
        return subprocess.run([exe, *args[1:]], env=env).returncode
    if not sys.stdin.isatty():
        sys.stdin.read()   # e.g. `... | sudo tee FILE`: recorded, nothing written
    return 0


def apt_get(argv: list) -> int:
    record("apt-get", argv)
    if "install" in argv:
        for pkg in argv[argv.index("install") + 1:]:
            if re.fullmatch(r"python3\.\d+", pkg):
                write_tool(os.path.join(os.environ["FAKE_WORKER_ROOT"], "usr-bin", pkg))
    return 0


def curl(argv: list) -> int:
    record("curl", argv)
    if any(a.endswith("/attributes/agent-worker-number") for a in argv) and os.environ.get("FAKE_WORKER_ID"):
        print(os.environ["FAKE_WORKER_ID"], end="")
        return 0
    return 22


def trainer(argv: list) -> int:
    fds = {name: os.readlink(f"/proc/self/fd/{fd}") for name, fd in (("stdout", 1), ("stderr", 2))}
    record("molmoact2-train", argv, sid=os.getsid(0), ppid=os.getppid(), **fds)
    print(f"fake trainer on worker {os.environ.get('FAKE_WORKER_ID')}: {' '.join(argv)}", flush=True)
    print("fake trainer: a line on stderr", file=sys.stderr, flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    deadline = time.monotonic() + float(os.environ.get("FAKE_TRAIN_SECONDS", "0"))
    while not stop and time.monotonic() < deadline:
        time.sleep(0.05)
    if stop:
        # stderr after SIGTERM: with a pipe to a killed tee this would raise BrokenPipeError
        print("fake trainer: SIGTERM, saved step 7, exiting 0", file=sys.stderr, flush=True)
        record("molmoact2-train-stopped", argv)
        return 0
    return int(os.environ.get("FAKE_TRAIN_EXIT", "0"))


def main() -> int:
    path, argv = sys.argv[1], sys.argv[2:]
    name = os.path.basename(path)
    if name == "gcloud":
        return gcloud(argv)
    if name == "kubectl":
        return kubectl(argv)
    if name == "sbatch":
        return sbatch(argv)
    if name == "srun":
        return srun(argv)
    if name == "sudo":
        return sudo(argv)
    if name == "apt-get":
        return apt_get(argv)
    if name == "curl":
        return curl(argv)
    if name == "molmoact2-train":
        return trainer(argv)
    if re.fullmatch(r"python(3(\.\d+)?)?|pip", name):
        if name == "pip":
            return fake_python(os.path.join(os.path.dirname(path), "python"), ["-m", "pip", *argv])
        return fake_python(os.path.abspath(path), argv)
    record(name, argv)   # gcsfuse, lsof, ...: recorded only
    return 0


if __name__ == "__main__":
    sys.exit(main())
