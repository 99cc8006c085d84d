"""Model-side stage (tokenizer + image patches + OpenFAST answer) and sequence packing."""
import dataclasses

import numpy as np
import pytest

from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.pipeline.packing import PackConfig
from data_pipelines.pipeline.robot_dataset import PipelineConfig, Source, build_map_dataset, build_robot_dataset
from data_pipelines.pipeline.robot_transform import RobotTransformConfig
from data_pipelines.stats import write_norm_stats

from molmoact2_jax.tokenizers import openfast as openfast_mod
from molmoact2_jax.tokenizers import text as text_mod


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    corpus = ["The task is to pick up the red block. The setup is bimanual yam robotic arms in molmoact2.",
              "The current state of the robot is. The expected control mode is absolute joint pose.",
              "Given these, what action should the robot take to complete the task? Image 1 user assistant"] * 10
    t.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    t.save(str(path))
    return text_mod.TextTokenizer.from_file(str(path))


@pytest.fixture(scope="module")
def yam_pipe(yam_v3, tmp_path_factory):
    root = tmp_path_factory.mktemp("mi")
    convert(ConvertOptions(f"lerobot:{yam_v3}", "yam", str(root / "s"), image_size=28, progress=False))
    write_norm_stats([root / "s"], root / "ns.json")
    return PipelineConfig(sources=[Source(str(root / "s"))], norm_stats=str(root / "ns.json"), batch_size=2,
                          num_epochs=1, shard_index=0, shard_count=1,
                          transform=RobotTransformConfig(image_size=28, augment=False))


def test_prompt_tokens_and_image_patches(tok, yam_pipe):
    from data_pipelines.transforms.model_inputs import ModelInputs
    mi = ModelInputs(tok, seq_len=600, image_size=28)
    ex = build_map_dataset(dataclasses.replace(yam_pipe, model_inputs=mi))[0]
    L = tok.layout
    ids = ex["input_ids"][ex["token_mask"]]
    assert ids[0] == L.eos and ids[-1] == L.action_output
    assert list(ids).count(L.image_start) == 3 and list(ids).count(L.image_patch) == 3  # 28px -> 1x1 pooled
    bins = ex["state_bins"][:14]
    start = list(ids).index(L.state_start)
    assert list(ids[start + 1:start + 15]) == [L.state_token(int(b)) for b in bins]
    assert ex["loss_mask"].sum() == 0  # continuous: prompt only
    assert ex["image_patches"].shape == (3, 4, 588) and ex["pooled_idx"].shape == (3, 4)
    assert "images" not in ex


def test_discrete_action_answer(tok, yam_pipe):
    from data_pipelines.transforms.model_inputs import ModelInputs
    ex0 = build_map_dataset(yam_pipe)[5]
    fast = openfast_mod.OpenFAST.fit([ex0["actions"][:30, :14]] * 4, vocab_size=300, scale=10)
    mi = ModelInputs(tok, seq_len=None, image_size=28, openfast=fast, action_format="both")
    ex = mi(ex0)
    L = tok.layout
    answer = ex["input_ids"][ex["loss_mask"] > 0]
    assert answer[0] == L.action_start and answer[-2] == L.action_end and answer[-1] == L.eos
    decoded = fast.decode([[int(i) - L.action_token_start for i in answer[1:-2]]], horizon=30, action_dim=14)
    decoded = decoded[0] if isinstance(decoded, (list, tuple)) else decoded
    np.testing.assert_allclose(np.asarray(decoded).reshape(30, 14), ex0["actions"][:30, :14], atol=0.1)


def test_packing_segments_and_restore(tok, yam_pipe):
    from data_pipelines.transforms.model_inputs import ModelInputs
    mi = ModelInputs(tok, seq_len=None, image_size=28)
    n_tokens = len(mi(build_map_dataset(yam_pipe)[0])["input_ids"])
    pack = PackConfig(seq_len=int(n_tokens * 2.5), max_examples=3)
    cfg = dataclasses.replace(yam_pipe, model_inputs=mi, pack=pack, batch_size=2, drop_remainder=False)
    it = iter(build_robot_dataset(cfg))
    b = next(it)
    assert b["input_ids"].shape == (2, pack.seq_len) and b["segment_ids"].max() == 2
    seg = b["segment_ids"][0]
    assert (b["positions"][0][seg == 2] == np.arange((seg == 2).sum())).all()
    assert b["example_mask"].shape == (2, 3) and b["example_mask"][:, :2].all() and not b["example_mask"][:, 2].any()
    assert b["actions"].shape == (2, 3, 30, 32) and b["image_patches"].shape[:2] == (2, 3)
    next(it)
    state = it.get_state()
    rest = [x["frame_index"].tolist() for x in it]
    it2 = iter(build_robot_dataset(cfg))
    it2.set_state(state)
    assert [x["frame_index"].tolist() for x in it2] == rest
