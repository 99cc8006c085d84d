"""`molmoact2-data convert --runner direct|dataflow|flink|spark`: convert.py's conversion as an Apache Beam pipeline.

Same input, same output, whatever the runner and the number of workers: the shards, sidecars and index.json that
convert.py writes (byte for byte on the fixtures; the .npz files hold the same arrays), plus OUT/norm_stats.json with
the numbers of `molmoact2-data stats OUT`. Stages:

  ListEpisodes  (shard k, position j, id) from the source's own grouping, so episode -> shard is convert.py's;
                an RLDS id is a whole tfrecord file (its episodes are only found by reading it)
  Spread        Reshuffle, so the ids fan out over the workers instead of staying in Create's one bundle
  ReadEncode    read and decode one id, check each episode (skip or raise as convert.py), resize and encode the
                frames and chunk the actions into records
  GroupByShard  a shard's episodes meet; WriteShard writes them in (j, order within the id) order with
                convert.write_shard (.array_record renamed into place, .npz, sidecar last)
  NormStats     per-shard partials -> beam.CombineFn -> stats.py -> norm_stats.json
  WriteIndex    index.json from the shard summaries in shard order

A shard that is already complete (convert.py's rule) is not read again: its sidecar and .npz feed the index and
the stats. The options are checked and recorded exactly as convert.py does (open_conversion: convert_options.json,
--overwrite), so either converter refuses, or resumes, what the other started. The readers and the shard writer use POSIX files, so the source and OUT must be paths that the launcher
and every worker see alike (local disk for DirectRunner; a shared mount on a cluster).
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np

from data_pipelines.convert import (ConvertOptions, ShardEpisode, build_index, check_episode, frame_records,
                                    interrupted, open_conversion, resumed_summary, shard_complete, write_index,
                                    write_shard)
from data_pipelines import errors
from data_pipelines.embodiments import get_embodiment
from data_pipelines.errors import DataError
from data_pipelines.formats.depth_codes import DepthCodes
from data_pipelines.norm_stats import NORM_STATS_FILE
from data_pipelines.shards import sidecar_path, tag_metadata
from data_pipelines.sources import open_source
from data_pipelines.stats import tag_entries  # stats.py's statistics, from arrays instead of a directory

try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
except ImportError as e:  # an optional extra: say how to get it instead of a bare ModuleNotFoundError
    raise ImportError(f"the Beam converter (molmoact2-data convert --runner) needs Apache Beam ({e}); install it "
                      'with: pip install -e ".[beam]"') from e

# the last line a worker's DataError leaves in the traceback text that a runner hands back
_WORKER_DATA_ERROR = re.compile(r"^data_pipelines\.errors\.(\w+): (.+)$", re.M)
RUNNERS = {"direct": "DirectRunner", "dataflow": "DataflowRunner", "flink": "FlinkRunner", "spark": "SparkRunner"}
DIRECT_MODES = ("in_memory", "multi_threading", "multi_processing")


def pipeline_options(runner: str, workers: int = 1, beam_options=None,
                     direct_mode: str = "multi_processing") -> PipelineOptions:
    """`runner` in RUNNERS; with direct, `workers` is direct_num_workers. `beam_options` (a string or a list) come
    last, so they override ours (e.g. --direct_running_mode=in_memory)."""
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {sorted(RUNNERS)}, got {runner!r}")
    if direct_mode not in DIRECT_MODES:
        raise ValueError(f"direct_mode must be one of {DIRECT_MODES}, got {direct_mode!r}")
    args = [f"--runner={RUNNERS[runner]}"]
    if runner == "direct":
        # in_memory runs one worker whatever it is told (and warns when told more)
        workers = 1 if direct_mode == "in_memory" else max(1, int(workers))
        args += [f"--direct_running_mode={direct_mode}", f"--direct_num_workers={workers}"]
    args += shlex.split(beam_options) if isinstance(beam_options, str) else list(beam_options or ())
    return PipelineOptions(args)


class ReadEncode(beam.DoFn):
    """(k, j, id) -> (k, (j, m, ShardEpisode or skip entry)) for the m-th episode that reading `id` gives."""

    def __init__(self, opts: ConvertOptions):
        self.opts = opts

    def setup(self):  # once per worker: opening a source reads its metadata
        self.emb = get_embodiment(self.opts.embodiment)
        self.horizon = self.opts.horizon or self.emb.action_horizon
        self.src = open_source(self.opts.source, self.emb, self.opts.tolerance_s)
        self.depth_codes = DepthCodes(self.opts.depth_codes) if self.opts.depth_codes else None

    def process(self, element):
        k, j, ep_ref = element
        for m, (ep_id, ep) in enumerate(self.src.load_group([ep_ref])):
            depth, part = check_episode(self.src, ep_id, ep, self.depth_codes, self.opts.on_error)
            if part is None:  # not skipped: the records travel to the shard's writer, encoded
                records = list(frame_records(ep, self.emb, self.horizon, self.emb.tag, ep_id, self.opts, depth))
                part = ShardEpisode(str(ep_id), ep.task, ep.states, ep.actions, records)
            yield k, (j, m, part)


class WriteShard(beam.DoFn):
    """(k, parts) -> (k, shard summary), after writing shard k with convert.py's writer."""

    def __init__(self, out: str, n: int, dim: int):
        self.out, self.n, self.dim = out, n, dim

    def process(self, element):
        k, parts = element
        ordered = sorted((p for p in parts if p is not None), key=lambda p: p[:2])  # None: the shard's marker
        yield k, write_shard(Path(self.out), k, self.n, self.dim, (p[2] for p in ordered))


