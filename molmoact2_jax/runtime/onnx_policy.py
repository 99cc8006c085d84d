"""`OnnxPolicy`: an export folder's ONNX graphs behind the `Policy.predict_action` interface, without JAX.

    policy = OnnxPolicy.load("export_dir")                  # export.json, prefix.onnx, flow.onnx, assets/
    out = policy.predict_action(images, task, state, norm_tag)
    out.actions                                             # float32 [n_action_steps, action_dim], robot units

One call: the request checks, prompt and image patches of the JAX Policy (inference/observation.py), the prompt
left-padded to the export's fixed `prompt_tokens` -> the prefix graph (backbone + the action expert's projected
context, once) -> the flow graph: "loop" runs every Euler step inside the graph; "step" gives the velocity and this
module integrates (x0 = noise * valid dims; for k in 0..N-1: t = float32(k/N), x = (x + v / N) * valid dims, as
models/flow.py does) -> the tag's action dims, n_action_steps, un-normalized, refused when NaN/inf.

What an export serves: mode="continuous" (the flow head) with the Euler step count it was exported with, the norm
tags of export.json (one camera count and horizon), and real-time chunking (prev_chunk, inference_delay,
execution_horizon) in "step" exports, whose guided graph holds the vector-Jacobian product of each guided step.
Not here: mode="discrete" and think=True (their token loops stay in JAX); use the JAX Policy for those.

Noise: explicit `noise` (horizon, 32) is the exact path (same noise, same actions as the JAX Policy up to float
rounding). `seed` alone draws `np.random.default_rng(seed).standard_normal((horizon, 32), float32)`: reproducible
here, but NOT the JAX Policy's stream (which draws with jax.random), so the same seed gives other actions there.
"""
from __future__ import annotations

import threading

import ml_collections
import numpy as np

from data_pipelines.norm_stats import NormStats, TagInfo
from molmoact2_jax import storage
from molmoact2_jax.inference.observation import ActionResult, CodecRequests, ObservationCodec, PromptTooLongError
from molmoact2_jax.runtime.export_folder import REEXPORT, ExportFolder, ExportFolderError, GraphSpec
from molmoact2_jax.tokenizers.text import TextTokenizer

try:
    import onnxruntime as ort
except ImportError:   # the `runtime` extra; OnnxPolicy.load says how to install it
    ort = None

__all__ = ["OnnxPolicy", "default_providers"]

INSTALL_HINT = "pip install 'molmoact2-jax[runtime]' (or onnxruntime-gpu for CUDA)"
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
_POLICY_SETTINGS = ("prompt_bucket", "use_col_tokens", "max_images", "strict_camera_count", "normalize_language")


