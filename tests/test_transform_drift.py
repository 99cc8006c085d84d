"""Training and serving share one observation -> model-input path: for the same frame of a converted LeRobot
dataset, the training example equals what `Policy` builds from the raw observation (MetaWorld: test_sim_eval)."""
import numpy as np

from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.fixtures import make_fixture
from data_pipelines.stats import write_norm_stats
from transform_drift import assert_same_inputs, training_and_policy


def test_lerobot_training_example_equals_policy_inputs(tmp_path):
    # YAM: 3 fixed-order cameras, 14-D state whose two gripper dims pass through un-normalized
    src = make_fixture("lerobot-v3.0", "yam", tmp_path / "yam", episodes=2, length=12)
    shards = tmp_path / "shards"
    convert(ConvertOptions(source=f"lerobot:{src}", embodiment="yam", out=str(shards), horizon=8, image_size=42,
                           progress=False))
    write_norm_stats([str(shards)], tmp_path / "norm_stats.json")
    pairs = training_and_policy(tmp_path, src, shards, tmp_path / "norm_stats.json", frames=(0, 5, 13))
    assert_same_inputs(pairs)
    tag = pairs[0]["tag"]
    grip = np.array(["gripper" in n for n in tag.state_stats.names])
    assert grip.sum() == 2 and (tag.state_stats.mask == ~grip).all()
    for p in pairs:
        state = p["example"]["state"][:tag.state_dim]
        np.testing.assert_array_equal(state[grip], p["state"][grip].astype(np.float32))
        assert np.abs(state[~grip]).max() <= 1.0 and not np.allclose(state[~grip], p["state"][~grip])
    assert len({p["example"]["episode_id"] for p in pairs}) == 2
