"""What a training run checks and works out before it writes anything or compiles: the config's values, the data it
reads, the sizes that data needs, and whether the run directory belongs to this run.

    cfg, plan = prepare(cfg)           # then, once the run directory is known to be writable: check_workdir

`cfg` comes back as a resolved copy (references resolved, data.source "synthetic" or "arrayrecord", sources with
their norm tags, the tokenizer's token layout, seq_len and max_action_horizon sized when they were 0), so the config
saved with every checkpoint says what the run did. This is the only place a config is changed: the copy comes back
locked (no new fields), the trainer only reads it, and `plan.resolved` records each field resolved here (given ->
resolved value) for WORKDIR/run_info.json. `plan` (DataPlan) holds what the data pipeline and the run's assets need:
sources, held-out eval sources, the run's norm stats, the tokenizer / OpenFAST paths and the tokenizers themselves,
loaded once here. The rules (which source, where assets come from, which tag) are documented in configs/common.py.
Every field a recipe has is read directly: configs/common.py base() holds each default, nothing here restates one.

Every problem is one ValueError (or FileNotFoundError) naming the config field (`config.<field>`) or flag and the
fix, raised before the run directory exists (molmoact2_jax/train.py reports it in one line, exit 2).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import grain
import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.norm_stats import NORM_STATS_FILE, NormStats
from data_pipelines.pipeline.robot_transform import RobotTransform, RobotTransformConfig
from data_pipelines.shards import load_index
from data_pipelines.transforms import think_styles
from data_pipelines.transforms.model_inputs import ACTION_FORMATS, ModelInputs
from molmoact2_jax import storage
from molmoact2_jax.checkpoint_io import assets as assets_lib
from molmoact2_jax.checkpoint_io import params as params_io
from molmoact2_jax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from molmoact2_jax.models.config import set_token_layout
from molmoact2_jax.models.layers import REMAT_POLICIES
from molmoact2_jax.tokenizers.openfast import OpenFAST
from molmoact2_jax.tokenizers.text import TextTokenizer
from molmoact2_jax.training.optimizer import GROUPS
from molmoact2_jax.training.synthetic_data import SYNTHETIC_HORIZON, SyntheticRobotData


SOURCE_KINDS = ("synthetic", "arrayrecord")
SOURCE_KEYS = ("path", "weight", "tag")
DTYPES = ("float32", "bfloat16", "float16")   # models/layers.py compute_dtype
# How many examples of each source are tokenized to find the longest (evenly spaced over its records: episodes
# differ in task text and motion). Each decodes its camera images, a few ms.
LENGTH_SAMPLES = 64
# seq_len = 0 sizes to the longest sampled example times this, rounded up to a multiple of SEQ_LEN_MULTIPLE: OpenFAST
# codes a chunk in as many tokens as its motion needs, so a frame outside the sample can be somewhat longer.
SEQ_LEN_HEADROOM = 1.25
SEQ_LEN_MULTIPLE = 64
MAKE_TOKENIZER = "molmoact2-data tokenizer {d} (writes {d}/tokenizer.json)"
MAKE_OPENFAST = "molmoact2-data openfast {d} (writes {d}/openfast/)"
MAKE_STATS = "molmoact2-data stats {d} (writes {d}/norm_stats.json)"


@dataclasses.dataclass(frozen=True)
class SourcePlan:
    field: str          # "config.data.sources[0]": where it was given, for messages
    path: str
    weight: float
    tag: str            # the norm tag its examples use
    shard_tag: str      # the tag the shards were converted with (index.json)
    horizon: int        # steps per chunk the shards hold (index.json)


@dataclasses.dataclass(frozen=True)
class DataPlan:
    kind: str                           # "synthetic" | "arrayrecord"
    sources: tuple = ()
    eval_sources: tuple = ()
    norm_stats: dict | None = None      # the run's norm_stats.json (metadata_by_tag keyed by the sources' tags)
    tokenizer: str = ""
    openfast: str = ""
    text_tokenizer: TextTokenizer | None = None     # `tokenizer`, loaded once for sizing and the pipeline
    action_tokenizer: OpenFAST | None = None        # `openfast`, loaded when the model trains discrete actions
    origins: dict = dataclasses.field(default_factory=dict)   # asset -> where it came from
    # field -> {"given", "resolved"} for every config field prepare() changed (run_info.json "resolved")
    resolved: dict = dataclasses.field(default_factory=dict)
    # what was decided for the user (sizes from the data, where assets came from): logged once the run starts, so
    # that a config error stays the only line
    notes: list = dataclasses.field(default_factory=list)


def prepare(cfg, check_lengths: bool = True):
    """(resolved copy of `cfg`, DataPlan); see the module docstring. `check_lengths`: tokenize a sample of each
    source against data.seq_len (always done when seq_len is 0, which it sizes). The run directory is checked
    separately (check_workdir), once it is known to be usable."""
    given = cfg.copy_and_resolve_references()
    cfg = given.copy_and_resolve_references()
    check_fields(cfg)
    check_init_from(cfg)
    plan = plan_data(cfg, check_lengths)
    cfg.lock()
    return cfg, dataclasses.replace(plan, resolved=resolved_fields(given, cfg))


def resolved_fields(given, resolved) -> dict:
    """{"data.seq_len": {"given": 0, "resolved": 384}, ...}: the fields whose value prepare() decided."""
    def flat(node, prefix=""):
        out = {}
        for key, value in node.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out
    before, after = flat(json.loads(given.to_json())), flat(json.loads(resolved.to_json()))
    return {k: {"given": before.get(k), "resolved": v} for k, v in after.items() if before.get(k) != v}


# ---------------------------------------------------------------- config values
def _fail(msg: str):
    raise ValueError(msg)


def _get(cfg, dotted: str):
    """A field by its dotted name; one line naming it when a recipe lacks it (recipes build on configs/common.py
    base(), which has every field)."""
    node = cfg
    for part in dotted.split("."):
        if part not in node:
            _fail(f"config.{dotted} is missing: build the recipe on configs/common.py base(), which has every field")
        node = node[part]
    return node


def _number(cfg, dotted: str, lo=None, hi=None, *, integer=True, hi_open=False, hint=""):
    value = _get(cfg, dotted)
    if value is None:
        return
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    ok = ok and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and lo is not None:
        ok = value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        kind = "an integer" if integer else "a number"
        rng = ("" if lo is None and hi is None else f" in [{lo}, {hi}{')' if hi_open else ']'}" if hi is not None
               else f" >= {lo}")
        _fail(f"config.{dotted}={value!r}: expected {kind}{rng}{hint}")


def _choice(cfg, dotted: str, choices):
    value = _get(cfg, dotted)
    if value is not None and value not in choices:
        _fail(f"config.{dotted}={value!r}: expected one of {list(choices)}")


def check_fields(cfg) -> None:
    """Enumerations and ranges of the config's values (what can be checked without devices or data)."""
    _choice(cfg, "model.action_mode", ACTION_FORMATS)
    _choice(cfg, "model.dtype", DTYPES)
    _choice(cfg, "model.remat_policy", tuple(REMAT_POLICIES))
    _choice(cfg, "model.attention_impl", ATTENTION_IMPLEMENTATIONS)
    _choice(cfg, "model.vit.position_init", ("normal", "sincos2d"))
    _choice(cfg, "data.source", ("",) + SOURCE_KINDS)
    if cfg.model.action_mode in ("continuous", "both") and not cfg.model.use_action_expert:
        _fail(f"config.model.action_mode={cfg.model.action_mode!r} needs the action expert, and "
              f"config.model.use_action_expert=False: use action_mode 'discrete' or enable the expert")
    _number(cfg, "total_steps", 1)
    _number(cfg, "seed", 0)
    _number(cfg, "data.global_batch_size", 1)
    _number(cfg, "data.seq_len", 0, hint=" (0: sized from the data)")
    _number(cfg, "data.max_cameras", 1)
    _number(cfg, "data.worker_count", 0)
    _number(cfg, "data.robot_share", 0.0, 1.0, integer=False)
    _number(cfg, "data.depth_code_input_noise_rate", 0.0, 1.0, integer=False)
    _number(cfg, "model.action_expert.max_action_horizon", 0, hint=" (0: the data's horizon)")
    _number(cfg, "model.action_expert.max_action_dim", 1)
    _number(cfg, "model.flow.num_samples", 1)
    _number(cfg, "model.flow.num_steps", 1)
    _number(cfg, "checkpoint.every_steps", 0, hint=" (0: only at the end)")
    _number(cfg, "checkpoint.keep_last", 0)
    _number(cfg, "checkpoint.keep_every", 0)
    _number(cfg, "trainer.grad_accum_steps", 1)
    _number(cfg, "trainer.max_consecutive_bad_steps", 1)
    _number(cfg, "trainer.eval_every_steps", 0, hint=" (0: no eval)")
    if _get(cfg, "trainer.eval_every_steps"):
        _number(cfg, "trainer.eval_batches", 1)
    _number(cfg, "optimizer.warmup_steps", 0)
    _number(cfg, "optimizer.final_lr_fraction", 0.0, 1.0, integer=False)
    _number(cfg, "optimizer.clip_grad_norm", 0.0, integer=False)
    for group in cfg.optimizer.lr:
        _number(cfg, f"optimizer.lr.{group}", 0.0, integer=False)
    _number(cfg, "ema.decay", 0.0, 1.0, integer=False, hi_open=True, hint=" (0: off)")
    if cfg.lora.enabled:
        _number(cfg, "lora.rank", 1)
        _number(cfg, "lora.lr", 0.0, integer=False)
    for field in ("optimizer.freeze", "init_fresh"):
        unknown = sorted(set(_get(cfg, field) or ()) - set(GROUPS))
        if unknown:
            _fail(f"config.{field}: unknown group(s) {unknown}; groups are {list(GROUPS)}")
    profile = tuple(_get(cfg, "trainer.profile_steps") or ())
    if profile and (len(profile) != 2 or int(profile[0]) < 0 or int(profile[1]) < 1):
        _fail(f"config.trainer.profile_steps={profile}: expected () or (first_step, num_steps >= 1)")
    think_styles.style_probabilities(cfg.data.style_weights)   # names config.data.style_weights


