"""Trainer on one CPU device: end-to-end tiny run, metrics files, NaN guard, grad accumulation, LoRA, config errors."""
import glob
import os
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from molmoact2_jax.models.config import apply_overrides
from molmoact2_configs.pretrain import get_config
from molmoact2_jax.sharding import mesh as mesh_lib
from molmoact2_jax.sharding import rules as rules_lib
from molmoact2_jax.training import trainer
from molmoact2_jax.training.optimizer import make_optimizer
from molmoact2_jax.training.train_step import init_state, make_train_step
from train_harness import CACHE


def tiny_cfg(**kw):
    c = get_config("tiny")
    c.model.use_action_expert = True
    c.model.action_mode = "both"
    c.trainer.compilation_cache_dir = CACHE
    apply_overrides(c, kw)
    return c


def read_events(path):
    """Scalars from a TensorBoard event file (TFRecord framing, parsed with our own reader)."""
    from data_pipelines.formats import tfrecord
    from tensorboardX.proto import event_pb2
    out = {}
    for rec in tfrecord.read_records(path):
        ev = event_pb2.Event.FromString(rec)
        for v in ev.summary.value:
            out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_tiny_run_learns_and_writes_metrics(tmp_path):
    cfg = tiny_cfg(total_steps=30, **{"trainer.eval_every_steps": 15, "checkpoint.every_steps": 15})
    out = trainer.train(cfg, str(tmp_path))
    import json
    rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert all(np.isfinite(r["loss"]) for r in rows) and "eval_total_loss" in rows[14]
    first, last = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
    print(f"loss {first:.3f} -> {last:.3f}; flow {rows[0]['flow_loss']:.3f} -> {rows[-1]['flow_loss']:.3f}")
    assert last < 0.8 * first
    for key in ("ce_loss", "flow_loss", "grad_norm", "lr_llm", "tokens_per_s", "step_time_s"):
        assert key in rows[-1]
    events = read_events(glob.glob(str(tmp_path / "tensorboard" / "events*"))[0])
    assert [s for s, _ in events["loss"]] == list(range(1, 31))
    np.testing.assert_allclose([v for _, v in events["loss"]], [r["loss"] for r in rows], rtol=1e-6)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["15", "30"]
    # A step directory is a self-describing params checkpoint for params-only restores.
    from molmoact2_jax.checkpoint_io import params as params_io
    params, mcfg = params_io.load_params(str(tmp_path / "checkpoints" / "30"))
    assert mcfg.llm.hidden_size == cfg.model.llm.hidden_size
    np.testing.assert_array_equal(params["action_expert"]["action_embed"]["kernel"],
                                  np.asarray(out["state"].params["action_expert"]["action_embed"]["kernel"]))


def test_nan_guard_skips_updates_and_aborts(tmp_path):
    tx = optax.sgd(0.1)
    params = {"vit": {"w": jnp.ones(3)}}
    labels = {"vit": {"w": "vit"}}

    def loss_fn(p, batch, rng):
        loss = jnp.sum(p["vit"]["w"] * batch["x"])
        return loss, {}

    step = jax.jit(make_train_step(loss_fn, tx, labels))
    state = init_state(params, tx, jax.random.PRNGKey(0))
    state, m = step(state, {"x": jnp.array([1.0, jnp.nan, 0.0])})
    assert not bool(m["finite"]) and int(state.bad_steps) == 1 and int(state.skipped_steps) == 1
    np.testing.assert_array_equal(state.params["vit"]["w"], np.ones(3))     # update skipped
    state, m = step(state, {"x": jnp.array([1.0, 1.0, 0.0])})
    assert bool(m["finite"]) and int(state.bad_steps) == 0 and int(state.skipped_steps) == 1
    np.testing.assert_allclose(state.params["vit"]["w"], [0.9, 0.9, 1.0])

    cfg = tiny_cfg(total_steps=20, **{"model.loss.ce_weight": float("nan"), "trainer.max_consecutive_bad_steps": 3})
    with pytest.raises(trainer.TrainingAborted, match="3 consecutive steps"):
        trainer.train(cfg, str(tmp_path))


def test_grad_accumulation_matches_full_batch():
    tx = optax.sgd(0.1)
    params = {"llm": {"w": jnp.array([0.5, -1.0, 2.0])}}
    labels = {"llm": {"w": "llm"}}
    loss_fn = lambda p, b, r: (jnp.mean(jnp.square(b["x"] @ p["llm"]["w"] - b["y"])), {})
    batch = {"x": jax.random.normal(jax.random.PRNGKey(1), (8, 3)), "y": jnp.arange(8.0)}
    s1, m1 = jax.jit(make_train_step(loss_fn, tx, labels, 1))(init_state(params, tx, jax.random.PRNGKey(0)), batch)
    s4, m4 = jax.jit(make_train_step(loss_fn, tx, labels, 4))(init_state(params, tx, jax.random.PRNGKey(0)), batch)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(s1.params["llm"]["w"], s4.params["llm"]["w"], rtol=1e-6)


