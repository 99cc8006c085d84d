"""Embodiment files: the built-in robots as data, `molmoact2-data embodiment --from`, a robot that is not built in,
datasets of another robot refused, LIBERO (tag libero, horizon 10), hub datasets read from the local cache."""
import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from molmoact2_jax.cli import data as cli
from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.embodiments import (EMBODIMENTS, SO100_OLD, EmbodimentFileError, EmbodimentMismatchError,
                                        get_embodiment, load_embodiment_file)
from data_pipelines.errors import DataError
from data_pipelines.fixtures import make_fixture
from data_pipelines.record_codec import decode_record
from data_pipelines.shards import load_episodes
from data_pipelines.sources import LeRobotSource, parse_source, resolve_lerobot, write_embodiment_from
from data_pipelines.stats import compute_norm_stats, compute_source_norm_stats
from data_pipelines.synthetic import simulate_episode

ARM7 = Path(__file__).resolve().parents[1] / "fixtures" / "arm7.json"
SO = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
YAM_ARM = tuple(f"joint_{i}.pos" for i in range(6)) + ("gripper.pos",)

def read_all(shard_dir, shard_file):
    from array_record.python.array_record_module import ArrayRecordReader
    r = ArrayRecordReader(str(shard_dir / shard_file))
    recs = [decode_record(b) for b in r.read(list(range(r.num_records())))]
    r.close()
    return recs


def as_file(tmp_path, emb, **changes) -> str:
    """An embodiment file holding `emb` with `changes` (what a user edits), as --embodiment takes it."""
    path = tmp_path / f"{emb.name}-{len(list(tmp_path.glob('*.json')))}.json"
    path.write_text(json.dumps(dataclasses.replace(emb, **changes).to_dict()))
    return str(path)


# The values embodiments.py hard-coded before the robots became files (git 92a0498), field by field.
FORMER = {
    "droid": dict(
        tag="franka_droid", robot_type="Franka", fps=15, state_names=tuple(f"joint_{i}" for i in range(7)) + ("gripper",),
        cameras=("exterior_1_left", "exterior_2_left", "wrist_left"), real_image_hw=(180, 320),
        fixture_image_hw=(36, 64), low=(-2.8, -1.7, -2.8, -3.0, -2.8, 0.0, -2.8, 0.0),
        high=(2.8, 1.7, 2.8, -0.1, 2.8, 3.7, 2.8, 1.0), setup_type="single franka robotic arm in droid",
        control_mode="absolute joint pose", normalize_gripper=False, action_horizon=15, fixed_camera_order=True,
        delta_action_dims=()),
    "so100": dict(
        tag="so100_so101_molmoact2", robot_type="so101_follower", fps=30, state_names=tuple(f"{j}.pos" for j in SO),
        cameras=("top", "wrist"), real_image_hw=(480, 640), fixture_image_hw=(48, 64),
        low=(-100.0, -100.0, -100.0, -100.0, -100.0, 0.0), high=(100.0,) * 6,
        setup_type="single so100/so101 robotic arm in molmoact2", control_mode="absolute joint pose",
        normalize_gripper=True, action_horizon=30, fixed_camera_order=False, delta_action_dims=()),
    "yam": dict(
        tag="yam_dual_molmoact2", robot_type="bi_yam_follower", fps=30,
        state_names=tuple(f"left_{n}" for n in YAM_ARM) + tuple(f"right_{n}" for n in YAM_ARM),
        cameras=("top", "left", "right"), real_image_hw=(360, 640), fixture_image_hw=(36, 64),
        low=(-2.0, 0.0, 0.0, -1.5, -1.5, -2.0, 0.0) * 2, high=(2.0, 3.2, 3.2, 1.5, 1.5, 2.0, 1.0) * 2,
        setup_type="bimanual yam robotic arms in molmoact2", control_mode="absolute joint pose",
        normalize_gripper=False, action_horizon=30, fixed_camera_order=True, delta_action_dims=()),
    "metaworld": dict(
        tag="metaworld_sawyer", robot_type="sawyer", fps=80, state_names=("ee_x", "ee_y", "ee_z", "gripper"),
        cameras=("corner2", "gripperPOV"), real_image_hw=(224, 224), fixture_image_hw=(64, 64),
        low=(-0.525, 0.348, -0.0525, 0.0), high=(0.525, 1.025, 0.7, 1.0),
        setup_type="single sawyer robotic arm in metaworld", control_mode="delta end-effector position",
        normalize_gripper=False, action_horizon=8, fixed_camera_order=True, delta_action_dims=()),
}


