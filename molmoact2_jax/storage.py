"""One path layer for everything the stack reads or writes: local folders and object storage (`gs://`) alike.

Paths are etils `epath.Path` (what Orbax uses), so a run directory, a checkpoint or an asset can be a bucket.
Object storage has no rename and no append: writers here put whole objects (a file is written once, complete), and
what grows (metrics.jsonl) is written locally and uploaded whole (training/metrics.py). Local paths are made
absolute; a URI is never passed through `os.path.abspath`.

`gs://` needs the cloud clients of the `gcs` extra (gcsfs, google-cloud-storage); without them, or for a bucket that
does not exist or a directory that cannot be written, the error is one line naming the path (StorageError, a
ValueError the commands report as a user error with exit code 2).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import uuid

from etils import epath

REMOTE_PREFIXES = ("gs://",)
GCS_EXTRA_HINT = "pip install 'molmoact2-jax[gcs]'"


class StorageError(ValueError):
    """A path that cannot be used as given (missing cloud extra, no such bucket, no write access)."""


def is_remote(path) -> bool:
    return str(path).startswith(REMOTE_PREFIXES) or "://" in str(path)


def as_path(path) -> epath.Path:
    """An epath for `path`: local paths absolute (with `~` expanded), URIs as they are."""
    text = os.fspath(path) if not isinstance(path, epath.Path) else str(path)
    if is_remote(text):
        if text.startswith("gs://"):
            _require_gcs(text)
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def _require_gcs(path: str) -> None:
    missing = [m for m in ("gcsfs", "google.cloud.storage") if not _has_module(m)]
    if missing:
        raise StorageError(f"{path}: gs:// paths need the cloud storage clients ({', '.join(missing)}): "
                           f"{GCS_EXTRA_HINT}")


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def missing_bucket(path) -> bool:
    """True when `path` is a URI whose bucket does not exist (the usual typo behind "not found"); False for local
    paths and existing buckets."""
    text = str(path)
    if not is_remote(text):
        return False
    scheme, _, rest = text.partition("://")
    try:
        return not as_path(f"{scheme}://{rest.split('/')[0]}").exists()
    except OSError:
        return False


def local_write_problem(folder) -> tuple[str, str | None]:
    """(where, problem) for a local folder a command is about to create or write: `where` is the folder, or the
    nearest existing parent it would be created in; `problem` is None when a file can be made and removed there,
    else why not ("a file, not a folder", or the OS's reason). A file is really made, as permission bits tell
    nothing for root or on a read-only mount; nothing is left behind and nothing is created when it fails."""
    where = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    while not os.path.exists(where) and where != os.path.dirname(where):
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        return where, "a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as e:
        return where, e.strerror or type(e).__name__
    return where, None


def check_writable(directory) -> epath.Path:
    """Creates `directory` (and parents) and proves a file can be written and deleted there; one line otherwise.
    Run before a run writes anything, so a wrong bucket or a read-only folder fails at start, not at the first
    checkpoint."""
    p = as_path(directory)
    probe = p / f".molmoact2-write-probe-{uuid.uuid4().hex[:12]}"
    try:
        with quiet_cloud_logs():
            p.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - every backend raises its own types; all mean "cannot write here"
        raise StorageError(f"{p}: cannot write there ({_reason(e, p)}); the run directory must be a writable folder or "
                           f"an existing bucket you can write to") from None
    return p


@contextlib.contextmanager
def quiet_cloud_logs():
    """gcsfs logs a traceback for every failed request before raising; the caller turns the error into one line."""
    loggers = [logging.getLogger(n) for n in ("gcsfs", "fsspec")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _reason(e: BaseException, path) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    name = type(e).__name__
    if isinstance(e, FileNotFoundError):
        return "no such bucket" if is_remote(path) else f"{name}: {text[:160]}"
    return f"{name}: {text[:160]}" if text else name


def write_text(path, text: str) -> None:
    """Writes a whole file: locally through a temp file and a rename (never half-written); on object storage as
    one object (an upload is all or nothing)."""
    p = as_path(path)
    if is_remote(p):
        p.write_text(text)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(text)
    os.replace(tmp, p)


def upload_file(local: str, dest) -> None:
    """Copies a local file to `dest` (local or remote) whole."""
    d = as_path(dest)
    if is_remote(d):
        d.parent.mkdir(parents=True, exist_ok=True)
        with open(local, "rb") as src, d.open("wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        return
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.parent / f".{d.name}.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copyfile(local, tmp)
    os.replace(tmp, d)


def copy_tree(src, dst, skip_existing: bool = True) -> list[str]:
    """Copies the files under `src` to `dst` (either side local or remote), file by file. With `skip_existing`, a
    file already at the destination with the same size is kept, so a copy cut short is finished by the next call.
    Returns the relative names copied."""
    s, d = as_path(src), as_path(dst)
    copied = []
    for rel in _walk_files(s):
        target = d / rel
        if skip_existing and target.exists() and target.stat().length == (s / rel).stat().length:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with (s / rel).open("rb") as fin, target.open("wb") as fout:
            shutil.copyfileobj(fin, fout, 8 << 20)
        copied.append(rel)
    return copied


def _walk_files(root: epath.Path, prefix: str = "") -> list[str]:
    out = []
    for child in sorted(root.iterdir(), key=lambda c: c.name):
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            out += _walk_files(child, rel + "/")
        else:
            out.append(rel)
    return out


def move_tree(src, dst) -> None:
    """Renames a folder locally; on object storage (no rename) copies it, then deletes the source."""
    s, d = as_path(src), as_path(dst)
    if not is_remote(s) and not is_remote(d):
        shutil.move(str(s), str(d))
        return
    copy_tree(s, d, skip_existing=False)
    s.rmtree()


class LocalCopy:
    """A local folder holding `path`'s files, for readers that need a real file (safetensors, tokenizers, ...):
    the folder itself when local, else a temporary download removed on exit."""

    def __init__(self, path):
        self.path = as_path(path)
        self._tmp = None

    def __enter__(self) -> str:
        if not is_remote(self.path):
            return str(self.path)
        self._tmp = tempfile.mkdtemp(prefix="molmoact2-")
        if self.path.is_dir():
            local = os.path.join(self._tmp, self.path.name)
            copy_tree(self.path, local, skip_existing=False)
        else:
            local = os.path.join(self._tmp, self.path.name)
            with self.path.open("rb") as fin, open(local, "wb") as fout:
                shutil.copyfileobj(fin, fout, 8 << 20)
        return local

    def __exit__(self, *exc) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


class LocalStaging:
    """A local folder to write `dest`'s files into, for writers that need real files (safetensors, np.save): `dest`
    itself when local (created), else a temporary folder whose files are copied to `dest` on a clean exit (each
    object whole; nothing is uploaded when the block raises) and which is removed in any case."""

    def __init__(self, dest):
        self.dest = as_path(dest)
        self._tmp = None

    def __enter__(self) -> str:
        if not is_remote(self.dest):
            self.dest.mkdir(parents=True, exist_ok=True)
            return str(self.dest)
        self._tmp = tempfile.mkdtemp(prefix="molmoact2-stage-")
        return self._tmp

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if self._tmp and exc_type is None:
                copy_tree(self._tmp, self.dest, skip_existing=False)
        finally:
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)


def download(path, into: str) -> str:
    """Copies a remote file or folder to the local folder `into` (kept); a local path is returned unchanged."""
    p = as_path(path)
    if not is_remote(p):
        return str(p)
    local = os.path.join(into, p.name)
    if p.is_dir():
        copy_tree(p, local)
    else:
        os.makedirs(into, exist_ok=True)
        with p.open("rb") as fin, open(local, "wb") as fout:
            shutil.copyfileobj(fin, fout, 8 << 20)
    return local