def test_lora_trains_adapters_only(tmp_path):
    cfg = tiny_cfg(total_steps=8, **{"lora.enabled": True, "lora.rank": 4, "checkpoint.every_steps": 0,
                                     "optimizer.freeze": ("vit", "connector")})
    data = trainer.make_data(cfg)
    setup = trainer.Setup(cfg, next(iter(trainer.make_data(cfg))))
    s0 = setup.create_state()
    before = jax.device_get(s0.params)
    out = trainer.train(cfg, str(tmp_path))
    after = jax.device_get(out["state"].params)
    np.testing.assert_array_equal(before["backbone"]["llm"]["blocks"]["q_proj"]["kernel"],
                                  after["backbone"]["llm"]["blocks"]["q_proj"]["kernel"])      # base LLM frozen
    np.testing.assert_array_equal(before["backbone"]["vit"]["patch_embedding"]["kernel"],
                                  after["backbone"]["vit"]["patch_embedding"]["kernel"])       # frozen group
    assert np.abs(after["lora"]["backbone"]["llm"]["blocks"]["q_proj"]["lora_b"]).max() > 0    # adapters move
    assert not np.array_equal(before["action_expert"]["action_embed"]["kernel"],
                              after["action_expert"]["action_embed"]["kernel"])
    del data


def test_bad_configs_fail_before_compiling():
    with pytest.raises(ValueError, match=r"config.mesh: slice=1 x data=3 x fsdp=1 x tensor=1 = 3 devices, but 8"):
        mesh_lib.mesh_shape({"data": 3}, 8)
    with pytest.raises(ValueError, match="only one axis may be -1"):
        mesh_lib.mesh_shape({"data": -1, "fsdp": -1}, 8)
    assert mesh_lib.mesh_shape({"data": -1, "tensor": 2}, 8)["data"] == 4
    fake_mesh = types.SimpleNamespace(shape={"slice": 1, "data": 2, "fsdp": 2, "tensor": 2})
    with pytest.raises(ValueError, match="config.data.global_batch_size=6 is not divisible by the data-parallel "
                                         "size 4"):
        trainer.validate_config(tiny_cfg(**{"data.global_batch_size": 6}), fake_mesh)
    with pytest.raises(ValueError, match="config.mesh"):
        trainer.Setup(tiny_cfg(**{"mesh.data": 2}), next(iter(trainer.make_data(tiny_cfg()))))
    rules = tuple(r for r in rules_lib.DEFAULT_RULES if r[0] != "expert_mlp")
    cfg = tiny_cfg()
    cfg.sharding = {"rules": [list(r) for r in rules]}
    with pytest.raises(ValueError, match="logical axis 'expert_mlp' has no entry in config.sharding.rules"):
        trainer.Setup(cfg, next(iter(trainer.make_data(cfg))))


def test_ema_follows_the_params_and_is_what_a_step_directory_serves(tmp_path):
    d = 0.6
    cfg = tiny_cfg(total_steps=3, **{"ema.decay": d, "checkpoint.every_steps": 3, "trainer.eval_every_steps": 0})
    data = trainer.make_data(cfg)
    start = data.get_state()
    setup = trainer.Setup(cfg, next(data))
    data.set_state(start)
    state = setup.create_state()
    expected = jax.tree.map(np.asarray, state.params)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.ema_params), expected)
    with setup.context():
        for _ in range(3):
            batch = trainer.global_batch(next(data), setup.batch_shardings, int(cfg.data.global_batch_size))
            state, _ = setup.train_step(state, batch)
            expected = jax.tree.map(lambda e, p: d * e + (1 - d) * np.asarray(p), expected, state.params)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, state.ema_params), expected, rtol=1e-6, atol=1e-7)
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
             zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params))]
    assert max(moved) > 1e-4   # the average lags the params
    # the trainer run: its step directory serves the EMA by default, the params on request
    out = trainer.train(cfg, str(tmp_path / "run"))
    step = str(tmp_path / "run" / "checkpoints" / "3")
    from molmoact2_jax.checkpoint_io.params import load_params
    chex.assert_trees_all_equal(load_params(step)[0], jax.tree.map(np.asarray, out["state"].ema_params))
    chex.assert_trees_all_equal(load_params(step, weights="raw")[0], jax.tree.map(np.asarray, out["state"].params))
    chex.assert_trees_all_close(load_params(step)[0], expected, rtol=1e-6, atol=1e-7)   # same run, same batches
    plain = tiny_cfg(total_steps=1, **{"checkpoint.every_steps": 1, "trainer.eval_every_steps": 0})
    trainer.train(plain, str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="kept no EMA weights"):
        load_params(str(tmp_path / "plain" / "checkpoints" / "1"), weights="ema")
    with pytest.raises(ValueError, match="config.ema.decay=1.0"):
        trainer.Setup(tiny_cfg(**{"ema.decay": 1.0}), next(trainer.make_data(plain)))