def finished_shard(k: int, out: str):
    return k, resumed_summary(Path(out), k)


def shard_partial(shard: tuple, out: str):
    """The norm-stat partial of one shard: (k, states, actions, episode lengths), read back from its .npz exactly
    as `molmoact2-data stats` reads it."""
    k, summary = shard
    path = sidecar_path(out, summary["shard"], ".npz")
    if not path.exists():
        raise DataError("shard stats sidecar missing (conversion unfinished?)", path=path)
    with np.load(path) as z:
        return k, z["state"], z["action"], [int(e["num_frames"]) for e in summary["episodes"]]


class NormStatsCombineFn(beam.CombineFn):
    """Shard partials -> norm_stats.json of the shard directory (None when it holds no frame).

    The per-directory quantiles are exact (stats.py), which no fixed-size summary of a shard can merge into, so a
    partial carries the shard's raw state/action arrays (the .npz: a few floats per frame, no images), keyed by
    shard so the merged arrays are in shard order whatever order the runner merges in; stats.py computes the
    statistics from them once."""

    def __init__(self, repo: str, info: dict, norm_mode: str):
        self.repo, self.info, self.norm_mode = repo, info, norm_mode

    def create_accumulator(self):
        return {}

    def add_input(self, acc, partial):
        acc[partial[0]] = partial[1:]
        return acc

    def merge_accumulators(self, accumulators):
        merged = {}
        for acc in accumulators:
            merged.update(acc)
        return merged

    def extract_output(self, acc):
        parts = [acc[k] for k in sorted(acc)]
        lengths = [n for p in parts for n in p[2]]
        if not sum(lengths):
            return None
        state, action = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        for name, arr in (("state", state), ("action", action)):
            if not np.isfinite(arr).all():
                raise DataError("NaN/inf in converted data", path=self.repo, key=name)
        return tag_entries([(Path(self.repo), self.info, state, action, lengths)], self.norm_mode)


def write_norm_stats_file(stats, out: str):
    path = Path(out) / NORM_STATS_FILE
    if stats is None:  # no frame converted: no stats, and none left over from an earlier run
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stats, indent=2))
    tmp.replace(path)


