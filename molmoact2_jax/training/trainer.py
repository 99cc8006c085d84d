"""The training loop: sharded init, jitted train step, metrics, evaluation, checkpoints, preemption.

The same code runs on one CPU, fake CPU devices, several local processes, a TPU pod or SLURM nodes; only
`config.mesh` and the process environment change.

WORKDIR (a local folder or a bucket, `gs://...`): metrics.jsonl (one JSON object per step), tensorboard/ (event
files), run_info.json (cluster, mesh, memory, FLOPs, goodput, the config fields resolved at start-up), assets/,
checkpoints/<step>/ (see checkpointing.py), profile/ (optional jax.profiler traces). Nothing is written under the
current directory.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from molmoact2_jax import storage
from molmoact2_jax.models import attention
from molmoact2_jax.models import flops as flops_lib
from molmoact2_jax.models.molmoact2 import MolmoAct2
from molmoact2_jax.progress import progress_bar
from molmoact2_jax.sharding import distributed
from molmoact2_jax.sharding import mesh as mesh_lib
from molmoact2_jax.sharding import rules as rules_lib
from molmoact2_jax.training import checkpointing, data_source, depth_noise, lora, memory, run_setup
from molmoact2_jax.training import metrics as metrics_lib
from molmoact2_jax.training.init_from import load_init_params
from molmoact2_jax.training.optimizer import make_optimizer
from molmoact2_jax.training.synthetic_data import SyntheticRobotData, write_synthetic_assets
from molmoact2_jax.training.train_step import TrainState, init_state, make_train_step

log = logging.getLogger("molmoact2_jax.trainer")


class TrainingAborted(RuntimeError):
    pass


# ---------------------------------------------------------------- setup helpers
def validate_config(cfg, mesh) -> None:
    """Config errors that can be caught before anything is compiled, each naming its field."""
    gb = int(cfg.data.global_batch_size)
    dp = mesh_lib.data_parallel_size(mesh)
    if gb % dp:
        raise ValueError(f"config.data.global_batch_size={gb} is not divisible by the data-parallel size {dp} "
                         f"(mesh slice x data x fsdp)")
    if gb % jax.process_count():
        raise ValueError(f"config.data.global_batch_size={gb} is not divisible by {jax.process_count()} processes")
    accum = int(cfg.trainer.grad_accum_steps)
    if (gb // jax.process_count()) % accum:
        raise ValueError(f"config.trainer.grad_accum_steps={accum} does not divide the per-process batch "
                         f"{gb // jax.process_count()}")
    if int(cfg.total_steps) < 1:
        raise ValueError(f"config.total_steps={cfg.total_steps}: must be >= 1")


def make_data(cfg, split: str = "train", plan=None):
    """The training (or eval) batch iterator for this process. `plan`: the run_setup.DataPlan of a prepared
    config (`cfg, plan = run_setup.prepare(cfg)`); without one, `cfg` is prepared here."""
    if plan is None:
        cfg, plan = run_setup.prepare(cfg, check_lengths=False)
    if plan.kind != "synthetic":
        return data_source.make(cfg, split, plan)
    seed = int(cfg.data.seed) + (0 if split == "train" else 1_000_003)
    return SyntheticRobotData(cfg.model, int(cfg.data.global_batch_size), int(cfg.data.seq_len), seed,
                              jax.process_index(), jax.process_count(),
                              action_dim=int(cfg.data.synthetic_action_dim), style_weights=cfg.data.style_weights)


def global_batch(local: dict, shardings: dict, global_size: int) -> dict:
    """Host-local numpy batch -> global jax arrays sharded over the data-parallel axes."""
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_process_local_data(shardings[k], v, (global_size, *v.shape[1:]))
    return out


class Setup:
    """Everything derived from the config: mesh, model, optimizer, shardings and jitted functions."""

    def __init__(self, cfg, example_local_batch: dict, devices=None):
        """`example_local_batch`: arrays or ShapeDtypeStructs with this process' batch shapes; `devices`: the
        devices to build the mesh from (default jax.devices(); molmoact2-compile passes a TPU topology's)."""
        self.cfg = cfg
        self.mesh = mesh_lib.make_mesh(cfg.mesh, devices)
        validate_config(cfg, self.mesh)
        self.rules = rules_lib.rules_from_config(cfg.sharding.rules)
        self.model = MolmoAct2(cfg.model)
        gb = int(cfg.data.global_batch_size)
        self.batch_shapes = {k: jax.ShapeDtypeStruct((gb, *np.shape(v)[1:]), _dtype_of(v))
                             for k, v in example_local_batch.items()}
        self.batch_shardings = {k: rules_lib.batch_sharding(self.mesh, len(s.shape))
                                for k, s in self.batch_shapes.items()}
        rng = jax.random.PRNGKey(int(cfg.seed))
        self.lora_cfg = cfg.lora if cfg.lora.enabled else None

        def init_boxed(rng, batch):
            boxed = self.model.init(rng, batch)
            if self.lora_cfg is not None:
                boxed["lora"] = lora.init_lora(jax.random.fold_in(rng, 7), boxed, self.lora_cfg)
            return boxed

        with self.context():
            boxed = jax.eval_shape(init_boxed, rng, self.batch_shapes)
        rules_lib.check_rules_cover(boxed, self.rules)
        self.param_shardings = nn.unbox(rules_lib.tree_shardings(boxed, self.mesh, self.rules))
        abstract_params = nn.unbox(boxed)
        self.tx, self.labels, self.schedules = make_optimizer(abstract_params, cfg.optimizer, int(cfg.total_steps),
                                                              self.lora_cfg)
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        replicated = NamedSharding(self.mesh, P())
        masked = lambda x: isinstance(x, optax.MaskedNode)
        opt_shardings = optax.tree_map_params(
            self.tx, lambda p, s: p if masked(p) else s, abstract_opt, self.param_shardings,
            transform_non_params=lambda _: replicated, is_leaf=masked)
        self.ema_decay = float(cfg.ema.decay)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"config.ema.decay={self.ema_decay}: expected 0 (off) or a decay in (0, 1)")
        ema = self.ema_decay > 0
        self.state_shardings = TrainState(step=replicated, params=self.param_shardings, opt_state=opt_shardings,
                                          rng=replicated, bad_steps=replicated, skipped_steps=replicated,
                                          ema_params=self.param_shardings if ema else None)

        def create(rng):
            zeros = {k: jnp.zeros(s.shape, s.dtype) for k, s in self.batch_shapes.items()}
            params = nn.unbox(init_boxed(rng, zeros))
            return init_state(params, self.tx, jax.random.fold_in(rng, 1), ema)

        with self.context():
            self.abstract_state = jax.eval_shape(create, rng)
        self._create = jax.jit(create, out_shardings=self.state_shardings)
        self._compiled: dict = {}
        self.init_rng = rng
        step_fn = make_train_step(self.loss_fn, self.tx, self.labels, int(cfg.trainer.grad_accum_steps),
                                  self.ema_decay)
        self.train_step = jax.jit(step_fn, in_shardings=(self.state_shardings, self.batch_shardings),
                                  out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
        # The trainer's eval scores the weights that are served: the EMA when there is one.
        self.eval_step = jax.jit(lambda s, b: self.loss_fn(s.params if s.ema_params is None else s.ema_params, b,
                                                           jax.random.PRNGKey(0), training=False)[1],
                                 in_shardings=(self.state_shardings, self.batch_shardings), out_shardings=replicated)

    def loss_fn(self, params, batch, rng, training: bool = True):
        if self.lora_cfg is not None:
            params = lora.merge(params, self.lora_cfg)
        noise_rate = float(self.cfg.data.depth_code_input_noise_rate)
        if training and noise_rate:
            rng, noise_rng = jax.random.split(rng)
            batch = depth_noise.add_depth_code_input_noise(batch, noise_rng, noise_rate, self.model.cfg.tokens)
        return self.model.compute_loss(params, batch, rng)

    def context(self):
        """Mesh + logical axis rules, needed while tracing (activation sharding constraints)."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    def compiled(self, name: str, jitted, *args):
        """AOT-compiles `jitted` for `args` once; all processes then meet at a barrier, so a slower compile in one
        process cannot make the others' first collective time out."""
        if name not in self._compiled:
            with self.context():
                self._compiled[name] = jitted.lower(*args).compile()
            distributed.barrier(f"{name}_compiled")
        return self._compiled[name]

    def create_state(self):
        return self.compiled("create", self._create, self.init_rng)(self.init_rng)

    def state_from_params(self, params):
        """A fresh train state (new optimizer state) around given params, placed with the param shardings."""
        params = jax.device_put(params, self.param_shardings)
        fn = jax.jit(lambda p, rng: init_state(p, self.tx, rng, self.ema_decay > 0),
                     out_shardings=self.state_shardings)
        rng = jax.random.fold_in(self.init_rng, 1)
        return self.compiled("state_from_params", fn, params, rng)(params, rng)

    def abstract_sharded_state(self):
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self.abstract_state,
                            self.state_shardings)

    def abstract_sharded_batch(self):
        return {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.batch_shardings[k])
                for k, s in self.batch_shapes.items()}

    def trainable_groups(self) -> tuple:
        """Groups whose weights get gradients (for the FLOP count): not frozen, and not the base LLM under LoRA
        (whose kernels still get a gradient, for the adapters: `lora=True` in flops.train_step_flops)."""
        frozen = set(self.cfg.optimizer.freeze) | ({"llm"} if self.lora_cfg is not None else set())
        return tuple(g for g in flops_lib.GROUP_ORDER if g not in frozen)

    def step_flops(self, global_batch_or_shapes) -> dict:
        """{"hardware", "model"} FLOPs of one step over the global batch (models/flops.py), under the mesh (an
        'auto' attention resolves for the devices compiled for)."""
        with self.context():
            return flops_lib.train_step_flops(self.cfg.model, global_batch_or_shapes,
                                              trainable=self.trainable_groups(), lora=self.lora_cfg is not None)

    def attention_impl(self) -> str:
        """The attention implementation the step compiles with (config model.attention_impl resolved for the
        mesh's platform: models/attention.py)."""
        with self.context():
            return attention.resolve(self.cfg.model.attention_impl)

    def model_flops(self, host_batch) -> float:
        """Useful FLOPs of a host batch (its masks), for MFU."""
        return flops_lib.model_flops(self.cfg.model, host_batch, trainable=self.trainable_groups(),
                                     lora=self.lora_cfg is not None)