def test_freeze_never_computes_the_frozen_groups_gradients():
    """optimizer.freeze stops gradients before they are computed (not computed, then zeroed by the optimizer): the
    step's grad_norm leaves the frozen groups out exactly, and XLA drops their backward (fewer FLOPs)."""
    frozen = ("vit", "connector")
    out = {}
    for freeze in ((), frozen):
        cfg = tiny_cfg(**{"optimizer.freeze": freeze, "model.flow.detach_vlm": False})
        host = next(iter(trainer.make_data(cfg)))
        setup = trainer.Setup(cfg, host)
        state = setup.create_state()
        batch = jax.device_put(host, setup.batch_shardings)
        rng = jax.random.fold_in(state.rng, state.step)
        with setup.context():
            grads = jax.jit(jax.grad(lambda p: setup.loss_fn(p, batch, rng)[0]))(state.params)  # all groups
            compiled = setup.train_step.lower(setup.abstract_sharded_state(), setup.abstract_sharded_batch()).compile()
        labels = make_optimizer(state.params, tiny_cfg().optimizer, 10)[1]   # the unfrozen labelling
        _, metrics = compiled(state, batch)
        out[freeze] = dict(grad_norm=float(metrics["grad_norm"]), flops=compiled.cost_analysis()["flops"],
                           grads=grads, labels=labels)
    full, part = out[()], out[frozen]
    sq = lambda keep: sum(float(jnp.sum(jnp.square(g))) for g, lab in
                          zip(jax.tree.leaves(full["grads"]), jax.tree.leaves(full["labels"])) if keep(lab))
    frozen_sq = sq(lambda lab: lab in frozen)
    assert frozen_sq > 1e-6 * sq(lambda lab: True)          # the frozen groups would have had gradients
    np.testing.assert_allclose(full["grad_norm"], np.sqrt(sq(lambda lab: True)), rtol=1e-4)
    np.testing.assert_allclose(part["grad_norm"], np.sqrt(sq(lambda lab: lab not in frozen)), rtol=1e-4)
    assert part["flops"] < full["flops"]   # the frozen backward is gone (cost_analysis counts scanned layers once)


def test_init_from_reports_missing_and_unexpected_keys(tmp_path, caplog):
    """config.init_from over fresh params: loaded tensors replace fresh ones, a key the checkpoint lacks stays fresh
    and is reported missing, a key only the checkpoint has is reported unexpected, init_fresh groups stay fresh,
    and a shape mismatch names the key."""
    import logging

    import ml_collections
    from flax import traverse_util

    from molmoact2_jax.checkpoint_io.params import save_params
    from molmoact2_jax.inference import testing as T
    from molmoact2_jax.training.init_from import load_init_params

    cfg = T.model_config("tiny")
    saved = traverse_util.flatten_dict(T.init_params(cfg, seed=1), sep="/")
    fresh = traverse_util.flatten_dict(T.init_params(cfg, seed=2), sep="/")
    gone = sorted(k for k in saved if k.startswith("backbone/connector/"))[0]
    del saved[gone]
    saved["backbone/retired_head/kernel"] = np.ones((3, 4), np.float32)
    save_params(str(tmp_path / "ckpt"), traverse_util.unflatten_dict(saved, sep="/"), cfg)
    run = ml_collections.ConfigDict({"init_from": str(tmp_path / "ckpt"), "init_fresh": ("action_expert",)})
    with caplog.at_level(logging.INFO, logger="molmoact2_jax.trainer"):
        out = traverse_util.flatten_dict(load_init_params(run, traverse_util.unflatten_dict(
            {k: jnp.asarray(v) for k, v in fresh.items()}, sep="/")), sep="/")
    msg = caplog.text
    assert f"missing 1 ['{gone}']" in msg and "unexpected 1 ['backbone/retired_head/kernel']" in msg, msg
    assert "fresh groups ['action_expert']" in msg
    assert set(out) == set(fresh)
    for k, v in out.items():
        want = fresh[k] if (k == gone or k.startswith("action_expert/")) else saved[k]
        np.testing.assert_array_equal(np.asarray(v), np.asarray(want), err_msg=k)
    # a shape mismatch is an error naming the key
    other = dict(saved)
    key = next(k for k in saved if k.startswith("backbone/llm/") and np.ndim(saved[k]) >= 2)
    other[key] = np.zeros(np.shape(saved[key])[:-1] + (np.shape(saved[key])[-1] + 1,), np.float32)
    save_params(str(tmp_path / "bad"), traverse_util.unflatten_dict(other, sep="/"), cfg)
    run.init_from = str(tmp_path / "bad")
    with pytest.raises(ValueError, match=f"{key} has shape"):
        load_init_params(run, traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in fresh.items()}, sep="/"))
