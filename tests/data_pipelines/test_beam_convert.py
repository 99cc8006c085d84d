"""The Beam converter (DirectRunner) against convert.py on LeRobot v2.1, v3.0 and DROID RLDS fixtures: the same shards
byte for byte and the same norm stats, for 1 or 2 workers; bad episodes skipped and named; resume; the CLI."""
import copy
import json
import shutil
import sys

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from data_pipelines import beam_convert as bc  # without apache-beam this fails, naming pip install -e ".[beam]"
from molmoact2_jax.cli import data as cli
from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.errors import NonFiniteValueError
from data_pipelines.record_codec import decode_record
from data_pipelines.shards import sidecar_path
from data_pipelines.sources import LeRobotSource
from data_pipelines.stats import compute_norm_stats

CASES = {"lerobot-v3.0": ("yam_v3", "lerobot", "yam"), "lerobot-v2.1": ("so100_v21", "lerobot", "so100"),
         "droid-rlds": ("droid_rlds", "rlds", "droid")}
SMALL = dict(episodes_per_shard=2, image_size=48, progress=False)   # small frames: the encoder is not under test


def _files(d) -> dict:
    """Every output file's bytes; .npz compared as arrays, as np.savez stamps each member with the time."""
    out = {}
    for f in sorted(d.iterdir()):
        if f.suffix == ".npz":
            with np.load(f) as z:
                out[f.name] = {k: z[k] for k in z.files}
        else:
            out[f.name] = f.read_bytes()
    return out


