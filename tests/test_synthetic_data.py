"""The synthetic tiny-recipe data goes the way converted shards go (robot transforms, ModelInputs) and its assets
serve what it trained: the written tokenizer reads back the model's token layout and encodes the batches' prompts,
the written OpenFAST decodes their action answers back to the chunks."""
import numpy as np
import pytest

from configs.pretrain import get_config
from data_pipelines.transforms.prompt import build_robot_prompt
from molmoact2_jax.token_layout import TokenLayout
from molmoact2_jax.tokenizers.openfast import OpenFAST
from molmoact2_jax.tokenizers.text import TextTokenizer
from molmoact2_jax.training import synthetic_data as sd

THINK = {"robot_action": 1.0, "robot_depth": 1.0, "robot_depth_action": 1.0}


def tiny_model(action_mode="both"):
    cfg = get_config("tiny")
    cfg.model.action_mode = action_mode
    return cfg


def valid_ids(batch, i):
    return batch["input_ids"][i][batch["attention_mask"][i]].tolist()


def test_assets_serve_what_the_batches_trained(tmp_path):
    cfg = tiny_model("both")
    names = sd.write_synthetic_assets(cfg, str(tmp_path))
    assert sorted(names) == ["norm_stats.json", "openfast", "tokenizer.json"]
    tok = TextTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    layout = TokenLayout.from_model_tokens(cfg.model.tokens)
    assert tok.layout == layout
    fast = OpenFAST.load(tmp_path / "openfast")

    data = sd.SyntheticRobotData(cfg.model, 8, int(cfg.data.seq_len), seed=3)
    batch = data.make_global_batch(0)
    grid = (2, 2)   # the tiny model's pooled image grid
    prompt = tok.encode_prompt(build_robot_prompt(sd.TASK, 1, [128], sd.SETUP_TYPE, sd.CONTROL_MODE), [grid])
    for i in range(8):
        ids = valid_ids(batch, i)
        assert ids[:len(prompt)] == prompt                      # the prompt the shared transforms build
        answer = ids[len(prompt):]
        assert answer[0] == layout.action_start and answer[-2:] == [layout.action_end, layout.eos]
        assert (batch["loss_mask"][i][len(prompt) - 1:len(ids) - 1] == 1).all()   # targets: the answer tokens
        assert batch["loss_mask"][i].sum() == len(answer)
        bpe = OpenFAST.from_llm_ids(answer, layout.action_start, layout.action_end, layout.action_token_start,
                                    layout.num_action_tokens)
        decoded, ok = fast.decode([bpe], horizon=data.horizon, action_dim=data.action_dim)
        assert ok[0]
        np.testing.assert_allclose(decoded[0], batch["actions"][i, :data.horizon, :data.action_dim], atol=0.06)
    # the chunk's first step is the square's place: it varies with the image
    assert np.std(batch["actions"][:, 0, :2], axis=0).min() > 0.1


def test_continuous_examples_are_prompt_only_and_every_prompt_fits_the_longest():
    cfg = tiny_model("continuous")
    longest = sd.SyntheticRobotData(cfg.model, 1, None, seed=0).longest_example()
    batch = sd.SyntheticRobotData(cfg.model, 16, longest, seed=0).make_global_batch(5)
    assert (batch["attention_mask"].sum(1) == longest).all() and batch["loss_mask"].sum() == 0
    with pytest.raises(ValueError, match=rf"config.data.seq_len={longest - 1} is too short for a {longest}-token"):
        sd.SyntheticRobotData(cfg.model, 1, longest - 1, seed=0).make_global_batch(0)


def test_longest_example_bounds_every_place_of_the_square():
    cfg = tiny_model("both")
    data = sd.SyntheticRobotData(cfg.model, 1, None, seed=0, style_weights=THINK)
    longest = data.longest_example()
    lengths = [len(t) for t in data.openfast.encode(sd.place_chunks(data.horizon, data.action_dim))]
    # the longest Think example: prompt, depth span (102), the longest action answer (+ start, end, EOS)
    prompt = data._inputs(None).prompt_ids(build_robot_prompt(
        sd.TASK, 1, [128], sd.SETUP_TYPE, sd.CONTROL_MODE, style="robot_depth_action"), 1)
    assert longest == len(prompt) + 102 + max(lengths) + 3
    batch = sd.SyntheticRobotData(cfg.model, 32, longest, seed=1, style_weights=THINK).make_global_batch(0)
    assert batch["attention_mask"].sum(1).max() <= longest


def test_depth_answers_are_the_images_depth_codes():
    cfg = tiny_model("continuous")
    data = sd.SyntheticRobotData(cfg.model, 24, 256, seed=2, style_weights={"robot_depth": 1.0})
    layout = data.tokenizer.layout
    batch = data.make_global_batch(0)
    assert not batch["has_actions"].any()
    codes = []
    for i in range(24):
        ids = valid_ids(batch, i)
        start = ids.index(layout.depth_start)
        assert ids[start + 101:] == [layout.depth_end, layout.eos]
        codes.append(np.asarray(ids[start + 1:start + 101]) - layout.depth_token_start)
    codes = np.stack(codes)
    # a floor code per row where the square is not, 100 + row where it is; which cells are near varies
    rows = np.broadcast_to(np.arange(10)[:, None], (10, 10)).reshape(-1)
    assert np.isin(codes - rows, (0, 100)).all()
    assert 0 < (codes >= 100).mean() < 0.5 and (codes >= 100).any(0).sum() > 10
