"""Fine-tuning on one's own robot: what a config with a data path resolves to before the run starts (real vs
synthetic data, sources and held-out eval sources from the command line, assets from config > init_from > shard
folder, the norm tag, horizon and sequence length from the data), and the tiny recipe trained on converted shards
with the data path as its only override. The CLI's one-line errors for the same rules: tests/user_errors/training.py."""
import json
import shutil

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from data_pipelines.pipeline import robot_dataset
from molmoact2_jax.recipes import load_recipe, recipe_path
from molmoact2_jax.tokenizers.openfast import OpenFAST
from molmoact2_jax.tokenizers.text import TextTokenizer
from molmoact2_jax.training import data_source, run_setup, trainer
from molmoact2_jax.training.synthetic_data import SyntheticRobotData
from train_harness import CACHE
from user_errors.training import converted_so100

SO100_TAG = "so100_so101_molmoact2"


@pytest.fixture(scope="module")
def shards():
    """so100 converted with the converter's defaults (30-step chunks, 378 px frames); norm stats, text tokenizer and
    OpenFAST in the shard folder, as molmoact2-data stats / tokenizer / openfast leave them."""
    return converted_so100()


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Other so100 episodes (another seed), converted alone: held-out data, no assets of its own."""
    from data_pipelines.convert import ConvertOptions, convert
    from data_pipelines.fixtures import make_fixture
    root = tmp_path_factory.mktemp("heldout")
    src = make_fixture("lerobot-v3.0", "so100", root / "so100", episodes=1, length=12, seed=7)
    convert(ConvertOptions(source=f"lerobot:{src}", embodiment="so100", out=str(root / "shards"), progress=False))
    return root / "shards"


def finetune(path=None, variant="robot_tiny", **fields):
    cfg = load_recipe(recipe_path("finetune", variant))
    if path is not None:
        cfg.data.sources[0].path = str(path)
    for key, value in fields.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return cfg


def test_a_data_path_means_real_data_and_synthetic_data_is_asked_for_by_name(shards):
    cfg, plan = run_setup.prepare(finetune(shards))
    assert plan.kind == cfg.data.source == "arrayrecord"
    assert run_setup.prepare(load_recipe(recipe_path("pretrain", "tiny")))[1].kind == "synthetic"  # the recipe's

    with pytest.raises(ValueError, match=r"config.data.sources\[0\].path is empty: .*config.data.source=synthetic"):
        run_setup.prepare(finetune())
    pretrain = load_recipe(recipe_path("pretrain", "tiny"))
    pretrain.data.sources[0].path = str(shards)
    with pytest.raises(ValueError, match=r"config.data.source='synthetic' and config.data.sources\[0\].path="):
        run_setup.prepare(pretrain)
    with pytest.raises(ValueError, match=r"config.data.norm_stats=.* is set, but config.data.source='synthetic'"):
        run_setup.prepare(finetune(**{"data.source": "synthetic", "data.norm_stats": str(shards)}))

    # a synthetic smoke run of the fine-tune recipe: its sizes come from the synthetic task
    cfg, plan = run_setup.prepare(finetune(**{"data.source": "synthetic"}))
    assert plan.kind == "synthetic" and cfg.model.action_expert.max_action_horizon == 8
    longest = SyntheticRobotData(cfg.model, 1, cfg.model.max_sequence_length, 0).longest_example()
    assert cfg.data.seq_len % run_setup.SEQ_LEN_MULTIPLE == 0 and longest <= cfg.data.seq_len


def test_assets_come_from_the_config_then_init_from_then_the_shard_folder(shards, tmp_path):
    cfg, plan = run_setup.prepare(finetune(shards))
    assert plan.tokenizer == str(shards / "tokenizer.json") and plan.openfast == str(shards / "openfast")
    assert plan.origins == {"norm_stats": "the sources' shard folders", "tokenizer": "the first source's shard folder",
                            "openfast": "the first source's shard folder"}
    ours = json.loads((shards / "norm_stats.json").read_text())["metadata_by_tag"][SO100_TAG]
    assert plan.norm_stats["metadata_by_tag"] == {SO100_TAG: ours}

    # a released checkpoint's assets: its tokenizers win over the shard folder's; its norm stats are never used
    ckpt = tmp_path / "released"
    shutil.copytree(shards / "openfast", ckpt / "assets" / "openfast")
    shutil.copy(shards / "tokenizer.json", ckpt / "assets" / "tokenizer.json")
    (ckpt / "assets" / "norm_stats.json").write_text(json.dumps({"metadata_by_tag": {"franka_droid": {}}}))
    cfg, plan = run_setup.prepare(finetune(shards, init_from=str(ckpt)))
    assert plan.tokenizer == str(ckpt / "assets" / "tokenizer.json")
    assert plan.openfast == str(ckpt / "assets" / "openfast")
    assert plan.norm_stats["metadata_by_tag"] == {SO100_TAG: ours}

    # a field set in the config wins over both
    mine = tmp_path / "mine.json"
    shutil.copy(shards / "tokenizer.json", mine)
    cfg, plan = run_setup.prepare(finetune(shards, init_from=str(ckpt), **{"data.tokenizer": str(mine)}))
    assert plan.tokenizer == cfg.data.tokenizer == str(mine) and plan.origins["tokenizer"] == "config.data.tokenizer"


def test_the_norm_tag_is_the_shards_unless_a_source_names_one(shards, tmp_path):
    cfg, plan = run_setup.prepare(finetune(shards))
    assert plan.sources[0].tag == cfg.data.sources[0]["tag"] == SO100_TAG

    # a source's tag names its stats (and what a served policy is asked for): the shards' stats under that name
    cfg, plan = run_setup.prepare(finetune(shards, **{"data.sources": ({"path": str(shards), "tag": "my_arm"},)}))
    assert list(plan.norm_stats["metadata_by_tag"]) == ["my_arm"]
    pc = data_source.pipeline_config(cfg, "eval", plan=plan)
    assert robot_dataset.tag_names(pc) == ["my_arm"]
    example = robot_dataset.build_map_dataset(pc)[0]
    assert example["input_ids"].shape == (cfg.data.seq_len,) and np.isfinite(example["actions"]).all()

    # with a stats file given, the tag must be one of its entries
    with pytest.raises(ValueError, match=r"has no entry for config.data.sources\[0\].tag='my_arm'; its tags are "
                                         rf"\['{SO100_TAG}'\]"):
        run_setup.prepare(finetune(shards, **{"data.sources": ({"path": str(shards), "tag": "my_arm"},),
                                              "data.norm_stats": str(shards / "norm_stats.json")}))


def test_horizon_and_sequence_length_come_from_the_data_or_are_checked_against_it(shards):
    cfg, plan = run_setup.prepare(finetune(shards))
    assert cfg.model.action_expert.max_action_horizon == 30   # the converter's so100 default
    inputs = run_setup.model_inputs(cfg, plan)
    longest, _ = run_setup.longest_example(cfg, plan, plan.sources[0], inputs, run_setup.LENGTH_SAMPLES)
    assert longest <= cfg.data.seq_len and cfg.data.seq_len % run_setup.SEQ_LEN_MULTIPLE == 0

    with pytest.raises(ValueError, match=r"config.model.action_expert.max_action_horizon=8 is shorter than the "
                                         r"30-step action chunks of config.data.sources\[0\].path=.*set "
                                         r"config.model.action_expert.max_action_horizon=30"):
        run_setup.prepare(finetune(shards, **{"model.action_expert.max_action_horizon": 8}))
    with pytest.raises(ValueError, match=rf"config.data.seq_len={longest - 1} is too short: .* has {longest} tokens.*"
                                         rf"set config.data.seq_len={longest} or more"):
        run_setup.prepare(finetune(shards, **{"data.seq_len": longest - 1}))
    assert run_setup.prepare(finetune(shards, **{"data.seq_len": longest}))[0].data.seq_len == longest


def _parse(*overrides):
    """`--config` as molmoact2-train parses it (ml_collections config_flags), in a private flag registry."""
    argv = ["prog", f"--config={recipe_path('finetune', 'robot_tiny')}", *overrides]
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "recipe", flag_values=fv, sys_argv=argv)
    fv(argv)
    return holder.value


def test_several_sources_and_held_out_eval_sources_from_the_command_line(shards, heldout):
    cfg = _parse(f"--config.data.sources={shards}", f"--config.data.sources={shards}",
                 f"--config.data.eval_sources={heldout}")
    cfg, plan = run_setup.prepare(cfg, check_lengths=False)
    assert [s.path for s in plan.sources] == [str(shards)] * 2 and [s.path for s in plan.eval_sources] == [str(heldout)]
    assert [s.shard_dir for s in data_source.pipeline_config(cfg, "train", plan=plan).sources] == [str(shards)] * 2
    # held-out data is what the trainer's eval reads, normalized with the training sources' stats
    assert [s.shard_dir for s in data_source.pipeline_config(cfg, "eval", plan=plan).sources] == [str(heldout)]
    assert plan.eval_sources[0].tag == SO100_TAG

    cfg = _parse(f'--config.data.sources=({{"path": "{shards}", "weight": 3}}, "{shards}")')
    cfg, plan = run_setup.prepare(cfg, check_lengths=False)
    assert [(s.path, s.weight) for s in plan.sources] == [(str(shards), 3.0), (str(shards), 1.0)]
    # every training source brings its stats (the held-out folder has none of its own)
    with pytest.raises(ValueError, match=r"config.data.norm_stats is empty and config.data.sources\[1\] has no"):
        run_setup.prepare(_parse(f"--config.data.sources={shards}", f"--config.data.sources={heldout}"))

    cfg = _parse(f"--config.data.sources[0].path={shards}")   # a recipe's entry, filled in
    assert run_setup.prepare(cfg, check_lengths=False)[1].sources[0].path == str(shards)


def _counting(monkeypatch, owner, name: str) -> list:
    """Replaces owner.name (a function or classmethod) with one that records each call; returns the record."""
    calls, real = [], getattr(owner, name)
    if isinstance(owner, type):
        monkeypatch.setattr(owner, name, classmethod(lambda cls, *a, **k: calls.append(a) or real(*a, **k)))
    else:
        monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def test_tiny_finetune_trains_on_converted_shards_with_only_the_data_path(shards, heldout, tmp_path, monkeypatch):
    """`molmoact2-train --config=configs/finetune.py:robot_tiny --config.data.sources[0].path=SHARDS` (plus a held-out
    source and a short run): it trains on the shards, evaluates on the held-out episodes and saves a checkpoint with
    the shard folder's assets that serves. The tokenizers are loaded once and the eval pipeline built once (two evals
    here); the fields resolved at start-up are recorded in run_info.json, and the config is not changed after."""
    text_loads = _counting(monkeypatch, TextTokenizer, "from_file")
    openfast_loads = _counting(monkeypatch, OpenFAST, "load")
    pipelines = _counting(monkeypatch, data_source, "build_robot_dataset")
    cfg = finetune(shards, total_steps=2, **{"data.eval_sources": (str(heldout),), "trainer.eval_every_steps": 1,
                                             "checkpoint.every_steps": 1, "trainer.compilation_cache_dir": CACHE})
    out = trainer.train(cfg, str(tmp_path / "run"))
    assert len(text_loads) == 1 and len(openfast_loads) == 1
    assert [pc.shuffle for (pc,) in pipelines] == [True, False]   # train, then eval (built at the first eval only)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["eval_total_loss"]) for r in rows)
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["attention"] == "xla"   # model.attention_impl 'auto', resolved on this CPU
    resolved = info["resolved"]
    assert resolved["fields"]["data.seq_len"] == {"given": 0, "resolved": out["config"].data.seq_len}
    assert resolved["fields"]["model.action_expert.max_action_horizon"] == {"given": 0, "resolved": 30}
    assert resolved["fields"]["data.tokenizer"] == {"given": "", "resolved": str(shards / "tokenizer.json")}
    assert resolved["origins"]["tokenizer"] == "the first source's shard folder"
    assert "total_steps" not in resolved["fields"]   # given, not resolved
    first, last = (json.loads((tmp_path / "run" / "checkpoints" / s / "meta" / "metadata").read_text())["config"]
                   for s in ("1", "2"))
    assert first == last == json.loads(out["config"].to_json())   # one config from start-up to the end
    with pytest.raises(AttributeError, match="locked"):
        out["config"].data.seq_lenght = 1   # the prepared config takes no new field (a misspelt one)
    step = tmp_path / "run" / "checkpoints" / "2"
    saved = json.loads((step / "meta" / "metadata").read_text())
    assert set(saved["assets"]) == {"norm_stats.json", "tokenizer.json", "openfast"}
    assert saved["config"]["data"]["source"] == "arrayrecord"
    assert saved["config"]["data"]["seq_len"] == out["config"].data.seq_len > 0
    assert saved["config"]["model"]["action_expert"]["max_action_horizon"] == 30
    assert (step / "assets" / "tokenizer.json").read_bytes() == (shards / "tokenizer.json").read_bytes()

    from molmoact2_jax.inference import Policy
    policy = Policy.load(str(step))
    images = [np.zeros((378, 378, 3), np.uint8)] * 2
    res = policy.predict_action(images, "pick up the block", np.zeros(6), SO100_TAG, seed=0)
    assert res.actions.shape == (30, 6) and np.isfinite(res.actions).all()