def check_init_from(cfg) -> None:
    """config.init_from exists and, for an Orbax checkpoint, is complete (restoring a partial one fails deep in
    Orbax with a TypeError)."""
    src = cfg.init_from
    if not src:
        return
    path = storage.as_path(src)
    if not path.exists():
        _fail(f"config.init_from={src}: no such checkpoint (a trainer step directory WORKDIR/checkpoints/<step>, a "
              f"params checkpoint or an imported HF checkpoint)")
    try:
        if params_io.is_training_step(path):
            params_io.check_item_complete(path / "state")
        elif (path / params_io.PARAMS).is_dir():
            params_io.check_item_complete(path / params_io.PARAMS)
    except params_io.IncompleteCheckpointError as e:
        _fail(f"config.init_from={src}: {e}")


# ---------------------------------------------------------------- data
def _entries(value, field: str) -> list:
    """data.sources / data.eval_sources entries as {path, weight, tag} dicts (an entry may be a bare path)."""
    if isinstance(value, (str, dict)) or hasattr(value, "keys"):
        value = (value,)
    entries = list(value or ())
    if entries and all(isinstance(e, str) and e in SOURCE_KEYS for e in entries):
        # ml_collections turns --config.data.sources='{"path": ...}' (a dict, not a tuple of dicts) into its keys
        _fail(f"{field}={tuple(entries)}: a single source given as a dict becomes its keys; write a tuple, "
              f"'({{\"path\": \"DIR\"}},)', or just --{field}=DIR")
    out = []
    for i, e in enumerate(entries):
        where = f"{field}[{i}]"
        if isinstance(e, str):
            e = {"path": e}
        elif hasattr(e, "keys"):
            e = dict(e)
        else:
            _fail(f"{where}={e!r}: expected a shard directory or {{path, weight, tag}}")
        unknown = sorted(set(e) - set(SOURCE_KEYS))
        if unknown:
            _fail(f"{where}: unknown key(s) {unknown}; an entry has {list(SOURCE_KEYS)}")
        try:
            weight = float(e.get("weight", 1.0))
        except (TypeError, ValueError):
            weight = float("nan")
        if not (math.isfinite(weight) and weight > 0):
            _fail(f"{where}.weight={e.get('weight')!r}: expected a number > 0")
        out.append({"path": str(e.get("path") or ""), "weight": weight, "tag": str(e.get("tag") or "")})
    return out


