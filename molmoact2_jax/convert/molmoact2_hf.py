"""Full MolmoAct2 checkpoints: Hugging Face release folder <-> Orbax params checkpoint (docs/model_notes.md,
"Checkpoint keys").

HF folder: `config.json` (text_config / vit_config / adapter_config / action_expert_config, every token id,
top-level max_action_horizon / max_action_dim), fp32 (or bf16) safetensors, sharded with
`model.safetensors.index.json`, `norm_stats.json`, tokenizer files and the rest of the release files.

Params checkpoint (`CKPT_DIR`, see checkpoint_io.params): `params/` (Orbax) + `model_config.json`, plus
  `assets/`                 every non-weight file of the source folder, verbatim (config.json, norm_stats.json,
                            tokenizer files, processor configs, remote code); export copies them back and
                            rebuilds config.json from the preserved original (only values our config changed move);
  `hf_rope_inv_freq.npy`    the stored `model.transformer.rotary_emb.inv_freq`, written back on export so the
                            round trip is bit-exact (it is only checked against rope_theta on import).

Streaming and memory. The import never materialises the params tree: every Orbax leaf is a lazy `LazyLeaf` that
`checkpoint_io.streaming` writes with tensorstore, stacked leaves (ViT, LLM and expert blocks, scanned on a leading
`layers` axis) one layer slice at a time, layer-major inside a group so each HF layer tensor is read (lazily, from
its safetensors shard) and converted once. Peak host memory is about one layer's tensors plus the largest single
tensor (the embedding tables are concatenated once), independent of the depth. The per-layer chunking of the
stacked leaves is a storage detail; `checkpoint_io.params.load_params` restores them like any other checkpoint.
Multi-host: the conversion is an offline, single-writer job (Orbax writes numpy leaves from process 0 only), so
run it in one process; to split it over hosts, give each process a disjoint subset of leaf groups (e.g. by layer
ranges) and open only the shards that `model.safetensors.index.json` lists for those keys -- the leaf/group
structure makes each group's reads independent. Only the single-process path is implemented.
Export loads the params once (one copy) and streams tensors into shards of `max_shard_bytes`.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys

import jax
import ml_dtypes
import numpy as np
from flax.core import meta
from safetensors import safe_open

from data_pipelines.norm_stats import NORM_STATS_FILE, NormStats
from molmoact2_jax import storage
from molmoact2_jax.progress import progress_bar
from molmoact2_jax.checkpoint_io import params as params_io
from molmoact2_jax.checkpoint_io import streaming
from molmoact2_jax.checkpoint_io.assets import (ACTION_TOKENIZER_DIRS, TOKENIZER_FILES, find_asset,
                                                find_norm_stats, missing_asset_message)
from molmoact2_jax.checkpoint_io.steps import resolve_checkpoint
from molmoact2_jax.checkpoint_io.streaming import LazyLeaf, LeafGroup
from molmoact2_jax.convert import molmo2_keys as mk
from molmoact2_jax.convert.action_expert_keys import TRAINING_ONLY_MARKERS, _linear_specs, expert_params_to_hf
from molmoact2_jax.convert.molmoact2_config import hf_molmoact2_config, molmoact2_config_from_hf
from molmoact2_jax.convert.safetensors_io import INDEX, SafetensorsReader, write_safetensors
from molmoact2_jax.models.action_expert import expert_head_dim
from molmoact2_jax.models.molmoact2 import MolmoAct2
from molmoact2_jax.models.vit import num_built_layers
from molmoact2_jax.tokenizers.openfast import OpenFAST

EXPERT = "model.action_expert."
DEPTH_GATE = "model.action_expert_depth_gate."
ROPE_KEY = mk.LLM + "rotary_emb.inv_freq"
ASSETS = "assets"
INV_FREQ_FILE = "hf_rope_inv_freq.npy"
DEFAULT_SHARD_BYTES = 5 * 1024 ** 3


class ConversionError(ValueError):
    """Bad input folder / checkpoint; the message names the folder and the key."""


# ----------------------------------------------------------------------------------------------- key table
def hf_key_shapes(cfg) -> dict:
    """Every tensor of a MolmoAct2 HF folder for `cfg` -> its shape, in export order."""
    v, cn, m, ae = cfg.vit, cfg.connector, cfg.llm, cfg.action_expert
    s = {}
    d, vh = v.hidden_size, v.num_heads * v.head_dim
    s[mk.VIT + "patch_embedding.weight"] = (d, v.patch_size * v.patch_size * 3)
    s[mk.VIT + "patch_embedding.bias"] = (d,)
    s[mk.VIT + "positional_embedding"] = ((v.image_size // v.patch_size) ** 2, d)
    for i in range(num_built_layers(v)):
        b = f"{mk.VIT}transformer.resblocks.{i}."
        for n in ("wq", "wk", "wv"):
            s[b + f"attention.{n}.weight"], s[b + f"attention.{n}.bias"] = (vh, d), (vh,)
        s[b + "attention.wo.weight"], s[b + "attention.wo.bias"] = (d, vh), (d,)
        s[b + "feed_forward.w1.weight"], s[b + "feed_forward.w1.bias"] = (v.mlp_dim, d), (v.mlp_dim,)
        s[b + "feed_forward.w2.weight"], s[b + "feed_forward.w2.bias"] = (d, v.mlp_dim), (d,)
        for n in ("attention_norm", "ffn_norm"):
            s[b + f"{n}.weight"], s[b + f"{n}.bias"] = (d,), (d,)
    cin, ch = d * len(v.feature_layers), cn.num_heads * cn.head_dim
    for n in ("wq", "wk", "wv"):
        s[mk.POOL + f"{n}.weight"], s[mk.POOL + f"{n}.bias"] = (ch, cin), (ch,)
    s[mk.POOL + "wo.weight"], s[mk.POOL + "wo.bias"] = (cn.hidden_size, ch), (cn.hidden_size,)
    s[mk.PROJ + "w1.weight"] = s[mk.PROJ + "w3.weight"] = (cn.mlp_dim, cn.hidden_size)
    s[mk.PROJ + "w2.weight"] = (m.hidden_size, cn.mlp_dim)
    h, hd = m.hidden_size, m.head_dim
    s[mk.LLM + "wte.embedding"] = (m.vocab_size, h)
    s[mk.LLM + "wte.new_embedding"] = (m.additional_vocab_size, h)
    for i in range(m.num_layers):
        b = f"{mk.LLM}blocks.{i}."
        s[b + "attn_norm.weight"] = s[b + "ff_norm.weight"] = (h,)
        s[b + "self_attn.att_proj.weight"] = ((m.num_heads + 2 * m.num_kv_heads) * hd, h)
        if m.qk_norm:
            s[b + "self_attn.q_norm.weight"] = s[b + "self_attn.k_norm.weight"] = (hd,)
        s[b + "self_attn.attn_out.weight"] = (h, m.num_heads * hd)
        s[b + "mlp.ff_proj.weight"] = (2 * m.mlp_dim, h)
        s[b + "mlp.ff_out.weight"] = (h, m.mlp_dim)
    s[mk.LLM + "ln_f.weight"] = (h,)
    s["lm_head.weight"] = (m.vocab_size, h)
    s[ROPE_KEY] = (hd // 2,)
    if cfg.use_action_expert:
        for _, name, per_layer, shape, n_in, has_bias in _linear_specs(ae):
            out, inp = math.prod(shape[n_in:]), math.prod(shape[:n_in])
            for pre in ([f"{EXPERT}blocks.{e}.{name}" for e in range(ae.num_layers)] if per_layer
                        else [EXPERT + name]):
                s[pre + ".weight"] = (out, inp)
                if has_bias:
                    s[pre + ".bias"] = (out,)
        if ae.depth_gate:
            for pre in ([f"{DEPTH_GATE}{e}." for e in range(ae.num_layers)] if ae.depth_gate_per_layer
                        else [DEPTH_GATE]):
                s[pre + "weight"], s[pre + "bias"] = (1, ae.context_dim), (1,)
    return s


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """1 / theta^(2j/hd) in fp32, as the HF buffer is computed (fp32 exponent, fp32 power)."""
    exps = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / np.power(np.float32(theta), exps)).astype(np.float32)


# ----------------------------------------------------------------------------------------------- reading
def read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder}: no config.json (expected a Hugging Face MolmoAct2 folder)")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ConversionError(f"{path}: not valid JSON ({e})") from None


def header_shapes(reader: SafetensorsReader) -> dict:
    """key -> (shape, dtype string) from the safetensors headers only (no tensor data is read)."""
    out = {}
    by_file: dict = {}
    for k, name in reader.where.items():
        by_file.setdefault(name, []).append(k)
    for name, keys in by_file.items():
        path = os.path.join(reader.folder, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: listed in {INDEX} for {keys[0]!r} but missing")
        with safe_open(path, "np") as f:
            present = set(f.keys())
            for k in keys:
                if k not in present:
                    raise ConversionError(f"{path}: {INDEX} lists {k!r} in this shard but it is not there")
                sl = f.get_slice(k)
                out[k] = (tuple(sl.get_shape()), sl.get_dtype())
    return out


def validate_folder(src: str, reader: SafetensorsReader, cfg) -> dict:
    """Checks the key set and every shape against `hf_key_shapes(cfg)` before anything is converted.
    Returns a small report dict (counts, bytes, dtypes, skipped keys)."""
    expected = hf_key_shapes(cfg)
    have = header_shapes(reader)
    emb, new = mk.LLM + "wte.embedding", mk.LLM + "wte.new_embedding"
    skipped, unknown = [], []
    for k in have:
        if k in expected:
            continue
        if k.startswith(EXPERT) and any(mark in k for mark in TRAINING_ONLY_MARKERS):
            skipped.append(k)  # native training-only modules; the HF export drops them
        else:
            unknown.append(k)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ConversionError(f"{src}: unknown tensor {sorted(unknown)[0]!r}{more}; the config.json does not "
                              f"describe it (depth gate, layer counts?)")
    for k, shape in expected.items():
        if k == ROPE_KEY and k not in have:
            continue  # optional buffer
        if k not in have:
            raise ConversionError(f"{src}: missing tensor {k!r} (expected shape {list(shape)})")
        got = have[k][0]
        if k in (emb, new):  # transformers may split the two tables unevenly; only their sum is fixed
            total = have[emb][0][0] + have.get(new, ((0,),))[0][0]
            if got[1:] != shape[1:] or total != expected[emb][0] + expected[new][0]:
                raise ConversionError(f"{src}: tensor {k!r} has shape {list(got)}; the embedding tables must "
                                      f"hold {expected[emb][0]} + {expected[new][0]} rows of width {shape[1]}")
            continue
        if got != shape:
            raise ConversionError(f"{src}: tensor {k!r} has shape {list(got)}, expected {list(shape)}")
    for k, (_, dt) in have.items():
        if dt not in ("F32", "BF16", "F16"):
            raise ConversionError(f"{src}: tensor {k!r} has dtype {dt}; expected a float dtype")
    nbytes = sum(math.prod(s) * {"F32": 4, "BF16": 2, "F16": 2}[dt] for s, dt in have.values())
    return {"tensors": len(have) - len(skipped), "bytes": nbytes, "skipped": skipped,
            "dtypes": sorted({dt for _, dt in have.values()}), "has_inv_freq": ROPE_KEY in have}


# ----------------------------------------------------------------------------------------------- lazy leaves
def _abstract_params(cfg):
    """Shapes of MolmoAct2(cfg).init without allocating anything: {path tuple: shape}."""

    model = MolmoAct2(cfg)
    tree = jax.eval_shape(model.init, jax.random.PRNGKey(0), model.inputs_spec())
    tree = meta.unbox(tree)
    flat = {}

    def walk(t, path):
        if isinstance(t, dict) or hasattr(t, "items"):
            for k, val in t.items():
                walk(val, path + (k,))
        else:
            flat[path] = tuple(t.shape)

    walk(tree, ())
    return flat


def _lazy_groups(cfg, need, expected):
    """{leaf path: (group, name)} covering the whole params tree (`expected`: {path: shape})."""
    out = {}

    def add(group, prefix, names):
        for n in names:
            out[prefix + (n if isinstance(n, tuple) else (n,))] = (group, n)

    f32 = lambda a: np.asarray(a, dtype=np.float32)
    bb = ("backbone",)
    # ViT
    for key, path, conv in ((mk.VIT + "patch_embedding.weight", ("vit", "patch_embedding", "kernel"), mk._t),
                            (mk.VIT + "patch_embedding.bias", ("vit", "patch_embedding", "bias"), np.asarray),
                            (mk.VIT + "positional_embedding", ("vit", "positional_embedding"), np.asarray)):
        g = LeafGroup(key, None, lambda _, key=key, conv=conv: {(): f32(conv(need(key)))})
        out[bb + path] = (g, ())
    vit_keys = mk._vit_block_keys(cfg)
    g = LeafGroup("vit blocks", num_built_layers(cfg.vit), lambda i: {
        path: f32(to_flax(need(f"{mk.VIT}transformer.resblocks.{i}.{suffix}"))) for suffix, path, to_flax, _ in
        vit_keys})
    add(g, bb + ("vit", "resblocks"), [p for _, p, _, _ in vit_keys])
    for key, path, to_flax, _ in mk._connector_keys(cfg):
        g = LeafGroup(key, None, lambda _, key=key, to_flax=to_flax: {(): f32(to_flax(need(key)))})
        out[bb + path] = (g, ())
    # LLM
    m = cfg.llm

    def embeddings(_):
        table = np.concatenate([f32(need(mk.LLM + "wte.embedding")), f32(need(mk.LLM + "wte.new_embedding"))])
        return {"embedding": table[:m.vocab_size], "new_embedding": table[m.vocab_size:]}

    add(LeafGroup("embeddings", None, embeddings), bb + ("llm", "wte"), ["embedding", "new_embedding"])
    out[bb + ("llm", "ln_f", "scale")] = (LeafGroup("ln_f", None, lambda _: {(): f32(need(mk.LLM + "ln_f.weight"))}), ())
    out[bb + ("llm", "lm_head", "kernel")] = (LeafGroup("lm_head", None, lambda _: {(): f32(mk._t(need(
        "lm_head.weight")))}), ())
    llm_names = [p[3:] for p in expected if p[:3] == ("backbone", "llm", "blocks")]
    g = LeafGroup("llm blocks", m.num_layers,
               lambda i: {k: f32(val) for k, val in mk._llm_layer_from_hf(need, i, m).items()})
    add(g, bb + ("llm", "blocks"), llm_names)
    if not cfg.use_action_expert:
        return out
    # action expert (action_expert_keys)
    ae = cfg.action_expert
    ex = ("action_expert",)

    def linear(pre, shape, n_in, has_bias):
        k = np.ascontiguousarray(f32(need(pre + ".weight")).T).reshape(shape)
        res = {"kernel": k}
        if has_bias:
            res["bias"] = f32(need(pre + ".bias")).reshape(shape[n_in:])
        return res

    layer_specs = []
    for path, name, per_layer, shape, n_in, has_bias in _linear_specs(ae):
        if per_layer:
            layer_specs.append((path[1:], name, shape, n_in, has_bias))
            continue
        g = LeafGroup(EXPERT + name, None, lambda _, name=name, shape=shape, n_in=n_in, hb=has_bias: linear(
            EXPERT + name, shape, n_in, hb))
        add(g, ex + path, ["kernel", "bias"] if has_bias else ["kernel"])

    def expert_layer(e):
        res = {}
        for sub, name, shape, n_in, has_bias in layer_specs:
            for leaf, arr in linear(f"{EXPERT}blocks.{e}.{name}", shape, n_in, has_bias).items():
                res[sub + (leaf,)] = arr
        return res

    g = LeafGroup("expert blocks", ae.num_layers, expert_layer)
    add(g, ex + ("blocks",), [sub + (leaf,) for sub, _, _, _, hb in layer_specs
                              for leaf in (("kernel", "bias") if hb else ("kernel",))])
    if ae.depth_gate:
        if ae.depth_gate_per_layer:
            g = LeafGroup("depth gate", ae.num_layers, lambda e: {
                "depth_gate_kernel": np.ascontiguousarray(f32(need(f"{DEPTH_GATE}{e}.weight")).T),
                "depth_gate_bias": f32(need(f"{DEPTH_GATE}{e}.bias"))})
        else:
            g = LeafGroup("depth gate", None, lambda _: {
                "depth_gate_kernel": np.ascontiguousarray(f32(need(DEPTH_GATE + "weight")).T),
                "depth_gate_bias": f32(need(DEPTH_GATE + "bias"))})
        add(g, ex, ["depth_gate_kernel", "depth_gate_bias"])
    return out


def _tqdm(total, desc, enabled):
    return progress_bar(total=total, desc=desc, unit="t", disable=not enabled, file=sys.stderr, leave=False)


# ----------------------------------------------------------------------------------------------- import
def _lazy_tree(src_dir: str, progress: bool):
    """Reads and validates an HF folder's config and safetensors headers; returns (model config, validation report,
    stored inv_freq or None, {path: LazyLeaf} of lazily converted leaves, progress bar)."""
    hf = read_config(src_dir)
    cfg = molmoact2_config_from_hf(hf, os.path.join(src_dir, "config.json"),
                                   os.path.join(src_dir, "tokenizer.json"))
    try:
        reader = SafetensorsReader(src_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(str(e)) from None
    report = validate_folder(src_dir, reader, cfg)

    rope = None
    if report["has_inv_freq"]:
        rope = np.asarray(reader[ROPE_KEY])
        want = rope_inv_freq(cfg.llm.head_dim, cfg.llm.rope_theta)
        if not np.allclose(rope.astype(np.float64), want, rtol=1e-5, atol=0):
            raise ConversionError(f"{src_dir}: tensor {ROPE_KEY!r} does not match text_config rope_theta="
                                  f"{cfg.llm.rope_theta:g} (max rel diff "
                                  f"{float(np.max(np.abs(rope / want - 1))):.2e})")

    seen: set = set()
    bar = _tqdm(report["tensors"], "reading tensors", progress)

    def need(key):
        if key not in reader:
            raise ConversionError(f"{src_dir}: missing tensor {key!r}")
        if key not in seen:
            seen.add(key)
            bar.update(1)
        return reader[key]

    expected = _abstract_params(cfg)
    leaves = _lazy_groups(cfg, need, expected)
    if set(leaves) != set(expected):
        raise RuntimeError(f"internal: leaf mismatch {sorted(set(leaves) ^ set(expected))[:4]}")
    return cfg, report, rope, {path: LazyLeaf(expected[path], g, name) for path, (g, name) in leaves.items()}, bar


def load_hf(src_dir: str, progress: bool = False):
    """HF MolmoAct2 folder -> (params as numpy fp32, model config) in memory, writing nothing to disk (Policy.load
    and molmoact2-serve on a release folder). Converts group by group, one layer at a time, into preallocated
    arrays: peak memory is the params plus about one layer's source tensors. A `gs://` folder is read from a
    temporary local copy (removed afterwards)."""
    if storage.is_remote(src_dir):
        _require_folder(src_dir, "no such folder")
    with storage.LocalCopy(src_dir) as local_src:
        cfg, _, _, leaves, bar = _lazy_tree(local_src, progress)
        out = streaming.materialize(leaves)
    bar.close()
    tree: dict = {}
    for path, value in out.items():
        mk.set_path(tree, path, value)
    return tree, cfg


def import_hf(src_dir: str, ckpt_dir: str, progress: bool = True) -> dict:
    """HF MolmoAct2 folder -> params checkpoint (+ assets). Streams tensor by tensor; returns a summary dict.
    Either side may be a `gs://` URI: a remote source is read from a temporary local copy (safetensors need local
    files), a remote checkpoint is written by Orbax straight to the bucket."""
    _require_folder(src_dir, "no such folder")
    with storage.LocalCopy(src_dir) as local_src:
        return _import_local(local_src, ckpt_dir, progress)


def _require_folder(path: str, what: str) -> None:
    """One line naming a missing folder (or its missing bucket)."""
    if not storage.as_path(path).is_dir():
        raise FileNotFoundError(f"{path}: {'no such bucket' if storage.missing_bucket(path) else what}")


def _import_local(src_dir: str, ckpt_dir: str, progress: bool) -> dict:
    cfg, report, rope, leaves, bar = _lazy_tree(src_dir, progress)
    expected = {path: leaf.shape for path, leaf in leaves.items()}
    tree: dict = {}
    for path, leaf in leaves.items():
        mk.set_path(tree, path, leaf)

    ckpt = storage.as_path(ckpt_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    streaming.save_streaming(ckpt / params_io.PARAMS, tree)
    bar.close()
    params_io.write_model_config(ckpt, cfg)

    assets = _copy_assets(src_dir, ckpt / ASSETS)
    inv_path = ckpt / INV_FREQ_FILE
    if rope is not None:
        buf = io.BytesIO()
        np.save(buf, rope)
        inv_path.write_bytes(buf.getvalue())   # one whole file / object
    elif inv_path.exists():
        inv_path.unlink()
    n_params = sum(math.prod(s) for s in expected.values())
    return {"tensors": report["tensors"], "bytes": report["bytes"], "dtypes": report["dtypes"],
            "skipped": report["skipped"] + ([ROPE_KEY + " (verified)"] if rope is not None else []),
            "params": n_params, "leaves": len(expected), "assets": assets, "config": cfg}


def _copy_assets(src: str, dst) -> list:
    """Every non-weight file of the local folder `src` (config.json, norm_stats.json, tokenizer files, ...) and
    asset folders (e.g. an OpenFAST tokenizer in `openfast/`), to `dst` (local or remote)."""
    dst = storage.as_path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if name.startswith(".") or name.endswith(".safetensors") or name == INDEX:
            continue
        if not storage.is_remote(dst):
            if os.path.isdir(path):
                shutil.copytree(path, str(dst / name), dirs_exist_ok=True)
            else:
                shutil.copyfile(path, str(dst / name))
        elif os.path.isdir(path):
            storage.copy_tree(path, dst / name, skip_existing=False)
        else:
            storage.upload_file(path, dst / name)
        copied.append(name)
    return copied


# ----------------------------------------------------------------------------------------------- export
def hf_tensors(params, cfg, inv_freq=None):
    """(HF key, numpy array) pairs for a full MolmoAct2 params tree, one tensor at a time."""
    params = meta.unbox(params)
    params = params.get("params", params) if hasattr(params, "get") else params
    for key, arr in mk.backbone_to_hf(params["backbone"], cfg):
        if key == "lm_head.weight":
            yield ROPE_KEY, (rope_inv_freq(cfg.llm.head_dim, cfg.llm.rope_theta) if inv_freq is None
                             else np.asarray(inv_freq, np.float32))
        yield key, arr
    if cfg.use_action_expert and "action_expert" in params:
        # expert_params_to_hf converts the (small, ~10% of the model) expert in one go; hand it out key by key
        converted = expert_params_to_hf(params["action_expert"], cfg, prefix=EXPERT, depth_gate_prefix=DEPTH_GATE)
        for key in list(converted):
            yield key, converted.pop(key)


def needs_openfast(cfg) -> bool:
    """A model that can only act through OpenFAST tokens (no flow head, or trained discrete-only): without its
    action tokenizer an export of it cannot produce a single action."""
    return not bool(cfg.use_action_expert) or str(cfg.action_mode) == "discrete"


def export_assets(ckpt_dir: str, cfg, norm_stats=None, tokenizer=None, openfast=None,
                  require: bool = True) -> dict:
    """{asset: (source path or None, name in the export)} for the norm stats, the text tokenizer and the OpenFAST
    folder: the given paths (--norm-stats / --tokenizer / --openfast) win over what the checkpoint holds (its
    assets/, the folder itself, or its run's assets/). With `require`, a missing norm_stats.json or tokenizer (or
    OpenFAST, for a model that needs it, see needs_openfast) is refused in one line naming the flag: an export
    without them cannot be served. The norm stats are parsed (NaN / flipped ranges are refused, as at serving)."""
    out = {}
    norm = str(norm_stats) if norm_stats else None
    if norm is None:
        try:
            norm = find_norm_stats(ckpt_dir)
        except FileNotFoundError as e:
            if require:
                raise ConversionError(str(e)) from None
    if norm is not None:
        NormStats.load(norm)   # a bad file fails here, before anything is written
    out["norm_stats"] = (norm, NORM_STATS_FILE)

    tok = str(tokenizer) if tokenizer else find_asset(ckpt_dir, TOKENIZER_FILES)
    if tokenizer and storage.as_path(tok).is_dir():   # a folder holding tokenizer.json
        inside = [storage.as_path(tok) / n for n in TOKENIZER_FILES if (storage.as_path(tok) / n).is_file()]
        if not inside:
            raise ConversionError(f"--tokenizer {tokenizer}: a folder without {' / '.join(TOKENIZER_FILES)}")
        tok = str(inside[0])
    if tokenizer and not storage.as_path(tok).is_file():
        raise ConversionError(f"--tokenizer {tokenizer}: no such file")
    if tok is None and require:
        raise ConversionError(missing_asset_message(ckpt_dir, "tokenizer", TOKENIZER_FILES, "tokenizer"))
    name = storage.as_path(tok).name if tok else TOKENIZER_FILES[0]
    out["tokenizer"] = (tok, name if name in TOKENIZER_FILES else TOKENIZER_FILES[0])

    fast = str(openfast) if openfast else find_asset(ckpt_dir, ACTION_TOKENIZER_DIRS)
    if openfast:   # a given folder is loaded, so a wrong one fails now
        try:
            OpenFAST.load(fast)
        except (OSError, ValueError) as e:
            raise ConversionError(f"--openfast {openfast}: {str(e).splitlines()[0]}") from None
    if fast is None and require and needs_openfast(cfg):
        raise ConversionError(missing_asset_message(ckpt_dir, "OpenFAST action tokenizer (this model acts only "
                                                    "through discrete tokens)", ACTION_TOKENIZER_DIRS, "openfast"))
    name = storage.as_path(fast).name if fast else ACTION_TOKENIZER_DIRS[0]
    out["openfast"] = (fast, name if name in ACTION_TOKENIZER_DIRS else ACTION_TOKENIZER_DIRS[0])
    return out


def check_out_folder(out_dir: str) -> None:
    """The export folder can be written: created if needed, a probe file written and removed. A read-only folder, a
    path under a file or a missing bucket fails here in one line, before the (slow) conversion writes anything."""
    out = storage.as_path(out_dir)
    probe = out / f".molmoact2-write-probe-{os.getpid()}"
    try:
        with storage.quiet_cloud_logs():
            out.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
    except storage.StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - every backend raises its own types; all mean "cannot write here"
        if isinstance(e, FileNotFoundError) and storage.is_remote(out):
            why = "no such bucket"
        else:
            text = str(e).splitlines()[0] if str(e) else ""
            why = f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__
        raise ConversionError(f"{out_dir}: cannot write there ({why}); export into a folder (or an existing "
                              f"bucket) you can write to") from None


def export_hf(ckpt_dir: str, out_dir: str, dtype: str = "float32", max_shard_bytes: int = DEFAULT_SHARD_BYTES,
              progress: bool = True, weights: str = "auto", norm_stats=None, tokenizer=None, openfast=None,
              require_assets: bool = True) -> dict:
    """Params checkpoint (or trainer step directory, or a run directory: its newest complete step) -> HF MolmoAct2
    folder. Returns a summary dict (tensors, bytes, shards, dtype). `weights`: "auto" exports a run's EMA weights
    when it kept them, "ema" / "raw" choose. `norm_stats` / `tokenizer` / `openfast`: paths that replace (or
    supply) the checkpoint's assets; with `require_assets` (the CLI always) an export that could not be served --
    no norm stats, no tokenizer, no OpenFAST for a discrete-only model -- is refused before anything is written
    (False: weights and config only, e.g. test fixtures). Either side may be a `gs://` URI; a remote export is
    written to a local temporary folder, then uploaded."""
    if dtype not in ("float32", "bfloat16"):
        raise ConversionError(f"--dtype {dtype!r}: expected float32 or bfloat16")
    _require_folder(ckpt_dir, "no such checkpoint folder")
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    ckpt, out = storage.as_path(ckpt_dir), storage.as_path(out_dir)
    cfg = params_io.check_checkpoint(ckpt)   # before anything is written: config readable, weights complete
    extra = export_assets(ckpt_dir, cfg, norm_stats, tokenizer, openfast, require_assets)
    if out.is_dir() and any(c.name.endswith(".safetensors") or c.name == INDEX for c in out.iterdir()):
        raise ConversionError(f"{out_dir}: already holds safetensors files; export into an empty folder")
    check_out_folder(out_dir)   # a wrong bucket or a read-only folder fails now, not after the conversion
    params, cfg = params_io.load_params(ckpt, weights=weights)
    assets = ckpt / ASSETS
    original = None
    if (assets / "config.json").exists():
        original = json.loads((assets / "config.json").read_text())
    inv = None
    inv_path = ckpt / INV_FREQ_FILE
    if inv_path.exists():
        inv = np.load(io.BytesIO(inv_path.read_bytes()))
        want = rope_inv_freq(cfg.llm.head_dim, cfg.llm.rope_theta)
        if inv.shape != want.shape or not np.allclose(inv, want, rtol=1e-5, atol=0):
            inv = None  # rope_theta changed since the import: recompute
    out_dtype = np.float32 if dtype == "float32" else _bf16()
    shapes = hf_key_shapes(cfg)
    bar = _tqdm(len(shapes), "writing tensors", progress)
    dtypes = set()

    def stream():
        for key, arr in hf_tensors(params, cfg, inv):
            if key != ROPE_KEY:  # the RoPE buffer stays fp32
                arr = np.asarray(arr).astype(out_dtype)
            dtypes.add(np.dtype(arr.dtype).name)
            bar.update(1)
            yield key, arr

    # A bucket gets the export from a local staging folder, each file uploaded whole once all are written.
    with storage.LocalStaging(out) as stage:
        summary = write_safetensors(stage, stream(), max_shard_bytes)
        bar.close()
        hf = hf_molmoact2_config(cfg, original, dtype)
        with open(os.path.join(stage, "config.json"), "w") as f:
            json.dump(hf, f, indent=2)
        # assets/ verbatim, except what was given or found elsewhere (norm stats, tokenizer, OpenFAST), which
        # replaces the checkpoint's copy of that asset under the name the loaders look for
        replaced = {"norm_stats": {NORM_STATS_FILE}, "tokenizer": set(TOKENIZER_FILES),
                    "openfast": set(ACTION_TOKENIZER_DIRS)}
        placed, skip = [], {"config.json"}  # config.json: rebuilt above
        for key, (src, name) in extra.items():
            if src is not None and storage.as_path(src).parent != assets:
                skip |= replaced[key]
                placed.append((storage.as_path(src), name))
        copied = []
        children = sorted(assets.iterdir(), key=lambda c: c.name) if assets.is_dir() else []
        for child, name in [(c, c.name) for c in children if c.name not in skip] + placed:
            _copy_into(child, stage, name)
            copied.append(name)
    summary.update(dtype=dtype, dtypes=sorted(dtypes), assets=sorted(copied),
                   config_from_original=original is not None)
    return summary


def _copy_into(src, stage: str, name: str) -> None:
    """A file or folder (local or remote) into the local staging folder, as `name`."""
    dst = os.path.join(stage, name)
    if storage.is_remote(src):
        with storage.LocalCopy(src) as local:
            _copy_into(storage.as_path(local), stage, name)
    elif src.is_dir():
        shutil.copytree(str(src), dst, dirs_exist_ok=True)
    else:
        shutil.copyfile(str(src), dst)


def _bf16():
    return ml_dtypes.bfloat16


def format_summary(kind: str, s: dict, src: str, dst: str) -> str:
    if kind == "import":
        cfg = s["config"]
        return (f"imported {s['tensors']} tensors ({s['bytes'] / 1e6:.1f} MB, {'/'.join(s['dtypes'])}) from {src} "
                f"-> {dst}: {s['leaves']} params leaves, {s['params'] / 1e6:.2f}M params (float32); LLM "
                f"{cfg.llm.num_layers} layers, ViT {num_built_layers(cfg.vit)} blocks, expert "
                f"{cfg.action_expert.num_layers} blocks (head_dim {expert_head_dim(cfg.action_expert)}); "
                f"skipped {len(s['skipped'])}: {', '.join(s['skipped']) or '-'}; assets: "
                f"{', '.join(s['assets']) or '-'}")
    return (f"exported {s['tensors']} tensors, {s['bytes'] / 1e6:.1f} MB ({s['dtype']}) in {s['shards']} shard(s) "
            f"-> {dst}; config.json {'from the preserved original' if s['config_from_original'] else 'generated'}"
            f"; assets: {', '.join(s['assets']) or '-'}")
