"""User-error cases: serving, export and recording (see tests/user_errors/__init__.py).

Most cases need a checkpoint: one tiny one (testing.quick_checkpoint: random weights from the model's shapes, no
compile) is built once per machine under the system temp folder and copied into a case's folder when the case
breaks it (no norm stats, NaN stats, no manifest, ...), so every case still checks that its own folder is left as
it was.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from user_errors import Case

REPO = Path(__file__).resolve().parents[2]
UNWRITABLE = "/proc/molmoact2-user-errors-out"   # no one can create files in /proc, not even root
_held_sockets: list = []                        # ports held busy for the whole test session


@functools.cache
def tiny_checkpoint() -> Path:
    """A tiny params checkpoint with assets (norm_stats.json, tokenizer.json), built once. Its folder name carries a
    digest of the code that shapes it, so a changed model config gets a fresh one; built beside the final folder
    and renamed into place, so concurrent test workers never see a half-written one."""
    sources = [REPO / "molmoact2_jax" / "inference" / "testing.py", REPO / "molmoact2_jax" / "models" / "config.py"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"molmoact2-user-errors-{digest}"
    if not (root / "ckpt" / "model_config.json").exists():
        from molmoact2_jax.inference import testing as T   # lazy: imports jax; collection must not
        staging = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
        T.quick_checkpoint(str(staging / "ckpt"))
        try:
            os.rename(staging, root)
        except OSError:   # another worker was first: use its copy
            shutil.rmtree(staging, ignore_errors=True)
    return root / "ckpt"


def _copy(folder: Path, without=()) -> Path:
    """The tiny checkpoint copied to folder/ckpt, minus the relative paths in `without`."""
    dst = folder / "ckpt"
    shutil.copytree(tiny_checkpoint(), dst)
    for rel in without:
        p = dst / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dst


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _busy_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    _held_sockets.append(s)
    return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------- molmoact2-serve
def _serve_port_in_use(folder):
    return ["molmoact2-serve", "--checkpoint", str(tiny_checkpoint()), "--port", str(_busy_port())]


def _serve_nan_stats(folder):
    ckpt = _copy(folder)

    def nan_q01(d):
        d["metadata_by_tag"]["tiny_arm"]["action_stats"]["q01"][0] = float("nan")
    _edit_json(ckpt / "assets" / "norm_stats.json", nan_q01)
    return ["molmoact2-serve", "--checkpoint", str(ckpt), "--port", "0"]


def _serve_no_norm_stats(folder):
    return ["molmoact2-serve", "--checkpoint", str(_copy(folder, ["assets/norm_stats.json"])), "--port", "0"]


def _serve_no_manifest(folder):
    return ["molmoact2-serve", "--checkpoint", str(_copy(folder, ["params/manifest.ocdbt"])), "--port", "0"]


def _serve_run_without_steps(folder):
    """A run directory whose only step never committed (Orbax's temporary folder)."""
    (folder / "run" / "checkpoints" / "100.orbax-checkpoint-tmp-1700000000" / "state").mkdir(parents=True)
    return ["molmoact2-serve", "--checkpoint", "run", "--port", "0"]


# ----------------------------------------------------------------------------------------------- export-hf
def _export(ckpt, out="hf", *flags):
    return ["molmoact2-convert", "export-hf", str(ckpt), str(out), "--no-progress", *flags]


def _export_no_norm_stats(folder):
    return _export(_copy(folder, ["assets/norm_stats.json"]))


def _export_no_tokenizer(folder):
    return _export(_copy(folder, ["assets/tokenizer.json"]))


def _export_discrete_without_openfast(folder):
    """A discrete-only model (no flow head): without its OpenFAST folder no action can be decoded."""
    ckpt = _copy(folder)

    def discrete(cfg):
        cfg["use_action_expert"], cfg["action_mode"] = False, "discrete"
    _edit_json(ckpt / "model_config.json", discrete)
    return _export(ckpt)


def _export_read_only_out(folder):
    return _export(tiny_checkpoint(), UNWRITABLE)


def _export_no_manifest(folder):
    return _export(_copy(folder, ["params/manifest.ocdbt"]))


CASES: list[Case] = [
    Case("serve-port-in-use", _serve_port_in_use, "is already in use (another molmoact2-serve?)"),
    Case("serve-port-out-of-range", lambda f: ["molmoact2-serve", "--checkpoint", "ckpt", "--port", "70000"],
         "--port 70000: expected 0..65535"),
    Case("serve-nan-norm-stats", _serve_nan_stats,
         "metadata_by_tag['tiny_arm'].action_stats.q01[0] (joint_0) is nan: norm stats must be finite"),
    Case("serve-no-norm-stats", _serve_no_norm_stats, "give the norm stats with --norm-stats PATH (molmoact2-serve"),
    Case("serve-no-manifest", _serve_no_manifest, "ckpt/params/manifest.ocdbt: missing"),
    Case("serve-run-without-a-complete-step", _serve_run_without_steps,
         "run: a run directory with no complete checkpoint step (no <step>/ folders in"),
    Case("export-no-norm-stats", _export_no_norm_stats, "give the norm stats with --norm-stats PATH"),
    Case("export-no-tokenizer", _export_no_tokenizer, "give the tokenizer with --tokenizer PATH"),
    Case("export-discrete-without-openfast", _export_discrete_without_openfast, "--openfast PATH"),
    Case("export-read-only-out", _export_read_only_out, f"{UNWRITABLE}: cannot write there"),
    Case("export-no-manifest", _export_no_manifest, "ckpt/params/manifest.ocdbt: missing"),
    Case("record-read-only-out", lambda f: ["molmoact2-sim", "record", "--suite", "metaworld:reach-v3", "--episodes",
                                            "1", "--out", UNWRITABLE + "/demos", "--quiet"],
         f"--out {UNWRITABLE}/demos: cannot write there"),
]