def test_builtin_files_hold_the_former_values_and_round_trip(tmp_path):
    assert sorted(EMBODIMENTS) == ["droid", "libero", "metaworld", "so100", "yam"]
    for name, former in FORMER.items():
        emb = get_embodiment(name)
        assert emb.name == name and {k: getattr(emb, k) for k in former} == former, name
        assert emb.action_names == emb.state_names and (emb.action_low, emb.action_high) == (emb.low, emb.high)
        assert (emb.state_key, emb.action_key) == ("observation.state", "action")
    # the old SO100 generation stays a fixture variant with its own names, cameras and degree ranges
    assert SO100_OLD.state_names == SO100_OLD.action_names == tuple(f"main_{j}" for j in SO)
    assert SO100_OLD.cameras == ("laptop", "phone") and SO100_OLD.robot_type == "so100"
    assert SO100_OLD.low == (-90.0, 0.0, 0.0, -90.0, -90.0, 0.0) and SO100_OLD.high == (90.0, 180.0, 180.0, 90.0, 90.0, 100.0)
    # a dataset must carry the declared cameras where the order is the tag's (DROID, YAM, LIBERO); SO100 community
    # cameras and MetaWorld recordings from any simulator camera use the dataset's own
    assert {n: e.require_camera_keys for n, e in EMBODIMENTS.items()} == {
        "droid": True, "libero": True, "metaworld": False, "so100": False, "yam": True}
    for name, emb in EMBODIMENTS.items():   # file -> Embodiment -> file -> the same Embodiment
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(emb.to_dict()))
        assert dataclasses.replace(load_embodiment_file(path), source="") == emb, name
        assert get_embodiment(str(path)).tag_metadata() == emb.tag_metadata()


def test_libero_embodiment_is_the_tag_fine_tuning_and_evaluation_use():
    from molmoact2_configs.finetune import EMBODIMENTS as FINETUNE
    from molmoact2_jax.evaluation.config import LIBERO
    emb = get_embodiment("libero")
    assert (emb.tag, emb.action_horizon, emb.fps) == ("libero", 10, 10)
    assert (emb.state_dim, emb.action_dim) == (8, 7)
    assert list(emb.camera_keys) == ["observation.images.image", "observation.images.wrist_image"]
    assert emb.fixed_camera_order and not emb.normalize_gripper
    assert (emb.setup_type, emb.control_mode) == ("single franka robotic arm in libero", "delta end-effector pose")
    assert FINETUNE["libero"][:2] == (emb.tag, emb.action_horizon)
    assert (LIBERO.norm_tag, LIBERO.action_horizon, LIBERO.n_action_steps) == ("libero", 10, 10)
    assert (LIBERO.action_dim, LIBERO.state_dim) == (emb.action_dim, emb.state_dim)
    m = emb.tag_metadata()
    assert (m["action_dim"], m["action_horizon"], m["n_action_steps"]) == (7, 10, 10)