def _kind(source: str, sources: list, evals: list) -> str:
    """Real data when any source has a path; synthetic only when asked for by name, and then without paths."""
    given = [(f"config.data.{name}[{i}].path", e["path"]) for name, es in (("sources", sources),
                                                                             ("eval_sources", evals))
             for i, e in enumerate(es) if e["path"]]
    if source == "synthetic":
        if given:
            field, path = given[0]
            _fail(f"config.data.source='synthetic' and {field}={path} disagree: a data path means real data; set "
                  f"--config.data.source=arrayrecord to train on it, or drop the path for a synthetic smoke run")
        return "synthetic"
    if not sources:
        _fail("config.data.sources is empty: give a converted shard directory (molmoact2-data convert) with "
              "--config.data.sources=SHARD_DIR, or --config.data.source=synthetic for a smoke run on synthetic data")
    for name, es in (("sources", sources), ("eval_sources", evals)):
        for i, e in enumerate(es):
            if not e["path"]:
                tag = f" (tag {e['tag']!r})" if e["tag"] else ""
                _fail(f"config.data.{name}[{i}].path is empty{tag}: set it to a converted shard directory "
                      f"(molmoact2-data convert ... --out SHARD_DIR), or --config.data.source=synthetic for a smoke "
                      f"run on synthetic data")
    return "arrayrecord"


