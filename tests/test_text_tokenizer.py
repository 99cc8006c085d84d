"""Text tokenizer: robot/multimodal token layout, prompt encoding, both backends."""

import pytest

from molmoact2_jax.models.config import get_model_config
from molmoact2_jax.token_layout import TokenLayout, robot_token_ids
from molmoact2_jax.tokenizers.text import TextTokenizer

CORPUS = ["The task is to pick up the red block and place it in the bowl.",
          "The setup is single franka robotic arm in droid.", "What action should the robot take?",
          "put the cup on the plate; open the drawer; close the lid"] * 20


@pytest.fixture(scope="module")
def hf_tokenizer_file(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path), tok.get_vocab_size(with_added_tokens=True)


def test_full_size_layout_matches_released_ids():
    ids = robot_token_ids(151669)  # len(Qwen3-4B tokenizer)
    assert (ids["setup_start"], ids["state_start"], ids["state_token_start"]) == (151669, 151673, 151675)
    assert (ids["action_output"], ids["action_start"], ids["action_end"]) == (151931, 151932, 151933)
    assert ids["action_token_start"] == 151934 and ids["depth_output"] == 153982
    assert ids["depth_token_start"] == 153985 and ids["vocab_size"] == 154624
    assert (ids["image_start"], ids["image_end"], ids["image_patch"], ids["image_placeholder"]) == (
        154624, 154625, 154626, 154629)
    layout = TokenLayout.from_model_tokens(get_model_config("full").tokens)
    s = layout.special_strings()
    assert s["<extra_0>"] == 154113 and s["<extra_510>"] == 154623 and "<extra_511>" not in s


def test_hf_backend_layout_and_prompt(hf_tokenizer_file):
    path, base = hf_tokenizer_file
    tok = TextTokenizer.from_file(path)
    L = tok.layout
    assert L.setup_start == base and L.vocab_size % 1024 == 0 and L.image_start == L.vocab_size
    assert L.action_token(2047) < L.depth_output < L.depth_token(127) < L.vocab_size
    text = ("Image 1<|image|>Image 2<|image|><|im_start|>user\nThe task is to pick up the red block. The current "
            "state of the robot is <state_start><state_0><state_255><state_end>.<|im_end|>\n"
            "<|im_start|>assistant\n<action_output>")
    ids = tok.encode_prompt(text, image_grids=[(2, 3), (2, 3)])
    assert ids[0] == L.eos  # BOS = <|im_end|>
    assert ids.count(L.image_patch) == 12 and ids.count(L.image_start) == 2 and L.image_placeholder not in ids
    assert L.state_token(0) in ids and L.state_token(255) in ids and ids[-1] == L.action_output
    assert tok.decode(tok.encode(text)) == text
    with_cols = tok.encode_prompt(text, image_grids=[(2, 3), (2, 3)], use_col_tokens=True)
    assert with_cols.count(L.image_col) == 4
    with pytest.raises(ValueError, match="placeholders"):
        tok.encode_prompt(text, image_grids=[(2, 3)])


def test_config_json_ids_win(hf_tokenizer_file):
    path, base = hf_tokenizer_file
    hf = {"image_start_token_id": 5000, "image_patch_id": 5002, "action_token_start_id": 900,
          "text_config": {"vocab_size": 5000}}
    tok = TextTokenizer.from_file(path, hf_config=hf)
    assert tok.layout.image_patch == 5002 and tok.layout.action_token(3) == 903 and tok.layout.vocab_size == 5000
    assert tok.encode("<action_3><im_patch>") == [903, 5002]


def test_sentencepiece_backend(tmp_path):
    import sentencepiece as spm
    prefix = str(tmp_path / "sp")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_prefix=prefix, vocab_size=50,
                                   user_defined_symbols=["<|im_end|>", "<|im_start|>"], minloglevel=2)
    tok = TextTokenizer.from_file(prefix + ".model")
    assert tok.layout.setup_start == 50 and tok.layout.eos == tok.backend.piece_to_id("<|im_end|>")
    ids = tok.encode("<setup_start>single arm<setup_end><action_start><action_7><action_end>")
    assert ids[0] == tok.layout.setup_start and ids[-3:] == [tok.layout.action_start, tok.layout.action_token(7),
                                                            tok.layout.action_end]


def test_bad_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        TextTokenizer.from_file(str(tmp_path / "nope.json"))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        TextTokenizer.from_file(str(bad))
