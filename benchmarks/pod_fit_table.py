"""Does each full-size recipe fit each pod? Runs molmoact2-compile for recipes x TPU topologies (libtpu, no
hardware) and prints a Markdown table: fits, GiB per chip (of the chip's HBM), the mesh, analytic TFLOPs per step
and the step-time floor at the chip's bf16 peak. Each compile takes 2-4 minutes on 2 CPU cores.

  python benchmarks/pod_fit_table.py [--recipes posttrain,...] [--topologies v5p:4x4x8,...] [--out DIR]
      [--extra RECIPE@TOPOLOGY=--config.x=1,--config.y=2 ...]

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
           "finetune:droid": "finetune.py:droid", "finetune_lora:droid": "finetune_lora.py:droid"}
TOPOLOGIES = {"v5p-128": ("v5p:4x4x8", 1, 128), "v5e-256": ("v5e:16x16", 1, 256), "v6e-256": ("v6e:16x16", 1, 256),
              "2 x v5e-256": ("v5e:16x16", 2, 512)}
BATCH = {"pretrain": 128, "posttrain": 128, "posttrain:think": 128, "finetune:droid": 64, "finetune_lora:droid": 64}


def mesh_flags(batch: int, chips: int, slices: int) -> list[str]:
    per_slice = chips // slices
    flags = [f"--config.mesh.slice={slices}", "--config.mesh.data=1"]
    if batch % chips == 0:
        return flags + [f"--config.mesh.fsdp={per_slice}", "--config.mesh.tensor=1"]
    fsdp = batch // slices
    return flags + [f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={per_slice // fsdp}"]


def run(recipe: str, topo_name: str, extra: list[str], out_dir: str) -> dict:
    topology, slices, chips = TOPOLOGIES[topo_name]
    tag = f"{recipe}@{topo_name}".replace(" ", "").replace(":", "_")
    out = os.path.join(out_dir, tag + ".json")
    cmd = [sys.executable, "-m", "molmoact2_jax.compile", f"--config={ROOT}/configs/{RECIPES[recipe]}",
           f"--topology={topology}", f"--num-slices={slices}", f"--out={out}",
           *mesh_flags(BATCH[recipe], chips, slices), *extra]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    with open(os.path.join(out_dir, tag + ".log"), "w") as f:
        f.write(" ".join(cmd) + "\n" + r.stdout + r.stderr)
    if not os.path.exists(out):
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1][:200], "extra": extra}
    rep = json.load(open(out))
    rep["extra"] = extra
    return rep


def row(recipe, topo, rep) -> str:
    if "error" in rep:
        return f"| {recipe} | {topo} | error: {rep['error']} | | | | |"
    b = rep.get("bytes_per_device") or {}
    gib = f"{b['total'] / 1024 ** 3:.1f} / {rep['hbm_bytes_per_device'] / 1024 ** 3:.0f}" if b else \
        f"> {rep['hbm_bytes_per_device'] / 1024 ** 3:.0f}"
    mesh = " ".join(f"{k}={v}" for k, v in rep["mesh"].items() if v > 1)
    extra = " ".join(e.replace("--config.", "") for e in rep["extra"] if "mesh" not in e)
    floor = rep.get("step_time_floor_seconds")
    floor = f"{floor:.3f} s" if floor else ""
    return (f"| {recipe} | {topo} | {'yes' if rep['fits'] else '**no**'} | {gib} | {mesh}{' ' + extra if extra else ''}"
            f" | {rep['model_flops_per_step'] / 1e12:.0f} / {rep['hardware_flops_per_step'] / 1e12:.0f} | {floor} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES))
    ap.add_argument("--extra", action="append", default=[], help="RECIPE@TOPOLOGY=--config.a=1,--config.b=2")
    ap.add_argument("--out", default="pod_fit")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    extras = {}
    for e in args.extra:
        key, _, flags = e.partition("=")
        extras[key] = [f for f in flags.split(",") if f]
    print("| recipe | pod | fits | GiB per chip (total / HBM) | mesh | TFLOPs per step (model / hardware) | "
          "step-time floor |")
    print("|---|---|---|---|---|---|---|")
    for recipe in args.recipes.split(","):
        for topo in args.topologies.split(","):
            rep = run(recipe, topo, extras.get(f"{recipe}@{topo}", []), args.out)
            print(row(recipe, topo, rep), flush=True)


if __name__ == "__main__":
    main()