def _source_plan(field: str, e: dict) -> SourcePlan:
    path = e["path"]
    if storage.is_remote(path):
        scheme, _, rest = path.partition("://")
        bucket, _, sub = rest.partition("/")
        _fail(f"{field}.path={path}: ArrayRecord shards are read through a mounted bucket, not {scheme}:// (e.g. "
              f"gcsfuse --implicit-dirs {bucket} /mnt/{bucket}, then /mnt/{bucket}/{sub})")
    p = storage.as_path(path)
    if not p.is_dir():
        _fail(f"{field}.path={path}: no such folder")
    if not (p / "index.json").exists():
        _fail(f"{field}.path={path}: not a converted shard directory (no index.json); convert with "
              f"molmoact2-data convert ... --out {path}")
    try:
        index = load_index(str(p))
    except DataError as e:
        _fail(f"{field}.path={path}: {e}")
    return SourcePlan(field=field, path=str(p), weight=e["weight"], tag=e["tag"] or index["tag"],
                      shard_tag=index["tag"], horizon=int(index.get("horizon") or 0))


def _find_asset(cfg, field: str, name: str, shard_dir: str) -> tuple[str, str]:
    """(path, origin) of a run asset: config.data.<field> > config.init_from's assets > the first source's shard
    folder; ("", "") when none has it."""
    given = cfg.data[field]
    if given:
        p = storage.as_path(given)
        if field == "tokenizer" and p.is_dir():
            p = p / name
        if not p.exists():
            _fail(f"config.data.{field}={given}: no such {'folder' if field == 'openfast' else 'file'}")
        return str(p), f"config.data.{field}"
    if cfg.init_from:
        found = assets_lib.find_asset(cfg.init_from, [name])
        if found:
            return found, "config.init_from's assets"
    p = storage.as_path(shard_dir) / name
    if p.exists():
        return str(p), "the first source's shard folder"
    return "", ""


