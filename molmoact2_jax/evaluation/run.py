"""A suite from start to written result: record scripted-expert demonstrations (`record_suite`, what
`molmoact2-sim record` runs) or evaluate a checkpoint / baseline policy in closed loop (`evaluate_suite`, what
`molmoact2-eval` runs).

Everything that can be checked before a simulator starts is: the output folder (local, writable), the suite and
its tasks, whether the checkpoint fits the environment. Problems raise SimEvalError or storage.StorageError with a
one-line message. A checkpoint may be a `gs://` URI: the policy reads its weights in place, its norm stats and sim
settings are copied to a temporary folder; `out` is a local folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile

from data_pipelines.norm_stats import NORM_STATS_FILE
from molmoact2_jax import inference, storage
from molmoact2_jax.checkpoint_io.assets import find_asset
from molmoact2_jax.evaluation.config import (SIM_SETTINGS_FILE, SuiteSpec, config_from_settings, get_config,
                                             parse_cameras, parse_suite)
from molmoact2_jax.evaluation.envs import check_libero_tasks, check_metaworld_tasks
from molmoact2_jax.evaluation.errors import SimEvalError
from molmoact2_jax.evaluation.evaluator import EvalOptions, evaluate
from molmoact2_jax.evaluation.policies import ModelPolicy, check_checkpoint_fits, make_baseline
from molmoact2_jax.evaluation.recorder import RecordOptions, record


@dataclasses.dataclass(frozen=True)
class SimOverrides:
    """Simulator settings given explicitly (None: not given); they win over a checkpoint's sim_settings.json and
    over the simulator's defaults."""
    image_hw: tuple[int, int] | None = None
    cameras: str | None = None                 # comma-separated camera names, in policy order
    instruction_template: str | None = None
    slow_render: bool = False                  # keep shadows, reflections and multisampling (MetaWorld)
    norm_stats: str | None = None
    norm_tag: str | None = None


def sim_config(suite: SuiteSpec, overrides: SimOverrides, checkpoint: str | None = None):
    """The simulator config: a checkpoint's sim_settings.json (how it was trained) if it has one, else the
    simulator's defaults; `overrides` win over both."""
    given = dict(image_hw=tuple(overrides.image_hw) if overrides.image_hw else None,
                 cameras=parse_cameras(suite.simulator, overrides.cameras),
                 instruction_template=overrides.instruction_template,
                 fast_render=False if overrides.slow_render else None,
                 norm_stats_path=overrides.norm_stats, norm_tag=overrides.norm_tag)
    path = find_asset(checkpoint, [SIM_SETTINGS_FILE]) if checkpoint else None
    if path is None:
        return get_config(suite.simulator, **given)
    try:
        settings = json.loads(storage.as_path(path).read_text())
    except (OSError, ValueError) as e:
        raise SimEvalError(f"{path}: unreadable sim settings ({e})") from None
    if settings.get("simulator") != suite.simulator:
        raise SimEvalError(f"{path}: the checkpoint was set up for {settings.get('simulator')!r}, "
                           f"not the suite's simulator {suite.simulator!r}")
    return config_from_settings(settings, where=path, **given)


def check_suite(suite: SuiteSpec) -> SuiteSpec:
    """Resolves 'all' / empty task lists and rejects unknown suites and tasks before any worker starts."""
    if suite.simulator == "metaworld":
        return dataclasses.replace(suite, tasks=check_metaworld_tasks(suite.tasks))
    return dataclasses.replace(suite, tasks=check_libero_tasks(suite.suite, suite.tasks))


def check_local_out(out: str) -> None:
    """`out` is a local folder that can be created and written (storage.local_write_problem): a read-only folder
    fails here, in one line, instead of after minutes of simulation."""
    if storage.is_remote(out):
        raise SimEvalError(f"--out {out}: must be a local folder (videos and reports are written locally; "
                           f"copy them to a bucket afterwards, e.g. gcloud storage cp -r)")
    where, problem = storage.local_write_problem(out)
    if problem == "a file, not a folder":
        raise SimEvalError(f"--out {out}: {where} is a file, not a folder; choose another --out")
    if problem is not None:
        raise SimEvalError(f"--out {out}: cannot write there ({problem}); choose a folder you can write to")