def _assert_same_files(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for name, v in want.items():
        if isinstance(v, dict):
            assert sorted(got[name]) == sorted(v), name
            for k in v:
                assert got[name][k].dtype == v[k].dtype, (name, k)
                np.testing.assert_array_equal(got[name][k], v[k], err_msg=f"{name}:{k}")
        else:
            assert got[name] == v, f"{name} differs"


def _records(d, shard_file) -> list[dict]:
    r = ArrayRecordReader(str(d / shard_file))
    recs = [decode_record(b) for b in r.read(list(range(r.num_records())))]
    r.close()
    return recs


def _without_norm_stats(files: dict) -> dict:
    return {k: v for k, v in files.items() if k != "norm_stats.json"}


def _without_paths(stats: dict) -> dict:
    stats = copy.deepcopy(stats)
    for m in stats["metadata_by_tag"].values():
        m["repos"] = [{k: v for k, v in r.items() if k != "path"} for r in m["repos"]]
    return stats


def _check_norm_stats(beam_out, ref_out):
    """norm_stats.json from the pipeline's CombineFn == `molmoact2-data stats` on either directory, exactly."""
    got = json.loads((beam_out / "norm_stats.json").read_text())
    assert got == json.loads(json.dumps(compute_norm_stats([beam_out])))
    assert _without_paths(got) == _without_paths(json.loads(json.dumps(compute_norm_stats([ref_out]))))
    return got


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_beam_writes_the_converters_shards_and_norm_stats(fmt, request, tmp_path):
    fixture, kind, emb = CASES[fmt]
    src = f"{kind}:{request.getfixturevalue(fixture)}"
    ref = convert(ConvertOptions(src, emb, str(tmp_path / "ref"), **SMALL))
    got = bc.beam_convert(ConvertOptions(src, emb, str(tmp_path / "beam"), **SMALL), direct_mode="in_memory")
    assert got == ref and len(ref["shards"]) >= 2 and ref["total_frames"] > 0 and not ref["skipped"]
    beam_files = _files(tmp_path / "beam")
    _assert_same_files(_without_norm_stats(beam_files), _files(tmp_path / "ref"))   # shards, sidecars, index
    for s in ref["shards"]:  # and the records decode to the frames the sidecar lists, in its order
        recs = _records(tmp_path / "beam", s["file"])
        assert len(recs) == s["num_records"]
        side = json.loads(sidecar_path(tmp_path / "beam", s["file"]).read_text())
        want = [(e["episode_id"], t) for e in side["episodes"] for t in range(e["num_frames"])]
        assert [(r["episode_id"], r["frame_index"]) for r in recs] == want
        assert recs[0]["image/" + ref["camera_keys"][0]][:2] == b"\xff\xd8"   # JPEG
    stats = _check_norm_stats(tmp_path / "beam", tmp_path / "ref")
    assert next(iter(stats["metadata_by_tag"].values()))["action_stats"]["count"] == ref["total_frames"]


def test_one_or_two_worker_processes_write_the_same_output(yam_v3, tmp_path):
    """DirectRunner multi_processing with 1 and 2 workers, and convert.py with 2 worker processes: one output."""
    src, outs = f"lerobot:{yam_v3}", {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"w{workers}"
        bc.beam_convert(ConvertOptions(src, "yam", str(outs[workers]), workers=workers, **SMALL))
    convert(ConvertOptions(src, "yam", str(tmp_path / "ref"), workers=2, **SMALL))
    one, two = _files(outs[1]), _files(outs[2])
    _assert_same_files(_without_norm_stats(two), _without_norm_stats(one))
    _assert_same_files(_without_norm_stats(two), _files(tmp_path / "ref"))
    assert len(json.loads(one["index.json"])["shards"]) == 3
    assert _without_paths(_check_norm_stats(outs[2], tmp_path / "ref")) == \
        _without_paths(_check_norm_stats(outs[1], tmp_path / "ref"))


def test_bad_episode_is_skipped_and_named_or_stops_the_run(tmp_path, so100_nan_episode):
    src = f"lerobot:{so100_nan_episode}"
    for mode in ("in_memory", "multi_processing"):   # a worker process's error arrives as the same type
        with pytest.raises(NonFiniteValueError, match=r"NaN/inf at frame 3 \[file=.*episode_000001.parquet, "
                                                      r"episode=1, key=action\]"):
            bc.beam_convert(ConvertOptions(src, "so100", str(tmp_path / mode), **SMALL), direct_mode=mode)
    ref = convert(ConvertOptions(src, "so100", str(tmp_path / "ref"), on_error="skip", **SMALL))
    got = bc.beam_convert(ConvertOptions(src, "so100", str(tmp_path / "beam"), on_error="skip", **SMALL),
                          direct_mode="in_memory")
    assert got == ref and got["total_episodes"] == 2 and [s["episode"] for s in got["skipped"]] == ["1"]
    assert got["skipped"][0]["type"] == "NonFiniteValueError" and "key=action" in got["skipped"][0]["error"]
    side = json.loads((tmp_path / "beam" / "shard-00000.json").read_text())   # episodes 0, 1 -> shard 0
    assert [e["episode_id"] for e in side["episodes"]] == ["0"] and side["skipped"] == got["skipped"]
    _assert_same_files(_without_norm_stats(_files(tmp_path / "beam")), _files(tmp_path / "ref"))
    stats = _check_norm_stats(tmp_path / "beam", tmp_path / "ref")
    assert stats["metadata_by_tag"]["so100_so101_molmoact2"]["state_stats"]["count"] == got["total_frames"]


def test_corrupt_rlds_record_is_skipped_and_named(tmp_path, droid_rlds):
    rlds = tmp_path / "rlds"
    shutil.copytree(droid_rlds, rlds)
    shard = sorted(rlds.glob("*.tfrecord-*"))[0]
    data = bytearray(shard.read_bytes())
    data[-50] ^= 0xFF  # inside the last record of the file: its CRC fails, the records before it still read
    shard.write_bytes(bytes(data))
    ref = convert(ConvertOptions(f"rlds:{rlds}", "droid", str(tmp_path / "ref"), on_error="skip", **SMALL))
    got = bc.beam_convert(ConvertOptions(f"rlds:{rlds}", "droid", str(tmp_path / "beam"), on_error="skip", **SMALL),
                          direct_mode="in_memory")
    assert got == ref and got["total_episodes"] == 3 and len(got["skipped"]) == 1
    assert got["skipped"][0]["type"] == "CorruptRecordError" and shard.name in got["skipped"][0]["error"]
    _assert_same_files(_without_norm_stats(_files(tmp_path / "beam")), _files(tmp_path / "ref"))
    _check_norm_stats(tmp_path / "beam", tmp_path / "ref")


def test_rerun_resumes_complete_shards_only(yam_v3, tmp_path, monkeypatch):
    """A directory convert.py left unfinished (shard 1 had no sidecar yet): the Beam run reads only shard 1's
    episodes, leaves the complete shards untouched, and ends with convert.py's full output."""
    src, out = f"lerobot:{yam_v3}", tmp_path / "s"
    convert(ConvertOptions(src, "yam", str(out), **SMALL))
    want = _files(out)
    (out / "shard-00001.json").unlink()              # as if killed before shard 1 finished
    (out / "shard-00001-of-00003.array_record.tmp").write_bytes(b"half")
    (out / "index.json").unlink()
    stamps = {f: (out / f).stat().st_mtime_ns for f in ("shard-00000-of-00003.array_record", "shard-00002.json")}
    read, load_group = [], LeRobotSource.load_group

    def counting(self, ids):  # in_memory runs the DoFns in this process, so the patched reader is the one used
        read.extend(ids)
        return load_group(self, ids)
    monkeypatch.setattr(LeRobotSource, "load_group", counting)
    index = bc.beam_convert(ConvertOptions(src, "yam", str(out), **SMALL), direct_mode="in_memory")
    assert read == [2, 3] and index["resumed_shards"] == 2 and index["total_episodes"] == 6
    assert not list(out.glob("*.tmp"))
    assert {f: (out / f).stat().st_mtime_ns for f in stamps} == stamps
    got = _files(out)
    assert json.loads(got.pop("index.json"))["resumed_shards"] == 2
    assert json.loads(want.pop("index.json"))["resumed_shards"] == 0
    _assert_same_files(_without_norm_stats(got), want)
    first = json.loads((out / "norm_stats.json").read_text())
    read.clear()
    again = bc.beam_convert(ConvertOptions(src, "yam", str(out), **SMALL), direct_mode="in_memory")
    assert read == [] and again["resumed_shards"] == 3           # all done: nothing is read, same stats
    assert json.loads((out / "norm_stats.json").read_text()) == first


def test_cli_runner_direct_and_install_hint(tmp_path, droid_rlds, capsys, monkeypatch):
    args = ["convert", "--source", f"rlds:{droid_rlds}", "--embodiment", "droid", "--image-size", "32"]
    assert cli.main(args + ["--out", str(tmp_path / "b"), "--runner", "direct",
                            "--beam-options=--direct_running_mode=in_memory"]) == 0
    out = capsys.readouterr().out
    assert "4 episodes" in out and f"wrote {tmp_path / 'b' / 'norm_stats.json'}" in out
    assert cli.main(args + ["--out", str(tmp_path / "w"), "--beam-options=--direct_num_workers=2"]) == 2
    assert "--beam-options only applies with --runner" in capsys.readouterr().err
    assert not (tmp_path / "w" / "index.json").exists()
    opts = bc.pipeline_options("dataflow", 4, "--project=p --region=r").get_all_options()
    assert opts["runner"] == "DataflowRunner" and opts["project"] == "p" and opts["direct_num_workers"] == 1
    assert bc.pipeline_options("direct", 3).get_all_options()["direct_num_workers"] == 3
    with pytest.raises(ValueError, match="runner must be one of"):
        bc.pipeline_options("local")
    monkeypatch.setitem(sys.modules, "apache_beam", None)   # as if apache-beam were not installed
    monkeypatch.delitem(sys.modules, "data_pipelines.beam_convert")
    assert cli.main(args + ["--out", str(tmp_path / "x"), "--runner", "direct"]) == 2
    assert 'pip install -e ".[beam]"' in capsys.readouterr().err