def _norm_stats(cfg, specs: list, evals: list) -> tuple[dict, str]:
    """The run's norm stats (raw norm_stats.json dict) and where they came from: config.data.norm_stats as given,
    else each source's SHARD_DIR/norm_stats.json entry of its shards' tag, keyed by the source's norm tag."""
    given = cfg.data.norm_stats
    if given:
        if not storage.as_path(given).is_file():
            _fail(f"config.data.norm_stats={given}: no such file")
        raw = NormStats.load(given).raw
        for s in specs + evals:
            if s.tag not in raw["metadata_by_tag"]:
                how = (f"{s.field}.tag={s.tag!r}" if s.tag != s.shard_tag else
                       f"the shards' tag {s.tag!r} of {s.field}.path={s.path}")
                _fail(f"config.data.norm_stats={given} has no entry for {how}; its tags are "
                      f"{sorted(raw['metadata_by_tag'])}: set {s.field}.tag to one of them, or drop "
                      f"config.data.norm_stats to use {s.path}/{NORM_STATS_FILE}")
        return raw, "config.data.norm_stats"
    merged, first, by = {}, None, {}
    for s in specs:
        f = storage.as_path(s.path) / NORM_STATS_FILE
        if not f.is_file():
            _fail(f"config.data.norm_stats is empty and {s.field} has no {f}: make it with "
                  f"{MAKE_STATS.format(d=s.path)}, or set config.data.norm_stats=FILE")
        raw = NormStats.load(str(f)).raw
        entry = raw["metadata_by_tag"].get(s.shard_tag)
        if entry is None:
            _fail(f"{f} has no entry for the shards' tag {s.shard_tag!r} ({s.field}); recompute it with "
                  f"{MAKE_STATS.format(d=s.path)}, or set config.data.norm_stats=FILE")
        if first is None:
            first = raw
        elif raw.get("norm_mode") != first.get("norm_mode"):
            _fail(f"{s.field}: {f} uses norm_mode {raw.get('norm_mode')!r}, {specs[0].field}'s "
                  f"{first.get('norm_mode')!r}; compute them alike, or set config.data.norm_stats=FILE")
        if s.tag in merged and merged[s.tag] != entry:
            _fail(f"{by[s.tag].field} and {s.field} both use norm tag {s.tag!r} with different stats in their shard "
                  f"folders: compute joint stats with molmoact2-data stats {by[s.tag].path} {s.path} --out FILE and "
                  f"set config.data.norm_stats=FILE, or give them different tags")
        merged[s.tag], by[s.tag] = entry, s
    for s in evals:
        if s.tag not in merged:
            _fail(f"{s.field} uses norm tag {s.tag!r}, which no training source has ({sorted(merged)}): held-out "
                  f"data is normalized with the training sources' stats; give it with "
                  f"'({{\"path\": \"{s.path}\", \"tag\": \"TAG\"}},)' naming one of them")
    return dict(first, metadata_by_tag=merged), "the sources' shard folders"


