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


def test_delta_actions_train_as_deltas_and_serve_as_absolute(tmp_path):
    """A dataset converted with --delta-action-dims: the norm stats of those dims are of a[t+k] - s[t]; the training
    target of a frame, un-normalized and made absolute by the Policy's output transforms, is the recorded chunk."""
    from data_pipelines.formats.lerobot_reader import LeRobotDataset
    src = make_fixture("lerobot-v3.0", "yam", tmp_path / "yam", episodes=2, length=12)
    shards, horizon, delta = tmp_path / "shards", 8, (0, 1, 2, 3, 4, 5)   # the left arm's joints, not its gripper
    convert(ConvertOptions(source=f"lerobot:{src}", embodiment="yam", out=str(shards), horizon=horizon,
                           image_size=42, progress=False, delta_action_dims=delta))
    stats = write_norm_stats([str(shards)], tmp_path / "norm_stats.json")
    meta = stats["metadata_by_tag"]["yam_dual_molmoact2"]
    assert meta["delta_action_dims"] == list(delta)
    ds = LeRobotDataset(src)
    deltas, absolute = [], []
    for ep in range(2):
        cols = ds.episode_columns(ep)
        s, a = cols["observation.state"].astype(np.float64), cols["action"].astype(np.float64)
        for t in range(len(s)):
            for k in range(horizon):
                if t + k < len(s):
                    deltas.append(a[t + k] - s[t])
        absolute.append(a)
    deltas, absolute = np.array(deltas), np.concatenate(absolute)
    q = meta["action_stats"]
    np.testing.assert_allclose(np.array(q["q01"])[list(delta)], np.quantile(deltas[:, delta], 0.01, axis=0),
                               rtol=1e-12)
    np.testing.assert_allclose(np.array(q["mean"])[6:], absolute[:, 6:].mean(0), rtol=1e-12)   # absolute dims
    pairs = training_and_policy(tmp_path, src, shards, tmp_path / "norm_stats.json", frames=(0, 3, 15))
    assert_same_inputs(pairs)
    tag = pairs[0]["tag"]
    assert tag.delta_action_dims == delta
    group = pairs[0]["policy_object"].transforms(tag)
    for p in pairs:
        ex, rec = p["example"], p["record"]
        valid = ~ex["action_is_pad"][:horizon]
        target = ex["actions"][:horizon, :tag.action_dim]
        # q01/q99 clipping loses what lies outside; compare the rest (pass-through grippers always)
        inside = (np.abs(target) < 1.0) | ~tag.action_stats.mask[None]
        back = group.apply_outputs({"actions": target, "state": p["state"]})["actions"]
        span = np.array(q["q99"]) - np.array(q["q01"])
        err = np.abs(back - rec["actions"][:horizon])[valid[:, None] & inside] / np.broadcast_to(span, back.shape)[
            valid[:, None] & inside]
        assert inside[valid].mean() > 0.8 and err.max() < 1e-6, err.max()
        # the delta dims really are deltas: the model-space target is not the absolute action normalized
        plain = np.clip(2 * (rec["actions"][:horizon, 0] - q["q01"][0]) / span[0] - 1, -1, 1)
        assert not np.allclose(target[valid, 0], plain[valid], atol=1e-3)
