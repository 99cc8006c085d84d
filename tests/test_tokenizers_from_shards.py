"""Tokenizers from converted shards for models trained from scratch: `molmoact2-data openfast` fits OpenFAST on the
very action chunks training feeds it (delta dims and gripper rule included), `molmoact2-data tokenizer` trains a
byte-level BPE text tokenizer that TextTokenizer and the model inputs take; a shard sidecar given to
`molmoact2-openfast fit --chunks` is refused; an empty config.data.tokenizer says which setting and how to fix it."""
import json

import numpy as np
import pytest

from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.fixtures import make_fixture
from data_pipelines.norm_stats import NormStats
from data_pipelines.pipeline.robot_dataset import PipelineConfig, Source, build_map_dataset, build_robot_dataset
from data_pipelines.pipeline.robot_transform import RobotTransformConfig
from data_pipelines.shard_tokenizers import shard_chunks
from data_pipelines.stats import write_norm_stats
from data_pipelines.transforms.model_inputs import ModelInputs
from molmoact2_jax.cli import data as cli
from molmoact2_jax.cli.openfast import main as openfast_main
from molmoact2_jax.tokenizers.openfast import OpenFAST
from molmoact2_jax.tokenizers.text import TextTokenizer

HORIZON = 8
FAST = RobotTransformConfig(image_size=28, augment=False, max_action_horizon=HORIZON)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """YAM (14 dims; its two grippers pass through un-normalised) converted with 8-step chunks and dims 0,1 trained
    as deltas; its norm stats where training looks for them (SHARD_DIR/norm_stats.json)."""
    root = tmp_path_factory.mktemp("tok")
    src = make_fixture("lerobot-v3.0", "yam", root / "src", episodes=2)
    out = root / "shards"
    convert(ConvertOptions(f"lerobot:{src}", "yam", str(out), horizon=HORIZON, image_size=28, progress=False,
                           delta_action_dims=(0, 1)))
    write_norm_stats([str(out)])
    return out


def test_chunks_are_the_ones_training_feeds_the_tokenizer(shards):
    stats = NormStats.load(shards / "norm_stats.json")
    tag = stats.select()
    assert tag.delta_action_dims == (0, 1) and (~tag.action_stats.mask).sum() == 2   # deltas; grippers pass
    chunks = np.concatenate(list(shard_chunks(shards, tag)))
    ds = build_map_dataset(PipelineConfig(sources=[Source(str(shards))], norm_stats=stats, batch_size=1,
                                          shuffle=False, num_epochs=1, shard_index=0, shard_count=1, transform=FAST))
    assert len(chunks) == len(ds)
    for i in range(len(ds)):   # record i of the unshuffled stream is frame i of the sidecars
        ex = ds[i]
        want = np.asarray(ex["actions"])[:HORIZON, ~np.asarray(ex["action_dim_is_pad"])]   # what answer_ids encodes
        np.testing.assert_array_equal(chunks[i], want)


def test_openfast_from_shards_cli(shards, tmp_path, capsys):
    assert cli.main(["openfast", str(shards)]) == 0
    out = shards / "openfast"
    assert f"wrote {out}" in capsys.readouterr().out
    cfg = json.loads((out / "processor_config.json").read_text())
    assert cfg["scale"] == 10 and cfg["vocab_size"] == 512 and cfg["time_horizon"] == HORIZON
    assert cfg["action_dim"] == 14
    tok = OpenFAST.load(out)
    chunks = np.concatenate(list(shard_chunks(shards, NormStats.load(shards / "norm_stats.json").select())))
    ids = tok.encode(chunks[:20])
    assert max(max(i) for i in ids) < tok.bpe_vocab_size <= 512
    back, valid = tok.decode(ids)
    assert valid.all() and np.abs(back - chunks[:20]).max() < 0.2   # rounding at scale 10
    assert cli.main(["openfast", str(shards), "--out", str(tmp_path / "o"), "--vocab-size", "4096"]) == 2
    assert "--vocab-size 4096: expected 1..2048" in capsys.readouterr().err
    assert cli.main(["openfast", str(shards), "--norm-stats", str(tmp_path / "none.json"),
                     "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (f"molmoact2-data: error: norm stats file not found: "
                                               f"{tmp_path / 'none.json'}; pass --norm-stats FILE")
    assert not (tmp_path / "o").exists()


def test_a_shard_sidecar_is_not_action_chunks(shards, tmp_path, capsys):
    for given in (shards / "shard-00000.npz", shards):
        assert openfast_main(["fit", "--chunks", str(given), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"molmoact2-openfast: error: {given}: ")
        assert "molmoact2-data openfast SHARD_DIR" in err[0]
    assert not (tmp_path / "o").exists()


def test_text_tokenizer_from_shards_feeds_the_model_inputs(shards, tmp_path, capsys):
    assert cli.main(["tokenizer", str(shards), "--vocab-size", "400"]) == 0
    path = shards / "tokenizer.json"
    assert f"wrote {path}" in capsys.readouterr().out
    tok = TextTokenizer.from_file(str(path))
    backend = tok.backend
    assert tok.layout.eos == backend.token_to_id("<|im_end|>") and backend.token_to_id("<|endoftext|>") == 0
    assert tok.layout.base_vocab == backend.get_vocab_size() <= 400 and tok.layout.vocab_size % 1024 == 0
    openfast = OpenFAST.fit(list(shard_chunks(shards, NormStats.load(shards / "norm_stats.json").select())),
                            vocab_size=512)
    inputs = ModelInputs(tok, seq_len=1024, image_size=28, patch=14, pool=2, openfast=openfast,
                         action_format="both")
    cfg = PipelineConfig(sources=[Source(str(shards))], norm_stats=str(shards / "norm_stats.json"), batch_size=2,
                         shuffle=False, num_epochs=1, shard_index=0, shard_count=1, transform=FAST)
    ex = build_map_dataset(cfg)[0]
    prompt = ex["prompt"]
    ids = tok.encode_prompt(prompt, image_grids=[inputs.grid] * int(ex["image_mask"].sum()))
    assert tok.decode(tok.encode(prompt)) == prompt
    plain = [i for i in ids if i < tok.layout.base_vocab]
    assert len(plain) < 0.5 * len(prompt.encode())   # trained on these prompts: merges, not bytes
    batch = next(iter(build_robot_dataset(PipelineConfig(**{**cfg.__dict__, "model_inputs": inputs}))))
    got = np.asarray(batch["input_ids"])
    L = tok.layout
    assert got.shape == (2, 1024) and got.max() < L.vocab_size + 128   # + the 128-row extra (multimodal) table
    answer = got[np.asarray(batch["loss_mask"]) > 0]
    assert ((answer >= L.action_token(0)) & (answer < L.action_token(L.num_action_tokens))).any()
    assert cli.main(["tokenizer", str(shards), "--out", str(tmp_path / "t.json"), "--vocab-size", "100"]) == 2
    assert "--vocab-size 100: expected at least 259" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_an_empty_tokenizer_setting_names_the_field_and_the_fix(tmp_path):
    for empty in ("", None, "  "):
        with pytest.raises(FileNotFoundError) as e:
            TextTokenizer.from_file(empty)
        assert str(e.value).startswith("config.data.tokenizer is empty: ")
        assert "molmoact2-data tokenizer SHARD_DIR" in str(e.value)
    with pytest.raises(FileNotFoundError, match="from --tokenizer"):
        TextTokenizer.from_file(str(tmp_path / "missing.json"), setting="--tokenizer")