def plan_data(cfg, check_lengths: bool = True) -> DataPlan:
    """Decides the data (see configs/common.py) and sizes / checks the model for it; updates cfg.data and the model
    fields it resolves in place."""
    d = cfg.data
    sources = _entries(d.sources, "config.data.sources")
    evals = _entries(d.eval_sources, "config.data.eval_sources")
    kind = _kind(d.source, sources, evals)
    d.source = kind
    d.sources = tuple(sources)
    d.eval_sources = tuple(evals)
    if kind == "synthetic":
        given = [f for f in ("norm_stats", "tokenizer", "openfast") if d[f]]
        if given:
            _fail(f"config.data.{given[0]}={d[given[0]]} is set, but config.data.source='synthetic' trains on "
                  f"generated data (and saves its own assets): set config.data.sources[0].path to train on your "
                  f"shards, or drop config.data.{given[0]}")
        return _plan_synthetic(cfg)
    specs = [_source_plan(f"config.data.sources[{i}]", e) for i, e in enumerate(sources)]
    eval_specs = [_source_plan(f"config.data.eval_sources[{i}]", e) for i, e in enumerate(evals)]
    d.sources = tuple(dict(path=s.path, weight=s.weight, tag=s.tag) for s in specs)
    d.eval_sources = tuple(dict(path=s.path, weight=s.weight, tag=s.tag) for s in eval_specs)
    stats, stats_origin = _norm_stats(cfg, specs, eval_specs)
    first = specs[0].path
    tokenizer, tok_origin = _find_asset(cfg, "tokenizer", "tokenizer.json", first)
    if not tokenizer:
        where = " nor config.init_from's assets" if cfg.init_from else ""
        _fail(f"config.data.tokenizer is empty and neither {first}/tokenizer.json{where} exists: make one with "
              f"{MAKE_TOKENIZER.format(d=first)}, or set config.data.tokenizer=PATH (the base model's tokenizer.json; "
              f"config.init_from's assets hold it)")
    openfast, fast_origin = _find_asset(cfg, "openfast", "openfast", first)
    if not openfast and cfg.model.action_mode in ("discrete", "both"):
        where = " nor config.init_from's assets" if cfg.init_from else ""
        _fail(f"config.data.openfast is empty and neither {first}/openfast/{where} exists, but "
              f"config.model.action_mode={cfg.model.action_mode!r} trains discrete action tokens: make one with "
              f"{MAKE_OPENFAST.format(d=first)}, or set config.data.openfast=DIR")
    d.tokenizer, d.openfast = tokenizer, openfast
    try:
        tok = TextTokenizer.from_file(tokenizer)
    except ValueError as e:   # an unreadable file: its message names the file, this line the setting
        _fail(f"config.data.tokenizer (from {tok_origin}): {e}")
    plan = DataPlan(kind=kind, sources=tuple(specs), eval_sources=tuple(eval_specs), norm_stats=stats,
                    tokenizer=tokenizer, openfast=openfast, text_tokenizer=tok,
                    origins={"norm_stats": stats_origin, "tokenizer": tok_origin, "openfast": fast_origin})
    plan.notes.append(f"norm stats from {stats_origin}: tags {sorted(stats['metadata_by_tag'])}")
    plan.notes.append(f"text tokenizer from {tok_origin}: {tokenizer}")
    if openfast:
        plan.notes.append(f"OpenFAST from {fast_origin}: {openfast}")
    set_token_layout(cfg.model, tok.layout)   # the dataset's tokenizer defines the ids the model uses
    _size_horizon(cfg, plan)   # before OpenFAST is read: a chunk the model cannot hold is the first thing to fix
    if cfg.model.action_mode in ("discrete", "both"):
        try:
            plan = dataclasses.replace(plan, action_tokenizer=OpenFAST.load(openfast))
        except ValueError as e:   # an unreadable folder: its message names the file, this line the setting
            _fail(f"config.data.openfast (from {fast_origin}): {e}")
    if check_lengths or not int(d.seq_len):
        _size_seq_len(cfg, plan)
    return plan


def _plan_synthetic(cfg) -> DataPlan:
    ae = cfg.model.action_expert
    if not int(ae.max_action_horizon):
        ae.max_action_horizon = SYNTHETIC_HORIZON
    if not int(cfg.data.seq_len):
        data = SyntheticRobotData(cfg.model, 1, int(cfg.model.max_sequence_length), 0,
                                  action_dim=int(cfg.data.synthetic_action_dim), style_weights=cfg.data.style_weights)
        cfg.data.seq_len = _round_up(data.longest_example())
    return DataPlan(kind="synthetic")


