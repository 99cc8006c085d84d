"""Does each full-size recipe fit each pod? Runs molmoact2-compile for recipes x TPU pods (libtpu, no hardware)
and prints a Markdown table: fits, GiB per chip (of the chip's HBM), the mesh, analytic TFLOPs per step and the
step-time floor at the chip's bf16 peak. Each compile takes 2-7 minutes on 2 CPU cores.

  python benchmarks/pod_fit_table.py [--recipes posttrain,...] [--pods v5p-256,...] [--attention xla,splash]
      [--out DIR] [--extra RECIPE@POD=--config.x=1,--config.y=2 ...]

Pods are named as Cloud TPU sells them: v5p-N counts TensorCores (2 per chip: v5p-256 is v5p:4x4x8, 128 chips;
v5p-128 is 64 chips), v5e-N and v6e-N count chips (v5e-256 is v5e:16x16). molmoact2-compile also checks the
global batch against the pod's host count (4 chips per host), so a row whose batch the hosts do not divide is an
error, as it would be on the pod.

A batch that the pod's data-parallel size does not divide gets tensor parallelism over the rest of the chips
(mesh.fsdp = batch, mesh.tensor = chips / batch), which is what a user would set.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {"pretrain": "pretrain.py", "posttrain": "posttrain.py", "posttrain:think": "posttrain.py:think",
           "finetune:droid": "finetune.py:droid", "finetune_lora:droid": "finetune_lora.py:droid",
           "molmoer:rehearse": "molmoer.py:rehearse"}
# row label -> (Cloud TPU name, slices, chips in all)
PODS = {"v5p-256": ("v5p-256", 1, 128), "v5e-256": ("v5e-256", 1, 256), "v6e-256": ("v6e-256", 1, 256),
        "2 x v5e-256": ("v5e-256", 2, 512), "v5p-128": ("v5p-128", 1, 64)}
DEFAULT_PODS = ("v5p-256", "v5e-256", "v6e-256", "2 x v5e-256")  # the README's table
BATCH = {"pretrain": 128, "posttrain": 128, "posttrain:think": 128, "finetune:droid": 64, "finetune_lora:droid": 64,
         "molmoer:rehearse": 128}
DEFAULT_RECIPES = ("pretrain", "posttrain", "posttrain:think", "finetune:droid", "finetune_lora:droid")


def mesh_flags(batch: int, chips: int, slices: int) -> list[str]:
    per_slice = chips // slices
    flags = [f"--config.mesh.slice={slices}", "--config.mesh.data=1"]
    if batch % chips == 0:
        return flags + [f"--config.mesh.fsdp={per_slice}", "--config.mesh.tensor=1"]
    fsdp = batch // slices
    return flags + [f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={per_slice // fsdp}"]


def run(recipe: str, pod_label: str, extra: list[str], out_dir: str, attention: str = "auto") -> dict:
    pod, slices, chips = PODS[pod_label]
    tag = f"{recipe}@{pod_label}@{attention}".replace(" ", "").replace(":", "_")
    out = os.path.join(out_dir, tag + ".json")
    cmd = [sys.executable, "-m", "molmoact2_jax.cli.compile", f"--config={ROOT}/configs/{RECIPES[recipe]}",
           f"--pod={pod}", f"--num-slices={slices}", f"--out={out}",
           *mesh_flags(BATCH[recipe], chips, slices), f"--config.model.attention_impl={attention}", *extra]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    with open(os.path.join(out_dir, tag + ".log"), "w") as f:
        f.write(" ".join(cmd) + "\n" + r.stdout + r.stderr)
    if not os.path.exists(out):
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1][:200], "extra": extra}
    rep = json.load(open(out))
    rep["extra"] = extra
    return rep


def row(recipe, pod, rep) -> str:
    if "error" in rep:
        return f"| {recipe} | {pod} | error: {rep['error']} | | | | |"
    b = rep.get("bytes_per_device") or {}
    # GiB per chip: what decided "fits" (the compiler's peak; the argument + output + temp - alias sum, marked "sum",
    # where the backend gives no peak)
    gib = (f"{b['needed'] / 1024 ** 3:.1f}{'' if b.get('needed_by') == 'peak' else ' (sum)'} / "
           f"{rep['hbm_bytes_per_device'] / 1024 ** 3:.0f}") if b else f"> {rep['hbm_bytes_per_device'] / 1024 ** 3:.0f}"
    mesh = " ".join(f"{k}={v}" for k, v in rep["mesh"].items() if v > 1)
    recipe = f"{recipe} ({rep.get('attention', '?')})"
    extra = " ".join(e.replace("--config.", "") for e in rep["extra"] if "mesh" not in e)
    floor = rep.get("step_time_floor_seconds")
    floor = f"{floor:.3f} s" if floor else ""
    return (f"| {recipe} | {pod} | {'yes' if rep['fits'] else '**no**'} | {gib} | {mesh}{' ' + extra if extra else ''}"
            f" | {rep['model_flops_per_step'] / 1e12:.0f} / {rep['hardware_flops_per_step'] / 1e12:.0f} | {floor} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    ap.add_argument("--attention", default="auto", help="comma-separated model.attention_impl values: a row each "
                    "(auto = splash on TPU)")
    ap.add_argument("--pods", default=",".join(DEFAULT_PODS), help=f"comma-separated, of: {', '.join(PODS)}")
    ap.add_argument("--extra", action="append", default=[], help="RECIPE@POD=--config.a=1,--config.b=2")
    ap.add_argument("--out", default="pod_fit")
    args = ap.parse_args()
    unknown = [p for p in args.pods.split(",") if p not in PODS]
    if unknown:
        ap.error(f"--pods: unknown {unknown}; known: {', '.join(PODS)}")
    os.makedirs(args.out, exist_ok=True)
    extras = {}
    for e in args.extra:
        key, _, flags = e.partition("=")
        extras[key] = [f for f in flags.split(",") if f]
    print("| recipe (attention) | pod | fits | GiB per chip (by the peak / HBM) | mesh | TFLOPs per step (model / "
          "hardware) | step-time floor |")
    print("|---|---|---|---|---|---|---|")
    for recipe in args.recipes.split(","):
        for pod in args.pods.split(","):
            for attention in args.attention.split(","):
                rep = run(recipe, pod, extras.get(f"{recipe}@{pod}", []), args.out, attention)
                print(row(recipe, pod, rep), flush=True)


if __name__ == "__main__":
    main()
