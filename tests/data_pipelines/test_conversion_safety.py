"""Conversions that cannot be corrupted: options recorded and compared on every re-run (first runs cut short too),
--overwrite removing only the converter's files, Ctrl-C leaving no partial shard, read-only outputs refused up
front, and a truncated or bit-flipped shard named by file in stats, inspect and training."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from molmoact2_jax.cli import data as cli
from data_pipelines import convert as convert_mod
from data_pipelines.convert import ConversionConflict, ConversionInterrupted, ConvertOptions, convert
from data_pipelines.embodiments import get_embodiment
from data_pipelines.errors import DataError
from data_pipelines.inspect_data import inspect_path
from data_pipelines.shards import OPTIONS_FILE, load_episodes
from data_pipelines.pipeline.robot_dataset import PipelineConfig, Source, build_map_dataset
from data_pipelines.pipeline.robot_transform import RobotTransformConfig
from data_pipelines.stats import write_norm_stats

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(episodes_per_shard=2, image_size=32, progress=False)


def opts(src, out, **kw):
    return ConvertOptions(f"lerobot:{src}", "so100", str(out), **{**SMALL, **kw})


def files(d) -> dict:
    """name -> (bytes, mtime) of every file in d: what a refused command must leave exactly as it was."""
    return {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in sorted(Path(d).iterdir()) if f.is_file()}


@pytest.fixture(scope="module")
def converted(so100_v21, tmp_path_factory):
    """so100_v21 (3 episodes) converted at 32 px, 2 episodes per shard: 2 shards."""
    out = tmp_path_factory.mktemp("safety") / "s"
    convert(opts(so100_v21, out))
    return out


def fresh_copy(converted, tmp_path) -> Path:
    out = tmp_path / "s"
    shutil.copytree(converted, out)
    return out


def unwritable(tmp_path) -> Path:
    """A folder no file can be created in: chmod works for a normal user; root ignores permission bits, so there
    the pseudo file system /sys (which refuses new files) stands in."""
    if os.geteuid() == 0:
        return Path("/sys/molmoact2-test-out")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d / "out"


def test_options_are_recorded_and_a_rerun_with_other_options_is_refused(converted, so100_v21, tmp_path):
    record = json.loads((converted / OPTIONS_FILE).read_text())
    assert record["source"] == f"lerobot:{so100_v21.resolve()}" and record["embodiment"] == "so100"
    assert record["image_size"] == 32 and record["horizon"] == 30 and record["episodes_per_shard"] == 2
    assert len(record["embodiment_sha256"]) == 64 and record["on_error"] == "raise"
    assert json.loads((converted / "index.json").read_text())["options"] == record
    out = fresh_copy(converted, tmp_path)
    before = files(out)
    other_src = tmp_path / "other_src"
    shutil.copytree(so100_v21, other_src)
    for change, expect in [(dict(image_size=112), "--image-size 32 there, 112 now"),
                           (dict(horizon=10), "--horizon 30 there, 10 now"),
                           (dict(episodes_per_shard=1), "--episodes-per-shard 2 there, 1 now"),
                           (dict(image_format="png"), "--image-format jpeg there, png now"),
                           (dict(delta_action_dims=(0, 1)), "--delta-action-dims none there, 0,1 now"),
                           (dict(image_size=None), "--image-size 32 there, 0 (aspect kept) now")]:
        with pytest.raises(ConversionConflict) as e:
            convert(opts(so100_v21, out, **change))
        assert str(e.value).startswith(f"{out}: holds shards converted with other options (") and expect in str(e.value)
        assert "--overwrite" in str(e.value)
    edited = dataclasses.replace(get_embodiment("so100"), setup_type="so100 arm, new gripper")   # same name
    with pytest.raises(ConversionConflict, match=r"\(the embodiment's definition digest [0-9a-f]{12} there, digest "):
        convert(ConvertOptions(f"lerobot:{so100_v21}", edited, str(out), **SMALL))
    with pytest.raises(ConversionConflict, match=f"--source lerobot:{so100_v21.resolve()} there, "
                                                 f"lerobot:{other_src.resolve()} now"):
        convert(opts(other_src, out))
    assert files(out) == before                      # refused before anything was written
    again = convert(opts(so100_v21, out, on_error="skip"))   # raise -> skip: what skip would have written
    assert again["resumed_shards"] == 2 and again["total_frames"] == json.loads(
        (converted / "index.json").read_text())["total_frames"]
    with pytest.raises(ConversionConflict, match="--on-error skip there, raise now"):
        convert(opts(so100_v21, out))


def test_folders_converted_before_options_were_recorded(converted, so100_v21, tmp_path):
    """index.json without `options` and no convert_options.json (an older converter): what it recorded (source,
    embodiment, horizon, image size and format) is compared; shards without any index.json are refused."""
    out = fresh_copy(converted, tmp_path)
    (out / OPTIONS_FILE).unlink()
    index = json.loads((out / "index.json").read_text())
    del index["options"]
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionConflict, match="--image-size 32 there, 64 now"):
        convert(opts(so100_v21, out, image_size=64))
    assert not (out / OPTIONS_FILE).exists()
    assert convert(opts(so100_v21, out))["resumed_shards"] == 2          # the same: adopted and recorded
    assert json.loads((out / OPTIONS_FILE).read_text())["image_size"] == 32
    (out / OPTIONS_FILE).unlink()
    (out / "index.json").unlink()
    with pytest.raises(ConversionConflict, match="holds shards of a conversion that recorded no options"):
        convert(opts(so100_v21, out))


def test_overwrite_replaces_only_the_converters_files(converted, so100_v21, tmp_path):
    out = fresh_copy(converted, tmp_path)
    (out / "norm_stats.json").write_text("{}")            # stale: derived from the old shards
    (out / "notes.txt").write_text("mine")
    (out / "openfast").mkdir()                            # stale too: molmoact2-data openfast / tokenizer output
    (out / "openfast" / "tokenizer.json").write_text("{}")
    (out / "tokenizer.json").write_text("{}")
    index = convert(opts(so100_v21, out, episodes_per_shard=1, overwrite=True))
    assert index["resumed_shards"] == 0 and len(index["shards"]) == 3
    names = sorted(f.name for f in out.iterdir())
    assert "notes.txt" in names and not {"openfast", "tokenizer.json", "norm_stats.json"} & set(names)
    assert not [n for n in names if "-of-00002" in n]       # the old 2-shard layout is gone
    assert json.loads((out / OPTIONS_FILE).read_text())["episodes_per_shard"] == 1


def test_ctrl_c_leaves_no_partial_shard_and_a_resume_with_other_options_is_refused(so100_v21, tmp_path,
                                                                                  monkeypatch, capsys):
    """Interrupted inside shard 1 (3 of episode 2's records written) during a first run: no index.json yet, so
    convert_options.json is what a resume with another --image-size is refused by."""
    real = convert_mod.frame_records

    def interrupted_in_episode_2(ep, emb, horizon, tag, ep_id, *args):
        for i, rec in enumerate(real(ep, emb, horizon, tag, ep_id, *args)):
            if int(ep_id) == 2 and i == 3:
                raise KeyboardInterrupt
            yield rec
    monkeypatch.setattr(convert_mod, "frame_records", interrupted_in_episode_2)
    out = tmp_path / "s"
    args = ["convert", "--source", f"lerobot:{so100_v21}", "--embodiment", "so100", "--out", str(out),
            "--image-size", "32", "--episodes-per-shard", "2"]
    capsys.readouterr()
    assert cli.main(args) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == [f"molmoact2-data: error: interrupted: 1 of 2 shards finished in {out} (no partial shard left); "
                   f"run the same command again to resume"]
    assert sorted(f.name for f in out.iterdir()) == [OPTIONS_FILE, "shard-00000-of-00002.array_record",
                                                     "shard-00000.json", "shard-00000.npz"]
    with pytest.raises(ConversionInterrupted):      # the library raises it (a KeyboardInterrupt) for callers
        convert(opts(so100_v21, tmp_path / "t"))
    monkeypatch.setattr(convert_mod, "frame_records", real)
    assert cli.main(args[:-4] + ["--image-size", "48", "--episodes-per-shard", "2"]) == 2
    assert capsys.readouterr().err.strip() == (f"molmoact2-data: error: {out}: holds shards converted with other "
                                               f"options (--image-size 32 there, 48 now); add --overwrite to replace "
                                               f"them, or choose another --out")
    assert cli.main(args) == 0
    assert "(1 already done)" in capsys.readouterr().out
    assert len(load_episodes(out)) == 3


def _sigint_as_at_a_terminal():
    """The conversion starts with SIGINT's default action, as a command typed at a terminal does. A test run started
    in the background by a non-interactive shell (`pytest ... &`) has SIGINT ignored, which every child inherits
    through exec, and Python keeps an inherited SIG_IGN: there the signal never arrived (all shards converted,
    exit 0; seen twice)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_to_a_multiprocess_conversion(tmp_path):
    """A real Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while 2 worker processes write:
    exit 130, one error line and no traceback, no temporary or unfinished shard file; the same command resumes."""
    from data_pipelines.fixtures import make_fixture
    # 40 one-episode shards: the signal is sent once the first shard is finished, so many are still to come however
    # fast or loaded the machine is (waiting for a .tmp file instead could miss every window under load).
    source = make_fixture("lerobot-v2.1", "so100", tmp_path / "src", episodes=40, length=12)
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "molmoact2_jax.cli.data", "convert", "--source", f"lerobot:{source}",
           "--embodiment", "so100", "--out", str(out), "--workers", "2", "--episodes-per-shard", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_sigint_as_at_a_terminal)
    deadline = time.time() + 180
    while not list(out.glob("shard-*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the conversion ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("molmoact2-data: error: interrupted: "), stderr
    assert "run the same command again to resume" in errors[0]
    left = sorted(f.name for f in out.iterdir())
    assert not [n for n in left if n.endswith((".tmp", ".tmp.npz"))], left
    for shard in [n for n in left if n.endswith(".array_record")]:   # every shard file left is a finished one
        assert (out / (shard.split("-of-")[0] + ".json")).exists(), left
    assert "index.json" not in left
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(load_episodes(out)) == 40


def test_read_only_outputs_are_refused_before_any_work(so100_v21, converted, tmp_path, capsys):
    target = unwritable(tmp_path)
    for argv in (["convert", "--source", f"lerobot:{so100_v21}", "--embodiment", "so100", "--out", str(target)],
                 ["stats", str(converted), "--out", str(target / "norm_stats.json")]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"molmoact2-data: error: --out {target}") and \
            "cannot write in" in err[0], err
    assert not target.exists()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        convert(opts(so100_v21, tmp_path / "a_file" / "s"))


def test_stats_writes_next_to_the_shards_by_default(converted, so100_v21, tmp_path, capsys):
    out = fresh_copy(converted, tmp_path)
    assert cli.main(["stats", str(out)]) == 0
    assert f"wrote {out / 'norm_stats.json'}" in capsys.readouterr().out
    assert json.loads((out / "norm_stats.json").read_text())["format"] == "molmoact2_norm_stats.v1"
    assert cli.main(["stats", f"lerobot:{so100_v21}", "--embodiment", "so100"]) == 2
    assert "--out is required with lerobot:/rlds: sources" in capsys.readouterr().err


def test_a_truncated_shard_is_named_by_stats_inspect_and_training_and_a_rerun_rewrites_it(converted, so100_v21,
                                                                                        tmp_path, capsys):
    out = fresh_copy(converted, tmp_path)
    write_norm_stats([str(out)], tmp_path / "ns.json")
    shard = out / "shard-00001-of-00002.array_record"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])     # a disk that filled up, a cut copy
    with pytest.raises(DataError, match="corrupt or truncated shard") as e:
        write_norm_stats([str(out)], tmp_path / "x.json")
    assert e.value.path == str(shard) and "re-run the same molmoact2-data convert command" in str(e.value)
    assert cli.main(["stats", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(shard) in err[0] and "corrupt or truncated shard" in err[0]
    assert not (out / "norm_stats.json").exists()
    _, errors = inspect_path(out)
    assert len(errors) == 1 and str(shard) in errors[0] and "corrupt or truncated" in errors[0]
    cfg = PipelineConfig(sources=[Source(str(out))], norm_stats=str(tmp_path / "ns.json"), batch_size=2,
                         shard_index=0, shard_count=1, num_epochs=1,
                         transform=RobotTransformConfig(image_size=32, augment=False))
    with pytest.raises(DataError, match="corrupt or truncated shard") as e:   # at build time: before any compile
        build_map_dataset(cfg)
    assert e.value.path == str(shard)
    again = convert(opts(so100_v21, out))          # the resume rule reads the file back: shard 1 is rewritten
    assert again["resumed_shards"] == 1
    write_norm_stats([str(out)], tmp_path / "y.json")
    assert len(build_map_dataset(cfg)) == again["total_frames"]


def test_a_bit_flipped_record_is_named_when_training_reads_it(converted, tmp_path):
    out = fresh_copy(converted, tmp_path)
    write_norm_stats([str(out)], tmp_path / "ns.json")
    shard = out / "shard-00000-of-00002.array_record"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF                     # inside a record: the count still matches, the hash not
    shard.write_bytes(bytes(data))
    cfg = PipelineConfig(sources=[Source(str(out))], norm_stats=str(tmp_path / "ns.json"), batch_size=2,
                         shard_index=0, shard_count=1, shuffle=False, num_epochs=1,
                         transform=RobotTransformConfig(image_size=32, augment=False))
    ds = build_map_dataset(cfg)
    with pytest.raises(DataError) as e:
        for i in range(len(ds)):
            ds[i]
    assert str(e.value).startswith(f"{shard}: corrupt shard at record ") and "delete shard-00000.json" in str(e.value)


def test_beam_conversion_follows_the_same_rules(converted, so100_v21, tmp_path):
    from data_pipelines import beam_convert as bc   # the beam extra is installed with the test extras
    out = fresh_copy(converted, tmp_path)
    before = files(out)
    with pytest.raises(ConversionConflict, match="--image-size 32 there, 48 now"):
        bc.beam_convert(opts(so100_v21, out, image_size=48), direct_mode="in_memory")
    assert files(out) == before
    index = bc.beam_convert(opts(so100_v21, out, image_size=48, overwrite=True), direct_mode="in_memory")
    assert index["resumed_shards"] == 0 and index["options"]["image_size"] == 48
    assert (out / "norm_stats.json").exists()