def _round_up(n: int, multiple: int = SEQ_LEN_MULTIPLE) -> int:
    return -(-int(n) // multiple) * multiple


def _size_horizon(cfg, plan: DataPlan) -> None:
    """The action chunks the data yields fit model.action_expert: horizon (sized when 0) and action dims."""
    stats = NormStats.load(plan.norm_stats)
    ae = cfg.model.action_expert
    longest = None
    for s in plan.sources + plan.eval_sources:
        info = stats.tag(s.tag)
        if s.horizon and info.horizon > s.horizon:
            _fail(f"{s.field}: norm tag {s.tag!r} has action_horizon {info.horizon}, but the shards at {s.path} hold "
                  f"{s.horizon}-step chunks (index.json horizon): use stats of these shards "
                  f"({MAKE_STATS.format(d=s.path)}) or convert with --horizon {info.horizon}")
        if info.action_dim > int(ae.max_action_dim):
            _fail(f"config.model.action_expert.max_action_dim={ae.max_action_dim} is less than the {info.action_dim} "
                  f"action dims of norm tag {s.tag!r} ({s.field}.path={s.path})")
        if longest is None or info.horizon > longest[0]:
            longest = (info.horizon, s)
    need, s = longest
    if not int(ae.max_action_horizon):
        ae.max_action_horizon = need
        plan.notes.append(f"config.model.action_expert.max_action_horizon={need}, from the data ({s.path})")
    elif need > int(ae.max_action_horizon):
        _fail(f"config.model.action_expert.max_action_horizon={ae.max_action_horizon} is shorter than the {need}-step "
              f"action chunks of {s.field}.path={s.path} (index.json horizon {s.horizon}, norm tag {s.tag!r}): set "
              f"config.model.action_expert.max_action_horizon={need}, or convert with --horizon "
              f"{ae.max_action_horizon}")


def _size_seq_len(cfg, plan: DataPlan) -> None:
    """Tokenizes a sample of every source (each training style it can draw) and sizes data.seq_len (when 0) or
    checks it, and checks model.max_sequence_length."""
    d = cfg.data
    inputs = model_inputs(cfg, plan)
    longest = (0, None, None)
    for s in plan.sources + plan.eval_sources:
        n, where = longest_example(cfg, plan, s, inputs, LENGTH_SAMPLES)
        if n > longest[0]:
            longest = (n, s, where)
    n, s, where = longest
    if not int(d.seq_len):
        d.seq_len = _round_up(n * SEQ_LEN_HEADROOM)
        plan.notes.append(f"config.data.seq_len={d.seq_len}, from the data (longest sampled example: {n} tokens, "
                          f"{where} of {s.path})")
    elif n > int(d.seq_len):
        _fail(f"config.data.seq_len={d.seq_len} is too short: {where} of {s.field}.path={s.path} has {n} tokens "
              f"(prompt, image and action tokens); set config.data.seq_len={n} or more (e.g. "
              f"{_round_up(n * SEQ_LEN_HEADROOM)}: other frames' action chunks can take more tokens)")
    if int(d.seq_len) > int(cfg.model.max_sequence_length):
        _fail(f"config.data.seq_len={d.seq_len} exceeds config.model.max_sequence_length="
              f"{cfg.model.max_sequence_length}: raise config.model.max_sequence_length (or shorten the examples)")


# ---------------------------------------------------------------- the pipeline's view of the config
def transform_config(cfg, eval_split: bool) -> RobotTransformConfig:
    d, m = cfg.data, cfg.model
    return RobotTransformConfig(image_size=m.vit.image_size, max_cameras=int(d.max_cameras),
                                max_action_horizon=m.action_expert.max_action_horizon,
                                max_action_dim=m.action_expert.max_action_dim,
                                augment=bool(d.augment) and not eval_split,
                                style_probabilities=think_styles.style_probabilities(d.style_weights))


def model_inputs(cfg, plan: DataPlan) -> ModelInputs:
    """Tokens and patches of an example (prompt, images, the discrete action answer) for `cfg.model`, with the
    plan's tokenizers."""
    m = cfg.model
    return ModelInputs.for_model(plan.text_tokenizer, m, seq_len=int(cfg.data.seq_len) or None,
                                 openfast=plan.action_tokenizer, action_format=m.action_mode)



def longest_example(cfg, plan, source, inputs: ModelInputs, samples: int) -> tuple[int, str]:
    """(tokens, "episode E frame F") of the longest of `samples` records spread evenly over `source` (a run_setup
    SourcePlan), with every training style the config draws; the same transform as training, without augmentation."""
    index = load_index(source.path)
    paths = [str(Path(source.path) / s["file"]) for s in index["shards"] if s["num_records"] > 0]
    if not paths:
        raise ValueError(f"{source.field}.path={source.path}: the shards hold no frames")
    records = grain.sources.ArrayRecordDataSource(paths)
    stats = NormStats.load(plan.norm_stats)
    tcfg = dataclasses.replace(transform_config(cfg, eval_split=True), norm_mode=stats.norm_mode,
                               style_probabilities=None)
    transform = RobotTransform(source.tag, 0, stats.tag(source.tag), index["camera_keys"], tcfg)
    probs = think_styles.style_probabilities(cfg.data.style_weights)
    styles = [st for st, p in zip(think_styles.STYLES, probs or (1.0,)) if p > 0]
    rng = np.random.default_rng(0)
    best = (0, "")
    for i in np.unique(np.linspace(0, len(records) - 1, min(samples, len(records))).astype(int)):
        ex = transform(records[int(i)], rng)
        ex.setdefault("depth_codes", np.zeros(think_styles.NUM_DEPTH_CODES, np.int32))
        for style in styles:
            n = len(inputs.tokens(dict(ex, style=style))[0])
            if n > best[0]:
                best = (n, f"episode {ex['episode_id']} frame {int(ex['frame_index'])}")
    return best


# ---------------------------------------------------------------- the run directory
def check_workdir(cfg, workdir: str) -> None:
    """A run directory that already holds checkpoints resumes only the same recipe and variant on the same kind of
    data; another run's state or data iterator would not restore (or would be moved aside as corrupt)."""
    ckpts = storage.as_path(workdir) / "checkpoints"
    if not ckpts.is_dir():
        return
    steps = sorted((int(p.name) for p in ckpts.iterdir() if p.name.isdigit()), reverse=True)
    saved = None
    for step in steps:
        saved = params_io.training_config(str(ckpts / str(step)))
        if saved is not None:
            break
    if saved is None:
        return

    def name(c):
        return f"configs/{c['recipe']}.py:{c['variant']}"

    # `saved`: the whole run config a step was saved with (the trainer saves every field)
    mine = {"recipe": cfg.recipe, "variant": cfg.variant}
    theirs = {"recipe": saved["recipe"], "variant": saved["variant"]}
    if mine != theirs:
        _fail(f"--workdir={workdir} holds a run of {name(theirs)} (checkpoints/{step}); this command runs "
              f"{name(mine)}: use a new --workdir (the same recipe and variant there resume that run)")
    kind = saved["data"]["source"]
    if kind in SOURCE_KINDS and kind != cfg.data.source:
        _fail(f"--workdir={workdir} holds a run on {kind} data (checkpoints/{step}); this command trains on "
              f"{cfg.data.source} data: use a new --workdir")


def write_norm_stats(plan: DataPlan, path) -> None:
    storage.write_text(path, json.dumps(plan.norm_stats, indent=1))
