"""User-error cases: training (see tests/user_errors/__init__.py). Each fails before the run directory is made and
before anything compiles: config values, the data a run would read, its assets and sizes, the run directory."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from user_errors import Case

REPO = Path(__file__).resolve().parents[2]
FINETUNE_TINY = f"--config={REPO / 'configs' / 'finetune.py'}:robot_tiny"
PRETRAIN_TINY = f"--config={REPO / 'configs' / 'pretrain.py'}:tiny"
TAG = "my_arm"


def _stats_entry(horizon: int, dim: int = 2) -> dict:
    feature = dict(min=[-1.0] * dim, max=[1.0] * dim, mean=[0.0] * dim, std=[0.5] * dim, q01=[-0.9] * dim,
                   q99=[0.9] * dim, names=[f"joint{i}" for i in range(dim)])
    return dict(action_stats=feature, state_stats=feature, action_horizon=horizon, n_action_steps=horizon,
                action_dim=dim, normalize_gripper=True, camera_keys=[])


def fake_shards(folder: Path, horizon: int = 30, stats: bool = True, tokenizer: bool = True,
                openfast: bool = True) -> Path:
    """The metadata of a converted shard directory (index.json, norm_stats.json, assets) without records: enough
    for the checks that read no frame. The OpenFAST folder is empty (it is only looked for before the sizes)."""
    from data_pipelines.shards import INDEX_FORMAT

    folder.mkdir(parents=True)
    (folder / "index.json").write_text(json.dumps(dict(format=INDEX_FORMAT, tag=TAG, horizon=horizon, shards=[],
                                                       camera_keys=["cam"])))
    if stats:
        (folder / "norm_stats.json").write_text(json.dumps(dict(
            format="molmoact2_norm_stats.v1", norm_mode="q01_q99", metadata_by_tag={TAG: _stats_entry(horizon)})))
    if tokenizer:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator(["move the arm"] * 4, trainers.BpeTrainer(
            vocab_size=280, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.save(str(folder / "tokenizer.json"))
    if openfast:
        (folder / "openfast").mkdir()
    return folder


_CONVERTED: dict = {}


def converted_so100() -> Path:
    """A real so100 conversion with `molmoact2-data convert`'s defaults (30-step chunks, 378 px), with its norm
    stats, a text tokenizer and an OpenFAST tokenizer in the shard folder; built once per process, outside the
    cases' folders (an input, like a dataset on disk)."""
    if "so100" not in _CONVERTED:
        import numpy as np

        from data_pipelines.convert import ConvertOptions, convert
        from data_pipelines.fixtures import make_fixture
        from data_pipelines.stats import write_norm_stats
        from molmoact2_jax.tokenizers.openfast import OpenFAST

        root = Path(tempfile.mkdtemp(prefix="molmoact2-user-errors-"))
        src = make_fixture("lerobot-v3.0", "so100", root / "so100", episodes=2, length=12)
        shards = root / "shards"
        convert(ConvertOptions(source=f"lerobot:{src}", embodiment="so100", out=str(shards), progress=False))
        write_norm_stats([str(shards)], shards / "norm_stats.json")
        fake_tok = fake_shards(root / "tok", stats=False, openfast=False)
        os.replace(fake_tok / "tokenizer.json", shards / "tokenizer.json")
        chunks = np.random.default_rng(0).uniform(-1, 1, (200, 30, 6)).cumsum(1) / 30
        OpenFAST.fit(list(chunks), vocab_size=300, scale=10).save(shards / "openfast")
        _CONVERTED["so100"] = shards
    return _CONVERTED["so100"]


def _train(*args) -> list[str]:
    return ["molmoact2-train", "--workdir=run", *args]


def _reused_workdir(d: Path) -> list[str]:
    """`run` holds a checkpoint (its saved config) of the tiny pretrain recipe."""
    step = d / "run" / "checkpoints" / "2"
    (step / "state").mkdir(parents=True)
    (step / "meta").mkdir()
    (step / "meta" / "metadata").write_text(json.dumps({"config": {"recipe": "pretrain", "variant": "tiny",
                                                                   "data": {"source": "synthetic"}}}))
    return _train(FINETUNE_TINY, "--config.data.source=synthetic")