def _dtype_of(v):
    return np.dtype(v.dtype) if hasattr(v, "dtype") else np.asarray(v).dtype


class PreemptionWatcher:
    """Decides the step at which a stop request (SIGTERM: a TPU maintenance event, `scancel`, a spot reclaim) saves
    and exits, the same step on every process.

    With jax.distributed initialised, JAX's preemption sync manager owns SIGTERM (its notifier is installed by
    `jax.distributed.initialize`; a Python handler would replace it): once any one process is signalled,
    `reached_preemption_sync_point(step)` turns True on every process at the same step. A single process without a
    coordination service uses a Python handler instead."""

    def __init__(self):
        self.requested = False
        self.synced = distributed.preemption_sync_available()
        self._old = None if self.synced else signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, *_):
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if self.synced:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.requested

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


# ---------------------------------------------------------------- the loop
def train(cfg, workdir: str) -> dict:
    """Trains `cfg` (a recipe's config, prepared here: run_setup.prepare) in `workdir`. Every config, data and
    run-directory error is raised before the run directory is created or anything compiles. The prepared config is
    only read from then on (the fields prepare resolved are in WORKDIR/run_info.json, "resolved")."""
    goodput = metrics_lib.Goodput()
    cfg, plan = run_setup.prepare(cfg)
    validate_config(cfg, mesh_lib.make_mesh(cfg.mesh))
    workdir = str(storage.check_writable(workdir))   # a folder it cannot write, or a missing bucket: one line
    run_setup.check_workdir(cfg, workdir)             # another run's directory: one line, nothing written
    for note in plan.notes:
        log.info("%s", note)
    primary = jax.process_index() == 0
    cache_dir = cfg.trainer.compilation_cache_dir
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache_dir))

    data = make_data(cfg, plan=plan)
    start_state = data.get_state()
    example = next(data)  # shapes for Setup; the iterator is rewound so training still starts at this batch
    data.set_state(start_state)
    setup = Setup(cfg, example)
    checkpointing.check_shared(workdir)
    ckpt = checkpointing.Checkpointer(workdir, cfg.checkpoint, assets_dir=str(storage.as_path(workdir) / "assets"))
    with goodput.timed("checkpoint_restore"):
        restored = ckpt.restore_latest(setup.abstract_sharded_state())
    if restored is None:
        with goodput.timed("compile"):
            state = setup.create_state()
        start = 0
        if cfg.init_from:
            with goodput.timed("checkpoint_restore"):
                state = setup.state_from_params(load_init_params(cfg, state.params))
    else:
        start, state, data_state, _ = restored
        data.set_state(checkpointing.from_jsonable(data_state))
        log.info("resumed from %s/%d", ckpt.directory, start)
    writer = metrics_lib.MetricWriter(workdir, resume_step=start)
    assets = copy_assets(cfg, plan, workdir) if primary else {}
    if primary:
        metrics_lib.write_run_info(workdir, setup, state, distributed.info().record(), resolved={
            "fields": plan.resolved, "origins": plan.origins, "notes": list(plan.notes)})
    watcher = PreemptionWatcher()
    total = int(cfg.total_steps)
    gb = int(cfg.data.global_batch_size)
    every = int(cfg.checkpoint.every_steps)
    eval_every = int(cfg.trainer.eval_every_steps)
    profile = tuple(cfg.trainer.profile_steps)
    peak = float(cfg.trainer.peak_tflops_per_device)
    compiled = hardware_flops = eval_batches = None
    bar = None
    if primary:
        bar = progress_bar(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
    last = {}
    preempted = False
    try:
        with setup.context():
            for step in range(start, total):
                if profile and step == profile[0]:
                    jax.profiler.start_trace(str(storage.as_path(workdir) / "profile"))
                with goodput.timed("data_wait") as waited:
                    local = next(data)
                    batch = global_batch(local, setup.batch_shardings, gb)
                if compiled is None:  # compile once (AOT); its memory analysis goes into run_info.json
                    with goodput.timed("compile"):
                        compiled = setup.compiled("train_step", setup.train_step, state, batch)
                    hardware_flops = setup.step_flops(setup.batch_shapes)["hardware"]
                    if primary:
                        mem = memory.memory_report(compiled, peak_is_live=jax.devices()[0].platform != "cpu")
                        metrics_lib.update_run_info(workdir, {"train_step_memory_per_device": mem,
                                                  "hardware_flops_per_step": hardware_flops})
                # Useful work of this batch (its masks); each process sees its slice of the global batch.
                model_flops = setup.model_flops(local) * jax.process_count()
                t0 = time.perf_counter()
                state, metrics = compiled(state, batch)
                metrics = jax.device_get(metrics)
                dt = time.perf_counter() - t0
                goodput.add("step", dt)
                if profile and step == profile[0] + profile[1] - 1:
                    jax.profiler.stop_trace()
                tokens = float(np.sum(np.asarray(local["attention_mask"]))) * jax.process_count()
                row = {k: v for k, v in metrics.items()}
                row.update(step_time_s=dt, data_wait_s=waited.seconds, tokens_per_s=tokens / dt,
                           bad_steps=int(state.bad_steps), skipped_steps=int(state.skipped_steps))
                row.update({f"lr_{g}": float(s(step)) for g, s in setup.schedules.items()})
                n_dev = setup.mesh.size
                row["flops_per_step_per_device"] = hardware_flops / n_dev
                row["model_flops_per_step_per_device"] = model_flops / n_dev
                if peak:
                    row["mfu"] = model_flops / n_dev / dt / (float(peak) * 1e12)
                    row["hfu"] = hardware_flops / n_dev / dt / (float(peak) * 1e12)
                if eval_every and (step + 1) % eval_every == 0:
                    with goodput.timed("eval"):
                        if eval_batches is None:   # built at the first eval, then re-read from its start
                            eval_batches = EvalBatches(make_data(cfg, "eval", plan))
                        row.update(evaluate(cfg, setup, state, eval_batches))
                writer.write(step + 1, row)
                last = row
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
                if int(state.bad_steps) >= int(cfg.trainer.max_consecutive_bad_steps):
                    raise TrainingAborted(f"{int(state.bad_steps)} consecutive steps with non-finite loss or "
                                          f"gradients (config.trainer.max_consecutive_bad_steps) at step {step + 1}")
                done = step + 1 == total
                if watcher.should_stop(step + 1):
                    with goodput.timed("checkpoint_save"):
                        ckpt.save(step + 1, state, data.get_state(), cfg, assets, force=True)
                    preempted = True
                    log.warning("preemption requested: saved step %d, exiting", step + 1)
                    break
                if (every and (step + 1) % every == 0) or done:
                    with goodput.timed("checkpoint_save"):
                        ckpt.save(step + 1, state, data.get_state(), cfg, assets, force=done)
                    writer.upload()
    finally:
        with goodput.timed("checkpoint_save"):
            ckpt.close()
        writer.close()
        watcher.restore()
        if primary and compiled is not None:
            report = goodput.report()
            metrics_lib.update_run_info(workdir, {"goodput": report})
            log.info("goodput: %.1f%% of %.1f s in train steps (compile %.1f s, data %.1f s, checkpoints %.1f s)",
                     100 * report["step_fraction"], report["wall_s"], report["compile_s"], report["data_wait_s"],
                     report["checkpoint_save_s"] + report["checkpoint_restore_s"])
        if bar is not None:
            bar.close()
    # `config`: the prepared config the run trained (token layout, sizes from the data), as its checkpoints save it
    return {"last_metrics": last, "preempted": preempted, "start_step": start, "state": state, "config": cfg}


def copy_assets(cfg, plan, workdir: str) -> dict:
    """Run assets (norm stats, text tokenizer, OpenFAST tokenizer) copied into WORKDIR/assets/; the checkpointer
    copies that folder into every step directory, so each checkpoint serves on its own, and each checkpoint's meta
    lists them with their sha256. The norm stats are the run's (run_setup: the given file, or the sources' shard
    folders' stats under the sources' tags). A run on synthetic data writes the synthetic embodiment's assets
    (training/synthetic_data.py), so its checkpoints serve too. Sources and WORKDIR may be local or in a bucket."""
    out = {}
    dst = storage.as_path(workdir) / "assets"
    if plan.kind == "synthetic":
        with tempfile.TemporaryDirectory(prefix="molmoact2-assets-") as tmp:
            write_synthetic_assets(cfg, tmp)
            storage.copy_tree(tmp, dst, skip_existing=False)
    else:
        run_setup.write_norm_stats(plan, dst / "norm_stats.json")
        dst.mkdir(parents=True, exist_ok=True)
        (dst / "tokenizer.json").write_bytes(storage.as_path(plan.tokenizer).read_bytes())
        if plan.openfast:
            storage.copy_tree(plan.openfast, dst / "openfast", skip_existing=False)
    for path in sorted(dst.iterdir(), key=lambda p: p.name) if dst.is_dir() else ():
        out[path.name] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class EvalBatches:
    """The eval split's batch iterator, built once per run; every eval reads the same first batches again (the
    iterator is rewound to its start state), so evals are comparable and no pipeline is rebuilt."""

    def __init__(self, data):
        self.data = data
        self.start = data.get_state()

    def take(self, n: int):
        self.data.set_state(self.start)
        for _ in range(n):
            yield next(self.data)


def evaluate(cfg, setup: Setup, state, eval_batches: EvalBatches) -> dict:
    """Mean eval metrics over trainer.eval_batches batches of `eval_batches` (make_data(cfg, "eval", plan)): of
    data.eval_sources (held out) when given, else of the training sources read in order without augmentation;
    synthetic runs draw another seed's batches."""
    n = int(cfg.trainer.eval_batches)
    sums: dict = {}
    for local in eval_batches.take(n):
        batch = global_batch(local, setup.batch_shardings, int(cfg.data.global_batch_size))
        m = jax.device_get(setup.compiled("eval_step", setup.eval_step, state, batch)(state, batch))
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v) / n
    return {f"eval_{k}": v for k, v in sums.items()}
