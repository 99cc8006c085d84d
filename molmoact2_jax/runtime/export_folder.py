"""Reads and checks an export folder (what `molmoact2-export` writes; docs/export.md, "Deploy without JAX").

    DIR/export.json                   format, shapes, dtypes, norm tags, cameras, horizon, flow steps, graph specs
    DIR/prefix.onnx, DIR/flow.onnx    (graph_format "onnx"; prefix.stablehlo / flow.stablehlo for "stablehlo")
    DIR/assets/norm_stats.json, DIR/assets/tokenizer.json (or tokenizer.model)[, DIR/assets/action_tokenizer/]

`ExportFolder.load(DIR)` parses export.json and resolves every file it names; a missing or malformed piece is an
`ExportFolderError` (a ValueError) of one line naming the path and what to do. The graphs themselves are not
parsed here (the runtime that runs them does that). No JAX: json, numpy dtypes and the storage path layer.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from molmoact2_jax import storage

__all__ = ["EXPORT_FORMAT", "EXPORT_JSON", "GRAPH_FILES", "FLOW_KINDS", "PREFIX_INPUTS", "ExportFolder",
           "ExportFolderError", "GraphSpec", "TensorSpec", "is_export_folder"]

EXPORT_FORMAT = "molmoact2_export.v1"
EXPORT_JSON = "export.json"
GRAPH_FILES = {"onnx": {"prefix": "prefix.onnx", "flow": "flow.onnx", "guided": "guided.onnx"},
               "stablehlo": {"prefix": "prefix.stablehlo", "flow": "flow.stablehlo", "guided": "guided.stablehlo"}}
FLOW_KINDS = ("loop", "step")
PREFIX_INPUTS = ("input_ids", "images", "pooled_idx", "attention_mask")
REEXPORT = "re-run molmoact2-export"
# the inputs the flow graph takes after the prefix's outputs, per kind
FLOW_EXTRA_INPUTS = {"loop": ("noise", "action_dim_valid"), "step": ("x", "t", "action_dim_valid")}


class ExportFolderError(ValueError):
    """An export folder that cannot be used as it is; the message (one line) names the path and the fix."""


def is_export_folder(path) -> bool:
    """Whether `path` is a folder holding export.json (what `molmoact2-export` writes), not a checkpoint."""
    p = storage.as_path(path)
    return p.is_dir() and (p / EXPORT_JSON).exists()


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple        # ints; a str names a symbolic dimension (e.g. "batch")
    dtype: np.dtype

    def matches(self, shape) -> bool:
        """Whether a concrete shape fits (symbolic dimensions match anything)."""
        return len(shape) == len(self.shape) and all(isinstance(s, str) or int(s) == int(n)
                                                     for s, n in zip(self.shape, shape))


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    file: object            # epath.Path of the graph file
    inputs: tuple           # TensorSpec, in the graph's input order
    outputs: tuple          # TensorSpec, in the graph's output order
    kind: str | None = None   # the flow graph's "loop" / "step"


@dataclasses.dataclass(frozen=True)
class ExportFolder:
    """A parsed export.json with its files resolved (epath.Path; local folders or gs://)."""
    path: object                  # the folder
    meta: dict                    # export.json as parsed
    graph_format: str             # "onnx" | "stablehlo"
    precision: str
    batch: int | str | None       # an int, or None / a str for a symbolic batch
    model_config: dict            # the model ConfigDict as JSON
    policy: dict                  # ObservationCodec settings: prompt_bucket, use_col_tokens, max_images, ...
    prompt_tokens: int            # the prefix graph's input_ids length (prompts are left-padded to it)
    num_cameras: int
    horizon: int
    num_steps: int
    max_action_dim: int
    tags: tuple                   # the norm tags this export serves
    prefix: GraphSpec
    flow: GraphSpec
    norm_stats: object            # path of assets/norm_stats.json
    tokenizer: object             # path of the tokenizer file
    action_tokenizer: object | None
    token_layout: dict | None     # the tokenizer's token layout as saved (None: computed from the file)
    guided: GraphSpec | None = None   # step exports: the real-time-chunking velocity (prefix outputs + x, t, valid
    #                                   dims, target, inference_delay, overlap_end, max_guidance_weight)

    @classmethod
    def load(cls, directory) -> "ExportFolder":
        root = storage.as_path(directory)
        if not root.is_dir():
            raise ExportFolderError(f"export folder not found: {root} ({REEXPORT} to write one)")
        meta_path = root / EXPORT_JSON
        if not meta_path.exists():
            raise ExportFolderError(f"{meta_path} is missing: {root} is not an export folder ({REEXPORT} to write "
                                    f"a complete one)")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ExportFolderError(f"{meta_path} is not valid JSON ({e}); {REEXPORT}") from None
        where = str(meta_path)
        if not isinstance(meta, dict):
            raise ExportFolderError(f"{where}: expected a JSON object; {REEXPORT}")
        fmt = meta.get("format")
        if fmt != EXPORT_FORMAT:
            raise ExportFolderError(f"{where}: format {fmt!r} is not supported; this molmoact2_jax.runtime reads "
                                    f"{EXPORT_FORMAT!r} ({REEXPORT} with this version, or use the matching runtime)")
        reader = _Reader(where)
        graph_format = reader.get(meta, "graph_format", str)
        if graph_format not in GRAPH_FILES:
            raise ExportFolderError(f"{where}: graph_format {graph_format!r} is not one of {sorted(GRAPH_FILES)}; "
                                    f"{REEXPORT}")
        graphs = reader.get(meta, "graphs", dict)
        prefix = reader.graph(root, graphs, "prefix")
        flow = reader.graph(root, graphs, "flow")
        guided = reader.graph(root, graphs, "guided") if "guided" in graphs else None
        if guided is not None and (flow.kind != "step" or len(guided.inputs) != len(prefix.outputs) + 7):
            raise ExportFolderError(f"{where}: graphs.guided takes {len(guided.inputs)} inputs with a "
                                    f"{flow.kind!r} flow; expected a step flow and the prefix's outputs + x, t, "
                                    f"action_dim_valid, target, inference_delay, overlap_end, max_guidance_weight; "
                                    f"{REEXPORT}")
        names = tuple(s.name for s in prefix.inputs)
        if sorted(names) != sorted(PREFIX_INPUTS):
            raise ExportFolderError(f"{where}: graphs.prefix.inputs are {list(names)}; expected "
                                    f"{list(PREFIX_INPUTS)} (in any order); {REEXPORT}")
        if flow.kind not in FLOW_KINDS:
            raise ExportFolderError(f"{where}: graphs.flow.kind {flow.kind!r} is not one of {list(FLOW_KINDS)}; "
                                    f"{REEXPORT}")
        want = len(prefix.outputs) + len(FLOW_EXTRA_INPUTS[flow.kind])
        if len(flow.inputs) != want or not flow.outputs:
            raise ExportFolderError(f"{where}: graphs.flow ({flow.kind}) takes {len(flow.inputs)} inputs and gives "
                                    f"{len(flow.outputs)} outputs; expected the prefix's {len(prefix.outputs)} "
                                    f"outputs + {' + '.join(FLOW_EXTRA_INPUTS[flow.kind])} -> one output; "
                                    f"{REEXPORT}")
        tags = reader.get(meta, "tags", list)
        if not tags or not all(isinstance(t, str) for t in tags):
            raise ExportFolderError(f"{where}: tags must be a non-empty list of norm tag names; {REEXPORT}")
        assets = reader.get(meta, "assets", dict)
        layout = meta.get("token_layout")
        if layout is not None and not isinstance(layout, dict):
            raise ExportFolderError(f"{where}: token_layout must be an object; {REEXPORT}")
        return cls(path=root, meta=meta, graph_format=graph_format, precision=str(meta.get("precision", "fp32")),
                   batch=meta.get("batch", 1), model_config=reader.get(meta, "model_config", dict),
                   policy=reader.get(meta, "policy", dict), prompt_tokens=reader.count(meta, "prompt_tokens"),
                   num_cameras=reader.count(meta, "num_cameras"), horizon=reader.count(meta, "horizon"),
                   num_steps=reader.count(meta, "num_steps"), max_action_dim=reader.count(meta, "max_action_dim"),
                   tags=tuple(tags), prefix=prefix, flow=flow, guided=guided,
                   norm_stats=reader.file(root, assets, "norm_stats", "assets"),
                   tokenizer=reader.file(root, assets, "tokenizer", "assets"),
                   action_tokenizer=reader.file(root, assets, "action_tokenizer", "assets", optional=True),
                   token_layout=layout)


class _Reader:
    """export.json field access with one-line errors naming the file and the field."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, what: str):
        raise ExportFolderError(f"{self.where}: {what}; {REEXPORT}")

    def get(self, obj: dict, key: str, kind, field: str | None = None):
        field = field or key
        if key not in obj:
            self.fail(f"no {field}")
        value = obj[key]
        if not isinstance(value, kind):
            self.fail(f"{field} must be a {kind.__name__}, got {type(value).__name__}")
        return value

    def count(self, obj: dict, key: str) -> int:
        value = self.get(obj, key, int)
        if isinstance(value, bool) or value < 1:
            self.fail(f"{key} must be a positive integer, got {value!r}")
        return value

    def file(self, root, obj: dict, key: str, section: str, optional: bool = False):
        value = obj.get(key)
        if value is None:
            if optional:
                return None
            self.fail(f"{section}.{key} is not given")
        if not isinstance(value, str) or not value or value.startswith("/") or ".." in value.split("/"):
            self.fail(f"{section}.{key} must be a path inside the folder, got {value!r}")
        path = root / value
        if not path.exists():
            raise ExportFolderError(f"{path} is missing ({section}.{key} of {self.where}); the export folder is "
                                    f"incomplete: {REEXPORT}")
        return path

    def specs(self, obj: dict, key: str, field: str) -> tuple:
        items = self.get(obj, key, list, field)
        out = []
        for j, s in enumerate(items):
            if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not isinstance(s.get("shape"), list):
                self.fail(f"{field}[{j}] must be {{name, shape, dtype}}")
            if not all(isinstance(n, str) or (isinstance(n, int) and not isinstance(n, bool) and n >= 0)
                       for n in s["shape"]):
                self.fail(f"{field}[{j}] ({s['name']}): shape {s['shape']} must hold sizes or dimension names")
            try:
                if not isinstance(s.get("dtype"), str):
                    raise TypeError
                dtype = np.dtype(s["dtype"])
            except TypeError:
                self.fail(f"{field}[{j}] ({s['name']}): unknown dtype {s.get('dtype')!r}")
            out.append(TensorSpec(s["name"], tuple(s["shape"]), dtype))
        return tuple(out)

    def graph(self, root, graphs: dict, name: str) -> GraphSpec:
        g = self.get(graphs, name, dict, f"graphs.{name}")
        return GraphSpec(file=self.file(root, g, "file", f"graphs.{name}"),
                         inputs=self.specs(g, "inputs", f"graphs.{name}.inputs"),
                         outputs=self.specs(g, "outputs", f"graphs.{name}.outputs"),
                         kind=g.get("kind"))