def write_index_file(shards: list, opts: ConvertOptions, camera_keys, state_names, fps, n: int, action_names=None):
    if len(shards) != n:
        raise RuntimeError(f"the pipeline returned {len(shards)} shard summaries for {n} shards")
    results = [s for _, s in sorted(shards, key=lambda s: s[0])]
    index = build_index(opts, camera_keys, state_names, fps, results, action_names)
    write_index(Path(opts.out), index)


def worker_data_error(e: Exception) -> DataError | None:
    """The DataError behind a runner's failure. In one process (in_memory) it is raised as is; from worker
    processes (multi_processing, a cluster) it comes back as a RuntimeError holding the worker's traceback as text,
    so it is rebuilt from the text, with its type, to reach the caller (the CLI: one line, exit 2) the same way."""
    if isinstance(e, DataError):
        return e
    found = _WORKER_DATA_ERROR.findall(str(e))
    if not found:
        return None
    name, message = found[-1]
    cls = getattr(errors, name, None)
    return (cls if isinstance(cls, type) and issubclass(cls, DataError) else DataError)(message)


def beam_convert(opts: ConvertOptions, runner: str = "direct", beam_options=None,
                 direct_mode: str = "multi_processing", norm_mode: str = "q01_q99") -> dict:
    """Run the conversion on `runner` (see RUNNERS; opts.workers is DirectRunner's direct_num_workers) and return
    index.json; OUT/norm_stats.json holds the stats (absent when no frame was converted)."""
    emb, out, src, groups = open_conversion(opts)
    n = len(groups)
    todo = [k for k in range(n) if not shard_complete(out, k, n)]
    done = sorted(set(range(n)) - set(todo))
    # what stats.py reads from index.json, through JSON as it would be (tuples become lists)
    info = json.loads(json.dumps({"tag": emb.tag, "tag_metadata": tag_metadata(emb, opts.horizon,
                                                                                opts.delta_action_dims,
                                                                                src.camera_keys),
                                  "state_names": src.state_names, "action_names": src.action_names,
                                  "source": opts.source}))
    try:
        with beam.Pipeline(options=pipeline_options(runner, opts.workers, beam_options, direct_mode)) as p:
            episodes = (p | "ListEpisodes" >> beam.Create([(k, j, ep) for k in todo
                                                           for j, ep in enumerate(groups[k])])
                        | "Spread" >> beam.Reshuffle()
                        | "ReadEncode" >> beam.ParDo(ReadEncode(opts)))
            # one marker per shard to write, so a shard whose ids hold no episode is still written (empty)
            markers = p | "ListShards" >> beam.Create([(k, None) for k in todo])
            written = ((episodes, markers) | "WithMarkers" >> beam.Flatten()
                       | "GroupByShard" >> beam.GroupByKey()
                       | "WriteShard" >> beam.ParDo(WriteShard(str(out), n, (emb.state_dim, emb.action_dim))))
            finished = (p | "ListFinished" >> beam.Create(done)
                        | "ReadFinished" >> beam.Map(finished_shard, str(out)))
            shards = (written, finished) | "AllShards" >> beam.Flatten()
            _ = (shards | "ShardPartials" >> beam.Map(shard_partial, str(out))
                 | "NormStats" >> beam.CombineGlobally(NormStatsCombineFn(str(out), info, norm_mode))
                 | "WriteNormStats" >> beam.Map(write_norm_stats_file, str(out)))
            _ = (shards | "CollectShards" >> beam.combiners.ToList()
                 | "WriteIndex" >> beam.Map(write_index_file, opts, list(src.camera_keys), list(src.state_names),
                                            src.fps, n, list(src.action_names)))
    except KeyboardInterrupt:  # as convert.py: unfinished shards' files removed, one line on how to resume
        raise interrupted(out, n) from None
    except Exception as e:  # noqa: BLE001 - only a DataError is rebuilt; anything else goes on as it came
        err = worker_data_error(e)
        if err is None or err is e:
            raise
        raise err from e
    return json.loads((out / "index.json").read_text())