def _incomplete_init_from(d: Path) -> list[str]:
    """A step directory copied without its state/manifest.ocdbt."""
    step = d / "other_run" / "checkpoints" / "5"
    (step / "state").mkdir(parents=True)
    (step / "state" / "_METADATA").write_text("{}")
    (step / "meta").mkdir()
    (step / "meta" / "metadata").write_text(json.dumps({"config": {}}))
    return _train(FINETUNE_TINY, "--config.data.source=synthetic", f"--config.init_from={step}")


CASES: list[Case] = [
    Case("train-synthetic-with-path",
         lambda d: _train(PRETRAIN_TINY, "--config.data.source=synthetic", f"--config.data.sources[0].path={d}"),
         "config.data.source='synthetic' and config.data.sources[0].path="),
    Case("train-finetune-without-path", lambda d: _train(FINETUNE_TINY),
         "config.data.sources[0].path is empty"),
    Case("train-second-source-by-index", lambda d: _train(FINETUNE_TINY, f"--config.data.sources[1].path={d}"),
         "config.data.sources[1]: config.data.sources has 1 entry"),
    Case("train-source-not-converted", lambda d: _train(FINETUNE_TINY, f"--config.data.sources={d}"),
         "not a converted shard directory (no index.json)"),
    Case("train-no-norm-stats",
         lambda d: _train(FINETUNE_TINY, f"--config.data.sources={fake_shards(d / 's', stats=False)}"),
         "config.data.norm_stats is empty"),
    Case("train-no-tokenizer",
         lambda d: _train(FINETUNE_TINY, f"--config.data.sources={fake_shards(d / 's', tokenizer=False)}"),
         "config.data.tokenizer is empty"),
    Case("train-no-openfast",
         lambda d: _train(FINETUNE_TINY, f"--config.data.sources={fake_shards(d / 's', openfast=False)}"),
         "molmoact2-data openfast"),
    Case("train-norm-tag-not-in-stats",
         lambda d: _train(FINETUNE_TINY, f"--config.data.sources[0].path={fake_shards(d / 's')}",
                          "--config.data.sources[0].tag=so100_so101_molmoact2",
                          f"--config.data.norm_stats={d / 's' / 'norm_stats.json'}"),
         "has no entry for config.data.sources[0].tag='so100_so101_molmoact2'"),
    Case("train-horizon-too-short",
         lambda d: _train(FINETUNE_TINY, f"--config.data.sources={fake_shards(d / 's', horizon=30)}",
                          "--config.model.action_expert.max_action_horizon=8"),
         "config.model.action_expert.max_action_horizon=8 is shorter than the 30-step action chunks"),
    Case("train-seq-len-too-short",
         lambda d: _train(FINETUNE_TINY, f"--config.data.sources={converted_so100()}", "--config.data.seq_len=64"),
         "config.data.seq_len=64 is too short"),
    Case("train-misspelt-field", lambda d: _train(FINETUNE_TINY, "--config.data.seq_lenn=300"),
         "config.data.seq_lenn: no such config field; did you mean config.data.seq_len?"),
    Case("train-enum-value", lambda d: _train(PRETRAIN_TINY, "--config.model.action_mode=contnuous"),
         "config.model.action_mode='contnuous': expected one of ['continuous', 'discrete', 'both']"),
    Case("train-negative-checkpoint-interval", lambda d: _train(PRETRAIN_TINY, "--config.checkpoint.every_steps=-1"),
         "config.checkpoint.every_steps=-1"),
    Case("train-batch-not-divisible", lambda d: _train(PRETRAIN_TINY, "--config.trainer.grad_accum_steps=3"),
         "config.trainer.grad_accum_steps=3 does not divide"),
    Case("train-unknown-recipe-file", lambda d: _train(f"--config={REPO / 'configs' / 'finetuning.py'}:tiny"),
         "no such recipe file"),
    Case("train-unwritable-workdir",   # /proc: unwritable even for root, who ignores a folder's mode bits
         lambda d: ["molmoact2-train", "--workdir=/proc/molmoact2-run", PRETRAIN_TINY], "cannot write there"),
    Case("train-workdir-of-another-recipe", _reused_workdir,
         "holds a run of configs/pretrain.py:tiny (checkpoints/2); this command runs configs/finetune.py:robot_tiny"),
    Case("train-init-from-incomplete", _incomplete_init_from, "manifest.ocdbt: missing"),
    Case("train-init-from-missing",
         lambda d: _train(FINETUNE_TINY, "--config.data.source=synthetic", f"--config.init_from={d / 'nope'}"),
         "config.init_from="),
]