def _local_assets(checkpoint: str, into: str) -> str:
    """A local folder (named like the checkpoint) holding a remote checkpoint's norm_stats.json and
    sim_settings.json, the files the evaluator reads before the policy; the weights are not downloaded."""
    view = os.path.join(into, storage.as_path(checkpoint).name)
    os.makedirs(view)
    for name in (NORM_STATS_FILE, SIM_SETTINGS_FILE):
        path = find_asset(checkpoint, [name])
        if path is not None:
            storage.download(path, view)
    return view


def record_suite(suite_spec: str, out: str, overrides: SimOverrides, options: RecordOptions) -> dict:
    """Scripted-expert demonstrations of a MetaWorld suite -> a LeRobot v3.0 dataset in `out`; the recorder's
    summary (per-task expert success, episodes and frames written, timings)."""
    check_local_out(out)
    suite = parse_suite(suite_spec)
    if suite.simulator != "metaworld":
        raise SimEvalError(f"record supports metaworld suites only (scripted experts), got {suite_spec!r}")
    suite = check_suite(suite)
    return record(suite, sim_config(suite, overrides), options, out)


def evaluate_suite(suite_spec: str, out: str, overrides: SimOverrides, options: EvalOptions,
                   checkpoint: str | None = None, baseline: str | None = None, mode: str | None = None) -> dict:
    """Closed-loop success rates of `checkpoint` (a checkpoint, HF export or run directory: its newest complete
    step, named on stderr) or of the `baseline` policy (mean-action, random, expert) on a suite; writes
    report.json, summary.png and videos/ into `out` and returns the report. `options.n_action_steps` None: the
    checkpoint's sim_settings.json, else its norm tag's."""
    check_local_out(out)
    if checkpoint:
        from molmoact2_jax.checkpoint_io.steps import resolve_checkpoint  # lazy: orbax + jax
        try:
            checkpoint = resolve_checkpoint(checkpoint)
        except FileNotFoundError as e:
            raise SimEvalError(str(e)) from None
    if not (checkpoint and storage.is_remote(checkpoint)):
        return _evaluate(suite_spec, out, overrides, options, checkpoint, checkpoint, baseline, mode)
    if not storage.as_path(checkpoint).is_dir():
        why = " (no such bucket)" if storage.missing_bucket(checkpoint) else ""
        raise SimEvalError(f"checkpoint directory not found: {checkpoint}{why}")
    with tempfile.TemporaryDirectory(prefix="molmoact2-eval-") as tmp:
        return _evaluate(suite_spec, out, overrides, options, checkpoint, _local_assets(checkpoint, tmp), baseline,
                         mode)


def _evaluate(suite_spec, out, overrides, options, checkpoint, assets_dir, baseline, mode) -> dict:
    """`assets_dir`: where the checkpoint's norm stats and sim settings are read (the checkpoint itself, or a local
    copy of those two files for a bucket's checkpoint, whose weights Policy.load reads in place)."""
    suite = parse_suite(suite_spec)
    cfg = sim_config(suite, overrides, assets_dir)
    if checkpoint:
        check_checkpoint_fits(assets_dir, cfg, overrides.norm_tag)   # before any simulator starts
    suite = check_suite(suite)
    if checkpoint:
        from_settings = cfg.n_action_steps if find_asset(assets_dir, [SIM_SETTINGS_FILE]) else None
        n_steps = options.n_action_steps or from_settings
        if checkpoint == assets_dir:
            policy = ModelPolicy.load(checkpoint, cfg, overrides.norm_tag, n_steps, mode)
        else:   # ModelPolicy.load's steps, the weights read from the bucket
            fit = check_checkpoint_fits(assets_dir, cfg, overrides.norm_tag)
            n = n_steps or fit["n_action_steps"] or cfg.n_action_steps
            policy = ModelPolicy(inference.Policy.load(checkpoint), fit["tag"], int(n), mode, fit["camera_order"])
        name = f"model:{os.path.basename(os.path.normpath(checkpoint))}"
        n_exec = policy.n_action_steps
    else:
        policy = make_baseline(baseline, cfg, norm_stats=overrides.norm_stats, norm_tag=overrides.norm_tag,
                               n_steps=options.n_action_steps, seed=options.seed)
        name, n_exec = baseline, options.n_action_steps
    return evaluate(policy, suite, cfg, dataclasses.replace(options, n_action_steps=n_exec, policy_name=name), out)
