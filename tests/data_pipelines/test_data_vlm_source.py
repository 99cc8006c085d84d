"""Generic vision-language rehearsal source (parquet / JSONL) through Grain."""
import pytest

from data_pipelines.errors import DataError
from molmoact2_jax.tokenizers import text as text_mod
from data_pipelines.pipeline.vlm import (VLMConfig, VLMSource, VLMTransform, VLMTransformConfig, build_vlm_dataset,
                                         write_vlm_fixture)


@pytest.mark.parametrize("name", ["vqa.parquet", "vqa.jsonl"])
def test_vlm_rows_render_as_chat(tmp_path, name):
    path = write_vlm_fixture(tmp_path / name, n=6)
    src = VLMSource(path)
    assert len(src) == 6
    ex = VLMTransform(VLMTransformConfig(image_size=16, max_images=2))(src[1])
    assert ex["images"].shape == (2, 16, 16, 3) and ex["image_mask"].tolist() == [True, False]
    assert ex["text"] == ("<|image|><|im_start|>user\nWhat colour is the block?<|im_end|>\n<|im_start|>assistant\n"
                          "green<|im_end|>\n<|im_start|>user\nWhich side is it on?<|im_end|>\n<|im_start|>"
                          "assistant\n" + ex["text"].split("assistant\n")[-1])
    assert ex["text"].endswith("<|im_end|>\n")


def test_vlm_sharded_batches(tmp_path):
    path = write_vlm_fixture(tmp_path / "v.parquet", n=10)
    rows = []
    for idx in range(2):
        cfg = VLMConfig([str(path)], batch_size=5, num_epochs=1, shard_index=idx, shard_count=2,
                        transform=VLMTransformConfig(image_size=16, max_images=1))
        rows.append({int(r) for b in build_vlm_dataset(cfg) for r in b["row"]})
    assert not rows[0] & rows[1] and rows[0] | rows[1] == set(range(10))


def test_vlm_loss_mask_on_answers(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(["What colour is the block? red green blue yellow left right Which side"] * 5,
                          trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                               "<|im_end|>"],
                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.save(str(tmp_path / "tok.json"))
    tok = text_mod.TextTokenizer.from_file(str(tmp_path / "tok.json"))
    path = write_vlm_fixture(tmp_path / "v.jsonl", n=2)
    ex = VLMTransform(VLMTransformConfig(image_size=28, max_images=1, seq_len=128), tok)(VLMSource(path)[0])
    answer = tok.decode(ex["input_ids"][ex["loss_mask"] > 0])
    assert answer == "red<|im_end|>" + ("left" if "left" in ex["text"] else "right") + "<|im_end|>"
    assert list(ex["input_ids"]).count(tok.layout.image_patch) == 1 and ex["token_mask"].sum() < 128


def test_vlm_missing_image_is_named(tmp_path):
    path = write_vlm_fixture(tmp_path / "v.jsonl", n=2)
    (tmp_path / "img_0001.png").unlink()
    with pytest.raises(DataError, match="img_0001.png"):
        VLMSource(path)[1]
