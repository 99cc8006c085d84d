"""Cluster discovery through JAX's own detection: a simulated GCE TPU VM pod (metadata server on 127.0.0.1)."""
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from molmoact2_jax.ports import coordinator_port
from train_harness import ROOT

pytestmark = pytest.mark.multiprocess

PROBE = """
import json, sys
import numpy as np
from molmoact2_jax.sharding import distributed
info = distributed.initialize()
import jax
from jax.experimental import multihost_utils
total = multihost_utils.process_allgather(np.array([jax.process_index() + 1]))
distributed.barrier("probe")
print("RECORD", json.dumps({**info.record(), "process_id": info.process_id, "sum": int(np.sum(total))}))
"""


class _Metadata(http.server.BaseHTTPRequestHandler):
    """One TPU VM worker's metadata server: the attributes JAX's GceTpuCluster asks for."""
    attributes: dict = {}
    asked: list = []

    def do_GET(self):
        prefix = "/computeMetadata/v1/instance/attributes/"
        key = self.path[len(prefix):] if self.path.startswith(prefix) else None
        self.asked.append(key)
        if self.headers.get("Metadata-Flavor") != "Google" or key not in self.attributes:
            self.send_response(404)
            self.end_headers()
            return
        body = self.attributes[key].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _metadata_server(worker: int, workers: int):
    handler = type(f"Worker{worker}", (_Metadata,), {"asked": [], "attributes": {
        "agent-worker-number": str(worker),
        "worker-network-endpoints": ",".join(["127.0.0.1"] * workers),
        "tpu-env": "ACCELERATOR_TYPE: 'v5litepod-8'\nTYPE: 'V5LITE_POD'\n"}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


def test_gce_tpu_vm_pod_is_found_through_jax_detection():
    """Two processes, each with its own worker's metadata server, no coordinator given: JAX's GceTpuCluster finds
    the pod (worker numbers and peers from the metadata), jax.distributed joins them, and a cross-process
    allgather works. The run record names the source."""
    servers = [_metadata_server(i, 2) for i in range(2)]
    port = coordinator_port()
    procs = []
    try:
        for i, (server, _) in enumerate(servers):
            env = dict(os.environ, JAX_PLATFORMS="cpu", GCE_METADATA_IP=f"127.0.0.1:{server.server_port}",
                       JAX_COORDINATOR_PORT=str(port),
                       PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests", "tpu_vm_sim"), ROOT]),
                       XLA_FLAGS="--xla_force_host_platform_device_count=2")
            for k in ("MOLMOACT2_COORDINATOR", "MOLMOACT2_NUM_PROCESSES", "MOLMOACT2_PROCESS_ID", "SLURM_JOB_ID",
                      "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
                env.pop(k, None)
            procs.append(subprocess.Popen([sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for server, _ in servers:
            server.shutdown()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    records = [json.loads(o.split("RECORD ", 1)[1].splitlines()[0]) for o in outs]
    for i, r in enumerate(records):
        assert r["source"] == "gcetpu" and r["process_id"] == i
        assert r["processes"] == 2 and r["devices"] == 4 and r["local_devices_per_process"] == 2
        assert r["coordinator"] == f"127.0.0.1:{port}"
        assert r["sum"] == 3   # 1 + 2: each process saw the other's value
    for _, handler in servers:
        assert "agent-worker-number" in handler.asked and "worker-network-endpoints" in handler.asked


def test_a_single_machine_without_a_cluster_stays_single():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    for k in ("MOLMOACT2_COORDINATOR", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
              "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
        env.pop(k, None)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout.split("RECORD ", 1)[1].splitlines()[0])
    assert record["source"] == "single" and record["processes"] == 1 and record["sum"] == 1