def default_providers() -> list:
    """CUDA when this onnxruntime build has it, then CPU (TensorRT and others only when asked for)."""
    available = ort.get_available_providers()
    return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class OnnxPolicy(CodecRequests):
    """An export folder run by onnxruntime. `predict_action` feeds one observation (a batch-1 or symbolic-batch
    export); `run_batch` feeds the graphs a batch (an export made with --batch N, or symbolic). Thread-safe: calls
    are serialized by a lock."""

    has_expert = True   # an export holds the flow head: molmoact2-serve picks mode="continuous"

    def __init__(self, export: ExportFolder, codec: ObservationCodec, prefix_session, flow_session,
                 guided_session=None):
        self.export = export
        self.codec = codec
        self.cfg = codec.cfg
        self.norm_stats = codec.norm_stats
        self.tags = codec.tags
        self.export_tags = list(export.tags)   # the norm tags served, in export.json's order
        self.tokenizer = codec.tokenizer
        self.model_inputs = codec.model_inputs
        self.image_grid = codec.image_grid
        self.prompt_tokens = export.prompt_tokens
        self.num_cameras = export.num_cameras
        self.horizon = export.horizon
        self.num_steps = export.num_steps
        self.flow_kind = export.flow.kind
        self._prefix, self._flow, self._guided = prefix_session, flow_session, guided_session
        self._guided_names = [i.name for i in guided_session.get_inputs()] if guided_session is not None else []
        self._prefix_names = [i.name for i in prefix_session.get_inputs()]
        self._flow_names = [i.name for i in flow_session.get_inputs()]
        # mask_action_dim_padding=False: the flow does not zero the padding dims (models/flow.py)
        self._mask_padding = bool(self.cfg.flow.mask_action_dim_padding)
        self._lock = threading.Lock()
        self._calls = 0

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, export_dir, providers=None, intra_op_threads: int | None = None,
             strict_camera_count: bool | None = None) -> "OnnxPolicy":
        """Reads and checks the export folder, builds the tokenizer and norm stats as the JAX Policy does, and opens
        the two graphs. `providers`: onnxruntime execution providers (default: CUDA when available, then CPU);
        `intra_op_threads`: onnxruntime's intra-op thread count (default: its own choice); `strict_camera_count`:
        overrides export.json's policy setting (the graphs take export.json's num_cameras images either way). A
        folder that cannot be used is an ExportFolderError (a ValueError) of one line."""
        export = ExportFolder.load(export_dir)
        if export.graph_format != "onnx":
            raise ExportFolderError(f"{export.path}: graph_format {export.graph_format!r}; OnnxPolicy runs ONNX "
                                    f"exports ({REEXPORT} --format onnx)")
        if ort is None:
            raise ImportError(f"OnnxPolicy needs onnxruntime: {INSTALL_HINT}")
        codec = cls._codec(export, strict_camera_count)
        options = ort.SessionOptions()
        options.log_severity_level = 3   # errors only: provider placement notes are not the user's business
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        providers = list(providers) if providers is not None else default_providers()
        sessions = [cls._session(export, spec, name, options, providers)
                    for name, spec in (("prefix", export.prefix), ("flow", export.flow), ("guided", export.guided))
                    if spec is not None]
        return cls(export, codec, *sessions)

    @staticmethod
    def _codec(export: ExportFolder, strict_camera_count: bool | None = None) -> ObservationCodec:
        where = f"{export.path}"
        try:
            cfg = ml_collections.ConfigDict(export.model_config)
            if int(cfg.action_expert.max_action_dim) != export.max_action_dim:
                raise ValueError(f"max_action_dim {export.max_action_dim} differs from model_config's "
                                 f"{cfg.action_expert.max_action_dim}")
            stats = NormStats.load(str(export.norm_stats))
            if export.token_layout is not None:   # the layout the exporting policy used (config.json ids included)
                tok = TextTokenizer.load_saved(str(export.tokenizer), export.token_layout)
            else:
                tok = TextTokenizer.from_file(str(export.tokenizer))
            settings = {k: export.policy[k] for k in _POLICY_SETTINGS if k in export.policy}
            if strict_camera_count is not None:
                settings["strict_camera_count"] = bool(strict_camera_count)
            codec = ObservationCodec(cfg, stats, tok, tags=export.tags, **settings)
        except (ValueError, KeyError, AttributeError, TypeError, FileNotFoundError) as e:
            raise ExportFolderError(f"{where}: {_first_line(e)} ({REEXPORT})") from None
        for tag in codec.tags.values():
            cams = len(codec.expected_cameras(tag))
            if tag.horizon != export.horizon or cams not in (0, export.num_cameras):
                raise ExportFolderError(f"{where}: norm tag {tag.name!r} has horizon {tag.horizon} and {cams} cameras; "
                                        f"the graphs take horizon {export.horizon} and {export.num_cameras} cameras "
                                        f"({REEXPORT})")
            if tag.action_dim > export.max_action_dim:
                raise ExportFolderError(f"{where}: norm tag {tag.name!r} has action_dim {tag.action_dim} > "
                                        f"max_action_dim {export.max_action_dim} ({REEXPORT})")
        return codec

    @staticmethod
    def _session(export: ExportFolder, spec: GraphSpec, name: str, options, providers):
        if storage.is_remote(spec.file):
            raise ExportFolderError(f"{spec.file}: onnxruntime reads local files; copy the export folder to this "
                                    f"machine first")
        try:
            sess = ort.InferenceSession(str(spec.file), sess_options=options, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own (non-ValueError) types for bad files
            raise ExportFolderError(f"{spec.file}: onnxruntime cannot load the {name} graph ({_first_line(e)}); "
                                    f"{REEXPORT}") from None
        n_in, n_out = len(sess.get_inputs()), len(sess.get_outputs())
        if n_in != len(spec.inputs) or n_out != len(spec.outputs):
            raise ExportFolderError(f"{spec.file}: the graph takes {n_in} inputs and gives {n_out} outputs; "
                                    f"export.json says {len(spec.inputs)} and {len(spec.outputs)} ({REEXPORT})")
        return sess

    @property
    def providers(self) -> list:
        """The execution providers the graphs run on."""
        return self._prefix.get_providers()

    # ------------------------------------------------------------------ request checks (the JAX Policy's)
    def build_inputs(self, images, task: str, state, tag: TagInfo, think: bool = False,
                     normalize_language: bool | None = None) -> dict:
        """The prefix graph's inputs of one observation: the prompt left-padded to exactly `prompt_tokens`."""
        if think:
            raise ValueError("think=True (MolmoThink depth reasoning) is not in an export folder")
        try:
            return self.codec.build_inputs(images, task, state, tag, False, normalize_language,
                                           pad_to=self.prompt_tokens)
        except PromptTooLongError as e:
            raise PromptTooLongError(f"prompt of {e.tokens} tokens exceeds this export's prompt length of "
                                     f"{self.prompt_tokens} tokens (export.json prompt_tokens); shorten the "
                                     f"instruction or {REEXPORT} with a larger --prompt-tokens", e.tokens,
                                     e.limit) from None

    # ------------------------------------------------------------------ main entry point
    def predict_action(self, images, task: str, state, norm_tag: str, mode: str = "continuous", think: bool = False,
                       depth_cache=None, num_steps: int | None = None, n_action_steps: int | None = None,
                       seed: int | None = None, noise=None, normalize_language: bool | None = None,
                       prev_chunk=None, inference_delay: int = 0, execution_horizon: int | None = None,
                       max_guidance_weight: float = 5.0) -> ActionResult:
        """As `Policy.predict_action` (inference/policy.py), for what an export serves: mode="continuous", the
        exported num_steps (None means it), no think, no prev_chunk (ValueError, one line, otherwise). `noise`
        (horizon, 32) is used as given; `seed` alone draws numpy noise (not the JAX Policy's stream; see the module
        docstring). Raises ValueError for bad inputs and NonFiniteActionError rather than return NaN/inf actions.
        `depth_cache` and `max_guidance_weight` are accepted for the interface and unused."""
        if think:
            raise ValueError("think=True (MolmoThink depth reasoning) is not in an export folder; this export serves "
                             "mode='continuous' without think (use the JAX Policy for think)")
        if mode == "discrete":
            raise ValueError("mode='discrete' (OpenFAST tokens) is not in an export folder; this export serves "
                             "mode='continuous' (use the JAX Policy for discrete)")
        if prev_chunk is not None and self._guided is None:
            raise ValueError("real-time chunking (prev_chunk) needs the guided graph, which only --flow step exports "
                             f"hold; this export's flow is {self.flow_kind!r} ({REEXPORT} --flow step)")
        if num_steps is not None and int(num_steps) != self.num_steps:
            raise ValueError(f"num_steps={num_steps}: this export runs the {self.num_steps} Euler steps it was "
                             f"exported with (export.json num_steps); leave num_steps unset or {REEXPORT} with "
                             f"--num-steps {num_steps}")
        req = self.codec.check_request(images, state, norm_tag, mode, n_action_steps)
        tag = req.tag
        rtc_args, prev, target, delay = self.codec.rtc_guidance(prev_chunk, inference_delay, execution_horizon,
                                                                max_guidance_weight, tag, req.state, req.n_steps)
        if len(req.images) != self.num_cameras:
            cams = self.codec.expected_cameras(tag)
            raise ValueError(f"this export takes {self.num_cameras} images" + (f" ({', '.join(cams)})" if cams else "")
                             + f", got {len(req.images)}")
        if isinstance(self.export.batch, int) and self.export.batch != 1:
            raise ValueError(f"this export's graphs take a batch of {self.export.batch} observations: feed them with "
                             f"run_batch, or {REEXPORT} with --batch 1 for predict_action")
        h, d = tag.horizon, tag.action_dim
        dmax = self.codec.max_action_dim
        if noise is not None:
            x0 = self.codec.check_noise(noise, h)
        else:   # numpy's generator: reproducible per seed, not the JAX Policy's jax.random stream
            x0 = np.random.default_rng(None if seed is None else int(seed)).standard_normal((h, dmax), np.float32)
            x0 = x0[None]
        inp = self.build_inputs(req.images, task, req.state, tag, False, normalize_language)
        dim_valid = self.codec.dim_valid(tag)
        prefix_arrays = {"input_ids": inp["ids"], "images": inp["images"], "pooled_idx": inp["pooled"],
                         "attention_mask": inp["attn"]}
        prefix_feeds = self._feeds("prefix", self._prefix_names, self.export.prefix,
                                   [prefix_arrays[s.name] for s in self.export.prefix.inputs])
        with self._lock:
            self._calls += 1
            context = self._prefix.run(None, prefix_feeds)
            if self.flow_kind == "loop":
                out = self._run_flow(context, [x0, dim_valid])
            else:
                out = self._euler(context, x0, dim_valid, rtc_args)
        out = np.asarray(out)
        if out.shape != (1, h, dmax):
            raise RuntimeError(f"the flow graph returned shape {out.shape}; expected (1, {h}, {dmax}) "
                               f"({REEXPORT})")
        result = ActionResult(actions=None, normalized_actions=None, mode="continuous", norm_tag=tag.name,
                              prompt_tokens=inp["prompt_tokens"])
        return self.codec.finish(result, out[0, :, :d], tag, req.state, req.n_steps, False, delay, target, prev)

    def run_batch(self, prefix_inputs: dict, noise: np.ndarray, action_dim_valid: np.ndarray) -> np.ndarray:
        """The graphs on a batch, for a caller that builds its own inputs (e.g. with `build_inputs` per observation,
        concatenated): prefix_inputs {input_ids, images, pooled_idx, attention_mask} with a leading batch axis,
        noise [B, H, 32], action_dim_valid bool [B, 32] -> normalized actions [B, H, 32] (no un-normalization)."""
        prefix = self._feeds("prefix", self._prefix_names, self.export.prefix,
                             [prefix_inputs[s.name] for s in self.export.prefix.inputs])
        with self._lock:
            context = self._prefix.run(None, prefix)
            if self.flow_kind == "loop":
                return np.asarray(self._run_flow(context, [noise, action_dim_valid]))
            return self._euler(context, np.asarray(noise, np.float32), np.asarray(action_dim_valid, bool))

    def _run_flow(self, context: list, extra: list) -> np.ndarray:
        feeds = self._feeds("flow", self._flow_names, self.export.flow, list(context) + list(extra))
        return self._flow.run(None, feeds)[0]

    def _euler(self, context: list, x0: np.ndarray, dim_valid: np.ndarray, rtc_args=None) -> np.ndarray:
        """models/flow.py's Euler loop around the "step" graph's velocity, or the guided graph's with real-time
        chunking (`rtc_args`: the codec's (target [1, H, 32], delay, overlap end, clip)). Without padding masking
        (flow.mask_action_dim_padding False) every dim counts as valid, as there."""
        valid = dim_valid if self._mask_padding else np.ones_like(dim_valid)
        dim_f = valid.astype(np.float32)[:, None, :]
        n = self.num_steps
        dt = np.float32(1.0 / n)
        x = x0.astype(np.float32) * dim_f
        for k in range(n):
            t = np.full((x.shape[0],), np.float32(k / n), np.float32)   # t = k/N, rounded once to float32
            if rtc_args is None:
                v = np.asarray(self._run_flow(context, [x, t, valid]), np.float32)
            else:
                target, d, end, beta = rtc_args
                rows = x.shape[0]
                extra = [x, t[0], valid, target, np.full((rows,), d, np.int32), np.full((rows,), end, np.int32),
                         np.float32(beta)]
                feeds = self._feeds("guided", self._guided_names, self.export.guided, list(context) + extra)
                v = np.asarray(self._guided.run(None, feeds)[0], np.float32)
            x = (x + dt * v) * dim_f
        return x

    @staticmethod
    def _feeds(graph: str, names: list, spec: GraphSpec, arrays: list) -> dict:
        """Arrays fed by position (the graph's input names need not be export.json's), cast to export.json's
        dtypes and checked against its shapes."""
        feeds = {}
        for name, s, a in zip(names, spec.inputs, arrays):
            arr = np.asarray(a, dtype=s.dtype)
            arr = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)   # (ascontiguousarray makes 0-d 1-d)
            if not s.matches(arr.shape):
                raise ValueError(f"{graph} graph input {s.name} has shape {arr.shape}; the export takes "
                                 f"{list(s.shape)} (export.json graphs.{graph}.inputs)")
            feeds[name] = arr
        return feeds
