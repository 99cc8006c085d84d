"""The trainer on real-format data: LeRobot v3 fixture -> ArrayRecord -> norm stats -> Grain -> train + resume."""
import json

import numpy as np
import pytest

from test_training import tiny_cfg
from molmoact2_jax.training import trainer

CORPUS = ["The task is to pick up the red block and place it in the bowl.", "single so100 robotic arm",
          "absolute joint pose", "move the arm to the block"] * 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from data_pipelines.convert import ConvertOptions, convert
    from data_pipelines.fixtures import make_fixture
    from data_pipelines.stats import write_norm_stats
    from molmoact2_jax.tokenizers.openfast import OpenFAST

    root = tmp_path_factory.mktemp("data")
    src = make_fixture("lerobot-v3.0", "so100", root / "so100", episodes=3)
    shards = root / "shards"
    convert(ConvertOptions(source=f"lerobot:{src}", embodiment="so100", out=str(shards), horizon=8,
                           image_size=42, progress=False))
    write_norm_stats([str(shards)], root / "norm_stats.json")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(root / "tokenizer.json"))
    chunks = np.random.default_rng(0).uniform(-1, 1, (400, 8, 6)).cumsum(1) / 8
    OpenFAST.fit(list(chunks), vocab_size=512, scale=10).save(root / "openfast")
    return root


def data_cfg(root, **kw):
    c = tiny_cfg(**kw)
    c.data.source = "arrayrecord"
    c.data.sources = [{"path": str(root / "shards"), "weight": 1.0}]
    c.data.norm_stats = str(root / "norm_stats.json")
    c.data.tokenizer = str(root / "tokenizer.json")
    c.data.openfast = str(root / "openfast")
    c.data.seq_len = 256
    return c


def test_trains_on_converted_lerobot_data_and_resumes_exactly(dataset, tmp_path):
    full = data_cfg(dataset, total_steps=6, **{"checkpoint.every_steps": 3})
    trainer.train(full, str(tmp_path / "full"))
    ref = [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")]
    assert all(np.isfinite(r["loss"]) and r["loss_tokens"] > 0 and "flow_loss" in r for r in ref)

    part = data_cfg(dataset, total_steps=3, **{"checkpoint.every_steps": 3})
    trainer.train(part, str(tmp_path / "resumed"))
    rest = data_cfg(dataset, total_steps=6, **{"checkpoint.every_steps": 3})
    out = trainer.train(rest, str(tmp_path / "resumed"))
    assert out["start_step"] == 3
    got = [json.loads(l) for l in open(tmp_path / "resumed" / "metrics.jsonl")]
    # Same data order after resume (Grain iterator state in the checkpoint) -> the same losses.
    assert [r["loss"] for r in got] == [r["loss"] for r in ref]

    # Run assets travel with the run; a step directory loads straight into the inference Policy.
    for name in ("norm_stats.json", "tokenizer.json", "openfast"):
        assert (tmp_path / "full" / "assets" / name).exists()
    meta = json.load(open(tmp_path / "full" / "checkpoints" / "6" / "meta" / "metadata"))
    assert set(meta["assets"]) == {"norm_stats.json", "tokenizer.json", "openfast"}
    from molmoact2_jax.inference import Policy
    from data_pipelines.formats.lerobot_reader import LeRobotDataset
    policy = Policy.load(str(tmp_path / "full" / "checkpoints" / "6"))
    ds = LeRobotDataset(dataset / "so100")
    cols = ds.episode_columns(0)
    images = [ds.frames(0, k, [0])[0] for k in ds.camera_keys]
    res = policy.predict_action(images, ds.task(0), cols["observation.state"][0], "so100_so101_molmoact2", seed=0)
    assert res.actions.shape == (8, 6) and np.isfinite(res.actions).all()


def test_vlm_rehearsal_batches_mix_in(dataset, tmp_path):
    from data_pipelines.pipeline.vlm import write_vlm_fixture
    cfg = data_cfg(dataset, total_steps=8, **{"checkpoint.every_steps": 0})
    cfg.data.vlm_sources = [str(write_vlm_fixture(tmp_path / "vqa.parquet", n=16))]
    cfg.data.robot_share = 0.5
    trainer.train(cfg, str(tmp_path / "run"))
    rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    vlm = [r for r in rows if r["flow_loss"] == 0.0]   # VLM batches carry no actions
    robot = [r for r in rows if r["flow_loss"] > 0.0]
    assert vlm and robot and all(np.isfinite(r["loss"]) and r["loss_tokens"] > 0 for r in rows)