@pytest.mark.parametrize("change,field,text", [
    (lambda d: d.pop("tag"), "tag", "missing"),
    (lambda d: d.update(fps="fast"), "fps", "positive number"),
    (lambda d: d.update(action_horizen=20), "action_horizen", "unknown field"),
    (lambda d: d.update(state_dim=6), "state_dim", "lists 7 names"),
    (lambda d: d.update(state_gripper_dims=[5]), "state_gripper_dims", "goes by name"),
    (lambda d: d.update(camera_keys=["observation.images.front", "observation.images.front"]), "camera_keys", "twice"),
    (lambda d: d.update(fixture_state_low=[0.0] * 6), "fixture_state_low", "list of 7 finite numbers"),
    (lambda d: d.update(state_name_aliases=[["a"] * 7]), "state_name_aliases[0]", "gripper dims"),
    (lambda d: d.update(format="v0"), "format", "molmoact2_embodiment.v1"),
    (lambda d: d.update(normalize_gripper="no"), "normalize_gripper", "true or false"),
])
def test_malformed_file_is_one_line_naming_file_and_field(tmp_path, change, field, text):
    d = json.loads(ARM7.read_text())
    change(d)
    path = tmp_path / "robot.json"
    path.write_text(json.dumps(d))
    with pytest.raises(EmbodimentFileError) as e:
        get_embodiment(str(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"embodiment file {path}: field {field!r}") and text in msg, msg


def test_unknown_name_missing_file_and_bad_json(tmp_path):
    with pytest.raises(ValueError, match=r"unknown embodiment 'koch': give a built-in name \(droid, libero"):
        get_embodiment("koch")
    with pytest.raises(EmbodimentFileError, match="robot.json: does not exist; molmoact2-data embodiment --from"):
        get_embodiment(str(tmp_path / "robot.json"))
    (tmp_path / "bad.json").write_text('{"name": "x",}')
    with pytest.raises(EmbodimentFileError, match=r"bad.json: not valid JSON \(line 1 column 14: Expecting property name"):
        get_embodiment(str(tmp_path / "bad.json"))


# --- a robot that is not built in -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def arm7_v3(tmp_path_factory):
    """A v3.0 dataset of the example arm (tests/fixtures/arm7.json), written by the CLI as a user would."""
    out = tmp_path_factory.mktemp("arm7") / "ds"
    assert cli.main(["fixture", "--format", "lerobot-v3.0", "--embodiment", str(ARM7), "--out", str(out),
                     "--episodes", "3", "--codec", "h264"]) == 0
    return out


def test_arm_fixture_of_an_embodiment_file_converts_with_it(arm7_v3, tmp_path):
    emb = get_embodiment(str(ARM7))
    info = json.loads((arm7_v3 / "meta/info.json").read_text())
    assert info["robot_type"] == "arm7_follower" and info["fps"] == 20
    assert info["features"]["observation.state"]["names"] == list(emb.state_names)
    assert [k for k, f in info["features"].items() if f["dtype"] == "video"] == \
        ["observation.images.front", "observation.images.hand"]
    out = tmp_path / "shards"
    assert cli.main(["convert", "--source", f"lerobot:{arm7_v3}", "--embodiment", str(ARM7), "--out", str(out),
                     "--image-size", "32"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert (index["embodiment"], index["tag"], index["horizon"]) == ("arm7", "arm7_lab", 20)
    assert index["camera_keys"] == ["observation.images.front", "observation.images.hand"]
    assert index["tag_metadata"]["camera_keys"] == index["camera_keys"]
    assert index["state_names"] == index["action_names"] == list(emb.state_names)
    ep = load_episodes(out)[1]
    src = simulate_episode(emb, 1)
    rec = read_all(out, ep["shard"])[ep["first_record"] + 3]
    np.testing.assert_array_equal(rec["state"], src.states[3])
    np.testing.assert_array_equal(rec["actions"], src.actions[np.minimum(np.arange(3, 23), src.length - 1)])
    m = compute_norm_stats([out])["metadata_by_tag"]["arm7_lab"]
    assert m["action_stats"]["mask"] == [True] * 6 + [False]   # gripper.pos passes through (normalize_gripper false)
    assert (m["setup_type"], m["action_horizon"]) == ("single arm7 robotic arm in the lab", 20)


def test_embodiment_from_a_dataset_then_convert_with_the_written_file(arm7_v3, tmp_path, capsys):
    robot = tmp_path / "conf" / "robot.json"
    assert cli.main(["embodiment", "--from", f"lerobot:{arm7_v3}", "--out", str(robot)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {robot}" in printed and "edit it: review tag 'arm7_follower'" in printed
    written = json.loads(robot.read_text())
    arm7 = json.loads(ARM7.read_text())
    for k in ("robot_type", "fps", "state_names", "action_names", "camera_keys", "state_gripper_dims",
              "normalize_gripper", "action_horizon"):
        assert written[k] == arm7[k], k
    assert written["real_image_hw"] == [24, 32]   # the fixture's frames (arm7.json fixture_image_hw)
    assert (written["name"], written["tag"], written["fixed_camera_order"]) == ("arm7_follower", "arm7_follower", True)
    # the fixture ranges come from the dataset's stats: they hold every recorded value
    st = json.loads((arm7_v3 / "meta/stats.json").read_text())["observation.state"]
    np.testing.assert_allclose(written["fixture_state_low"], st["min"], atol=1e-6)
    # never overwritten
    before = robot.read_text()
    with pytest.raises(ValueError, match="already exists; an embodiment file is not overwritten"):
        write_embodiment_from(f"lerobot:{arm7_v3}", robot)
    assert robot.read_text() == before
    index = convert(ConvertOptions(f"lerobot:{arm7_v3}", str(robot), str(tmp_path / "s"), image_size=32,
                                   progress=False))
    assert (index["embodiment"], index["tag"], index["total_episodes"]) == ("arm7_follower", "arm7_follower", 3)


def test_dataset_of_another_robot_is_refused_naming_the_key(arm7_v3, tmp_path):
    out = tmp_path / "never"
    # dims: the 7-dim arm given as so100
    with pytest.raises(EmbodimentMismatchError, match=r"observation.state has 7 dims but embodiment so100 expects 6"):
        convert(ConvertOptions(f"lerobot:{arm7_v3}", "so100", str(out), progress=False))
    with pytest.raises(EmbodimentMismatchError, match="observation.state has 7 dims"):
        compute_source_norm_stats([f"lerobot:{arm7_v3}"], "so100")
    # an SO100 copy whose joints were renamed for a koch arm: refused naming the first name that differs
    so100 = tmp_path / "koch"
    shutil.copytree(arm7_v3, so100, ignore=shutil.ignore_patterns("videos", "data"))
    info = json.loads((so100 / "meta/info.json").read_text())
    koch = [f"koch_{j}" for j in SO]
    for key in ("observation.state", "action"):
        info["features"][key].update(shape=[6], names={"motors": koch})
    (so100 / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(EmbodimentMismatchError) as e:
        convert(ConvertOptions(f"lerobot:{so100}", "so100", str(out), progress=False))
    msg = str(e.value)
    assert "observation.state names[0] is 'koch_shoulder_pan' but embodiment so100 expects 'shoulder_pan.pos'" in msg
    assert "main_shoulder_pan" in msg and f"file={so100 / 'meta/info.json'}" in msg and "\n" not in msg
    # the old SO100 names (and the bare canonical ones) are so100's, by the alias in so100.json
    for names in ([f"main_{j}" for j in SO], list(SO)):
        for key in ("observation.state", "action"):
            info["features"][key]["names"] = names
        (so100 / "meta/info.json").write_text(json.dumps(info))
        assert parse_source(f"lerobot:{so100}")[1] == so100
        assert LeRobotSource(so100, get_embodiment("so100")).state_names == names
    # a camera the embodiment needs is missing
    two_cams = as_file(tmp_path, get_embodiment(str(ARM7)), cameras=("front", "side"))
    with pytest.raises(EmbodimentMismatchError, match=r"no camera 'observation.images.side'; embodiment arm7 .* "
                                                      r"expects the cameras"):
        convert(ConvertOptions(f"lerobot:{arm7_v3}", two_cams, str(out), progress=False))
    # another state key than the dataset has
    other_key = as_file(tmp_path, get_embodiment(str(ARM7)), state_key="observation.state.joints")
    with pytest.raises(EmbodimentMismatchError, match="no feature 'observation.state.joints', the state of"):
        convert(ConvertOptions(f"lerobot:{arm7_v3}", other_key, str(out), progress=False))
    assert not out.exists()   # refused before anything was written


def test_declared_camera_order_is_the_records_order(arm7_v3, tmp_path):
    """require_camera_keys: the embodiment's order, not the dataset's, is what the records and metadata hold."""
    reversed_cams = as_file(tmp_path, get_embodiment(str(ARM7)), cameras=("hand", "front"))
    index = convert(ConvertOptions(f"lerobot:{arm7_v3}", reversed_cams, str(tmp_path / "s"), image_size=16,
                                   progress=False))
    assert index["camera_keys"] == index["tag_metadata"]["camera_keys"] == \
        ["observation.images.hand", "observation.images.front"]


# --- LIBERO ------------------------------------------------------------------------------------------------------

def test_libero_fixture_converts_with_tag_libero_horizon_10(tmp_path):
    src = make_fixture("lerobot-v3.0", "libero", tmp_path / "libero", episodes=2, length=12, codec="h264",
                       image_hw=(16, 16))
    info = json.loads((src / "meta/info.json").read_text())
    assert info["features"]["observation.state"]["shape"] == [8] and info["features"]["action"]["shape"] == [7]
    out = tmp_path / "shards"
    assert cli.main(["convert", "--source", f"lerobot:{src}", "--embodiment", "libero", "--out", str(out),
                     "--image-size", "16"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert (index["tag"], index["horizon"], index["tag_metadata"]["action_dim"]) == ("libero", 10, 7)
    assert index["camera_keys"] == ["observation.images.image", "observation.images.wrist_image"]
    emb = get_embodiment("libero")
    ep = simulate_episode(emb, 0, length=12, image_hw=(16, 16))
    assert ep.states.shape == (12, 8) and ep.actions.shape == (12, 7)
    assert set(np.unique(ep.actions[:, 6])) <= {-1.0, 1.0} and np.abs(ep.states[:, 6:]).max() <= 0.04 + 1e-7
    e0 = load_episodes(out)[0]
    rec = read_all(out, e0["shard"])[e0["first_record"]]
    assert rec["actions"].shape == (10, 7) and rec["state"].shape == (8,)
    np.testing.assert_array_equal(rec["actions"], ep.actions[:10])
    m = compute_norm_stats([out])["metadata_by_tag"]["libero"]
    assert m["state_stats"]["mask"] == [True] * 6 + [False, False] and m["action_stats"]["mask"] == [True] * 6 + [False]
    assert m["action_stats"]["names"][6] == "gripper" and len(m["action_stats"]["q01"]) == 7
    raw = compute_source_norm_stats([f"lerobot:{src}"], "libero")["metadata_by_tag"]["libero"]
    np.testing.assert_allclose(raw["action_stats"]["q99"], m["action_stats"]["q99"], rtol=1e-12)
    assert (m["n_action_steps"], m["control_mode"]) == (10, "delta end-effector pose")


# --- hub datasets from the local cache ------------------------------------------------------------------------------

def test_hub_repo_id_resolves_from_the_local_cache_only(arm7_v3, tmp_path, monkeypatch):
    home = tmp_path / "hf"
    for var in ("HF_LEROBOT_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    repo = "lerobot/svla_so101_pickplace"
    # not cached: one line naming where it looked and how to download it
    with pytest.raises(DataError) as e:
        parse_source(f"lerobot:{repo}")
    msg = str(e.value)
    assert "\n" not in msg and f"{home}/lerobot/{repo}/meta/info.json" in msg
    assert f"{home}/hub/datasets--lerobot--svla_so101_pickplace/snapshots/<revision>" in msg
    assert f"huggingface-cli download --repo-type dataset {repo}" in msg
    # the hub snapshot layout: the newest revision holding meta/info.json
    snaps = home / "hub/datasets--lerobot--svla_so101_pickplace/snapshots"
    for rev, t in (("aaa", 1_000), ("bbb", 3_000), ("ccc", 2_000)):
        (snaps / rev / "meta").mkdir(parents=True)
        shutil.copy(arm7_v3 / "meta/info.json", snaps / rev / "meta/info.json")
        os.utime(snaps / rev, (t, t))
    (snaps / "ddd").mkdir()   # an unfinished download: no meta/info.json
    assert resolve_lerobot(repo) == snaps / "bbb"
    # LeRobot's own cache wins, and HF_LEROBOT_HOME moves it
    flat = home / "lerobot" / repo
    shutil.copytree(arm7_v3, flat)
    assert parse_source(f"lerobot:{repo}") == ("lerobot", flat)
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "elsewhere"))
    assert resolve_lerobot(repo) == snaps / "bbb"
    monkeypatch.setenv("HF_LEROBOT_HOME", str(home / "lerobot"))
    # a local folder of that name is read as it is
    (tmp_path / "lerobot/svla_so101_pickplace").mkdir(parents=True)
    assert resolve_lerobot(repo) == Path("lerobot/svla_so101_pickplace")
    shutil.rmtree(tmp_path / "lerobot")
    # the commands read the cached dataset by its repo id
    stats = compute_source_norm_stats([f"lerobot:{repo}"], str(ARM7))["metadata_by_tag"]["arm7_lab"]
    assert stats["repos"][0]["source"] == f"lerobot:{repo}" and stats["repos"][0]["path"] == str(flat)
    assert cli.main(["embodiment", "--from", f"lerobot:{repo}", "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["state_names"] == list(get_embodiment(str(ARM7)).state_names)
