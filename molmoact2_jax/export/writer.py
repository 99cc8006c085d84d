"""Writes an export folder: the two graphs, export.json and the assets the runtime's transforms need.

    DIR/export.json          shapes, dtypes, token layout, cameras, horizon, flow steps, what each graph takes
    DIR/prefix.onnx | prefix.stablehlo
    DIR/flow.onnx   | flow.stablehlo
    DIR/assets/norm_stats.json, tokenizer.json (or tokenizer.model)[, action_tokenizer/]

The folder is written under a temporary name beside DIR and renamed when complete, so an interrupted export
leaves no folder that looks whole. One export serves the norm tags that share a camera count and a horizon (the
graphs have fixed shapes apart from an optional symbolic batch); prompts are left-padded (masked, positions
unchanged, as the policy pads them) to the export's `prompt_tokens`.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from molmoact2_jax.export import graphs as graphs_lib
from molmoact2_jax.export import onnx_graphs, stablehlo_graphs
from molmoact2_jax.runtime.export_folder import EXPORT_FORMAT, EXPORT_JSON, GRAPH_FILES

GRAPH_FORMATS = ("onnx", "stablehlo")
# Precision of the graphs (the model's compute dtype and its weights), by format. ONNX stays fp32: jax2onnx 0.12.5
# mistypes a transpose in fp16 graphs (onnxruntime refuses them) and onnxruntime's CPU kernels have no bf16 Gemm.
PRECISIONS = {"onnx": ("fp32",), "stablehlo": ("fp32", "bf16")}
COMPUTE_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
# Prompt room left for the task text beyond the longest prompt without one (tokens): about 45 English words.
TASK_TOKEN_HEADROOM = 64
# ONNX protobufs cannot exceed 2 GiB: larger graphs keep their weights in a side file.
ONNX_INLINE_LIMIT = 1 << 30


class ExportError(ValueError):
    """Bad export request (one line, for the CLI)."""


def choose_tags(policy, norm_tags=None) -> list:
    """The tags one export can serve: all of `norm_tags` (default: every tag of the checkpoint) must share the
    camera count and horizon."""
    names = list(norm_tags) if norm_tags else sorted(policy.tags)
    for n in names:
        if n not in policy.tags:
            raise ExportError(f"unknown norm tag {n!r}; this checkpoint knows {sorted(policy.tags)}")
    tags = [policy.tags[n] for n in names]
    no_order = [t.name for t in tags if not policy.expected_cameras(t)]
    if no_order:
        raise ExportError(f"norm tag(s) {no_order} list no camera_keys in norm_stats.json: an export needs the "
                          f"camera count fixed; add camera_keys for the tag")
    shapes = {(len(policy.expected_cameras(t)), t.horizon) for t in tags}
    if len(shapes) > 1:
        raise ExportError(f"norm tags {names} differ in camera count or horizon {sorted(shapes)}: one export serves "
                          f"one shape; pass --norm-tag for the tags to export (once per shape)")
    return tags


def default_prompt_tokens(policy, tags) -> int:
    """The longest prompt of `tags` with an empty task, plus TASK_TOKEN_HEADROOM, rounded up to the policy's prompt
    bucket and capped at the model's max_sequence_length."""
    longest = 0
    for tag in tags:
        n = len(policy.expected_cameras(tag))
        images = [np.zeros((8, 8, 3), np.uint8)] * n
        inp = policy.build_inputs(images, "", np.zeros(tag.state_dim), tag)
        longest = max(longest, int(inp["prompt_tokens"]))
    bucket = policy.prompt_bucket
    tokens = -(-(longest + TASK_TOKEN_HEADROOM) // bucket) * bucket
    return min(tokens, int(policy.cfg.max_sequence_length))


def export_policy(policy, out_dir: str, graph_format: str, *, norm_tags=None, batch=1, prompt_tokens=None,
                  flow_kind: str = "step", num_steps=None, source: str = "", platforms=None,
                  precision: str = "fp32") -> dict:
    """Writes the export folder `out_dir` (must not exist or be empty); returns export.json's dict.
    `batch`: an int, or None for a symbolic batch dimension (StableHLO only); `precision`: see PRECISIONS."""
    if graph_format not in GRAPH_FORMATS:
        raise ExportError(f"--format {graph_format!r}: expected one of {GRAPH_FORMATS}")
    if precision not in PRECISIONS[graph_format]:
        raise ExportError(f"--precision {precision} is not available for --format {graph_format} (it takes "
                          f"{', '.join(PRECISIONS[graph_format])}; ONNX reduced precision does not load in "
                          f"onnxruntime from this exporter)")
    policy = at_precision(policy, precision)
    if batch is None and graph_format == "onnx":
        raise ExportError("a symbolic batch is exported for --format stablehlo only; pass --batch N for onnx")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise ExportError(f"{out_dir} exists and is not empty; pass a new folder")
    tags = choose_tags(policy, norm_tags)
    cams, horizon = len(policy.expected_cameras(tags[0])), tags[0].horizon
    longest_needed = default_prompt_tokens(policy, tags) if prompt_tokens is None else int(prompt_tokens)
    if longest_needed > policy.cfg.max_sequence_length:
        raise ExportError(f"--prompt-tokens {longest_needed} exceeds model.max_sequence_length="
                          f"{policy.cfg.max_sequence_length}")
    g = graphs_lib.policy_graphs(policy, longest_needed, cams, horizon, "batch" if batch is None else int(batch),
                                 flow_kind, num_steps)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(out_dir))}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "assets"))
    try:
        files = {}
        parts = [("prefix", g.prefix, g.prefix_inputs, g.context), ("flow", g.flow, g.flow_inputs, g.flow_outputs)]
        if g.guided is not None:
            parts.append(("guided", g.guided, g.guided_inputs, g.flow_outputs))
        for name, fn, inputs, outputs in parts:
            files[name] = GRAPH_FILES[graph_format][name]
            _write_graph(graph_format, os.path.join(tmp, files[name]), fn, inputs, outputs, name, platforms)
        info = _export_json(policy, graph_format, g, files, tags, cams, horizon, longest_needed, batch, source)
        info["precision"] = precision
        _write_assets(policy, tags, os.path.join(tmp, "assets"), info)
        with open(os.path.join(tmp, EXPORT_JSON), "w") as f:
            json.dump(info, f, indent=1)
        if os.path.exists(out_dir):
            os.rmdir(out_dir)   # empty (checked above)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def at_precision(policy, precision: str):
    """`policy` itself for fp32; else a Policy on the same assets computing in the reduced dtype, its floating-point
    weights cast to it (what the exported graphs then hold)."""
    if precision == "fp32":
        return policy
    dtype = COMPUTE_DTYPES[precision]
    cfg = policy.cfg.as_configdict()
    cfg.dtype = dtype
    params = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, policy.params)
    return type(policy)(cfg, params, policy.norm_stats, policy.tokenizer, policy.action_tokenizer,
                        prompt_bucket=policy.prompt_bucket, use_col_tokens=policy.use_col_tokens,
                        max_images=policy.max_images, strict_camera_count=policy.strict_camera_count,
                        normalize_language=policy.normalize_language)


