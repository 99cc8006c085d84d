"""Shared check of the drift tests: a frame's training example (the trainer's eval pipeline: no augmentation, in
order) next to what `Policy` builds from that frame's raw observation."""
from pathlib import Path

import grain
import numpy as np

from data_pipelines.formats.images import decode_image
from data_pipelines.formats.lerobot_reader import LeRobotDataset
from data_pipelines.pipeline.robot_dataset import build_map_dataset
from data_pipelines.record_codec import decode_record
from data_pipelines.shards import load_index
from molmoact2_jax.inference import testing as T
from molmoact2_jax.inference.policy import Policy
from molmoact2_jax.recipes import load_recipe, recipe_path
from molmoact2_jax.tokenizers.text import TextTokenizer
from molmoact2_jax.training.data_source import pipeline_config


def training_and_policy(tmp_path, lerobot_root, shards, stats_path, frames=(0, 1, 2)) -> list[dict]:
    """For the given record indices of a single-tag shard directory: the training example and the Policy's inputs
    for the same frame's raw observation (state and task read from the LeRobot source, the camera images as the
    dataset stores them, in the tag's camera order)."""
    tok = TextTokenizer.from_file(T.train_text_tokenizer(str(tmp_path / "tokenizer.json")))
    model_cfg = T.model_config("tiny", tok)
    model_cfg.action_mode = "continuous"          # prompt-only examples: the whole token row is the prompt
    cfg = load_recipe(recipe_path("finetune", "robot_tiny"))
    cfg.model = model_cfg
    cfg.data.source, cfg.data.sources = "arrayrecord", [{"path": str(shards), "weight": 1.0}]
    cfg.data.norm_stats, cfg.data.tokenizer = str(stats_path), str(tmp_path / "tokenizer.json")
    cfg.data.seq_len, cfg.data.global_batch_size, cfg.data.max_cameras = 512, 1, 3
    examples = build_map_dataset(pipeline_config(cfg, "eval"))   # prepared there: the same tokenizer file
    index = load_index(shards)
    records = grain.sources.ArrayRecordDataSource([str(Path(shards) / s["file"]) for s in index["shards"]
                                                   if s["num_records"] > 0])
    policy = Policy(model_cfg, T.init_params(model_cfg), str(stats_path), tok, None, prompt_bucket=1)
    tag = policy.tag(index["tag"])
    source = LeRobotDataset(lerobot_root)
    out = []
    for i in frames:
        ex, rec = examples[i], decode_record(records[i])
        assert (rec["episode_id"], int(rec["frame_index"])) == (ex["episode_id"], int(ex["frame_index"]))
        ep, t = int(str(rec["episode_id"]).rsplit("_", 1)[-1]), int(rec["frame_index"])
        cols = source.episode_columns(ep, keys=("observation.state", "task_index"))
        state = np.asarray(cols["observation.state"][t], np.float64)
        task = source.task(ep, int(np.asarray(cols["task_index"][t]).reshape(-1)[0]))
        images = [decode_image(rec[f"image/{k}"]) for k in tag.camera_keys]
        inp = policy.build_inputs(policy.check_images(images, tag), task, policy.check_state(state, tag), tag)
        out.append(dict(example=ex, policy=inp, tag=tag, state=state, task=task, record=rec, policy_object=policy))
    return out


def assert_same_inputs(pairs, min_prompt_tokens: int = 20):
    """Prompt ids, image patches / pooling index and normalized state (and its bins) are identical."""
    for p in pairs:
        ex, inp, tag = p["example"], p["policy"], p["tag"]
        np.testing.assert_array_equal(p["record"]["state"], p["state"])   # the converter kept the raw state
        assert p["record"]["task"] == p["task"]
        train_ids = ex["input_ids"][ex["token_mask"]]
        serve_ids = inp["ids"][0][inp["attn"][0]]
        assert len(serve_ids) >= min_prompt_tokens
        np.testing.assert_array_equal(train_ids, serve_ids)
        n_cam = int(ex["image_mask"].sum())
        assert n_cam == len(tag.camera_keys)
        np.testing.assert_array_equal(ex["image_patches"][:n_cam], inp["images"][0])
        np.testing.assert_array_equal(ex["pooled_idx"][:inp["pooled"].shape[1]], inp["pooled"][0])
        np.testing.assert_array_equal(ex["state"][:tag.state_dim], inp["state"])
        np.testing.assert_array_equal(ex["state_bins"][:tag.state_dim], inp["state_bins"])
        assert ex["prompt"] == inp["prompt"]