def _write_graph(graph_format, path, fn, inputs, outputs, name, platforms):
    if graph_format == "onnx":
        import onnx

        model = onnx_graphs.to_onnx_model(fn, inputs, outputs, name)
        if model.ByteSize() > ONNX_INLINE_LIMIT:
            onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(path) + ".data")
        else:
            onnx.save_model(model, path)
    else:
        data = stablehlo_graphs.serialize(fn, inputs, **({"platforms": platforms} if platforms else {}))
        with open(path, "wb") as f:
            f.write(data)


def _export_json(policy, graph_format, g, files, tags, cams, horizon, prompt_tokens, batch, source) -> dict:
    def specs(items):
        return [s.to_json() for s in items]
    return {
        "format": EXPORT_FORMAT, "graph_format": graph_format, "precision": "fp32",
        "batch": batch, "prompt_tokens": prompt_tokens, "num_cameras": cams, "horizon": horizon,
        "num_steps": g.num_steps, "max_action_dim": int(policy.cfg.action_expert.max_action_dim),
        "tags": [t.name for t in tags],
        "cameras": {t.name: list(policy.expected_cameras(t)) for t in tags},
        "image_size": int(policy.cfg.vit.image_size),
        "model_config": json.loads(policy.cfg.as_configdict().to_json()),
        "policy": {"prompt_bucket": policy.prompt_bucket, "use_col_tokens": policy.use_col_tokens,
                   "max_images": policy.max_images, "strict_camera_count": policy.strict_camera_count,
                   "normalize_language": policy.normalize_language},
        "graphs": {"prefix": {"file": files["prefix"], "inputs": specs(g.prefix_inputs), "outputs": specs(g.context)},
                   "flow": {"file": files["flow"], "kind": g.flow_kind, "inputs": specs(g.flow_inputs),
                            "outputs": specs(g.flow_outputs)},
                   **({"guided": {"file": files["guided"], "inputs": specs(g.guided_inputs),
                                  "outputs": specs(g.flow_outputs)}} if g.guided is not None else {})},
        "assets": {},
        "source": {"checkpoint": str(source), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }


def _write_assets(policy, tags, assets_dir, info):
    raw = dict(policy.norm_stats.raw)
    raw["metadata_by_tag"] = {t.name: raw["metadata_by_tag"][t.name] for t in tags}
    with open(os.path.join(assets_dir, "norm_stats.json"), "w") as f:
        json.dump(raw, f, indent=1)
    name, layout = policy.tokenizer.save(assets_dir)
    info["assets"] = {"norm_stats": "assets/norm_stats.json", "tokenizer": f"assets/{name}", "action_tokenizer": None}
    info["token_layout"] = layout
    if policy.action_tokenizer is not None:   # not used by the continuous graphs; kept so the folder is complete
        policy.action_tokenizer.save(os.path.join(assets_dir, "action_tokenizer"))
        info["assets"]["action_tokenizer"] = "assets/action_tokenizer"
