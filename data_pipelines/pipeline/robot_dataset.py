"""Grain pipeline over converted ArrayRecord shards: per-tag sources, weighted mixture, process
sharding, batching, optional packing, worker processes, checkpointable iterator.

    ds = build_robot_dataset(PipelineConfig(sources=[Source("shards/yam", 0.3), ...],
                                            norm_stats="norm_stats.json", batch_size=32))
    it = iter(ds); batch = next(it); state = it.get_state(); ...; it.set_state(state)

Order: every source is shuffled (seeded) and repeated, the sources are mixed by weight (Grain's
deterministic weighted interleave), the mixed sequence is sliced by process (`[i::n]`, so
processes see disjoint elements whose union is the whole stream), then mapped, batched and
prefetched. Everything is a function of (seed, index), so a run is reproducible and a restored
iterator continues exactly where it stopped.
"""
from __future__ import annotations

import bisect
import dataclasses
from pathlib import Path

import grain
import jax
import numpy as np
from absl import flags

from data_pipelines.errors import DataError
from data_pipelines.norm_stats import NormStats
from data_pipelines.pipeline.packing import PackIterDataset
from data_pipelines.pipeline.robot_transform import RobotTransform, RobotTransformConfig
from data_pipelines.shards import check_shard, corrupt_record_message, load_episodes, load_index
from data_pipelines.transforms import think_styles
from molmoact2_jax import storage


@dataclasses.dataclass(frozen=True)
class Source:
    shard_dir: str
    weight: float = 1.0
    tag: str = ""      # the norm tag its examples use (stats, tag id); "" = the shards' own (index.json `tag`)

    def norm_tag(self) -> str:
        return self.tag or load_index(self.shard_dir)["tag"]

    def __post_init__(self):
        if storage.is_remote(self.shard_dir):   # Grain's ArrayRecord reader opens local files only
            scheme, _, rest = str(self.shard_dir).partition("://")
            bucket, _, sub = rest.partition("/")
            raise ValueError(f"{self.shard_dir}: ArrayRecord shards are read through a mounted bucket, not {scheme}:// "
                             f"(e.g. gcsfuse --implicit-dirs {bucket} /mnt/{bucket}, then pass "
                             f"/mnt/{bucket}/{sub}; launch/tpu_pod.sh mounts it with DATA_BUCKET={bucket})")


@dataclasses.dataclass
class PipelineConfig:
    sources: list[Source]
    norm_stats: object                     # path to norm_stats.json, its parsed dict or a NormStats
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None          # None: repeat forever (mixtures need it)
    shard_index: int | None = None         # None: jax.process_index()
    shard_count: int | None = None         # None: jax.process_count()
    worker_count: int = 0                  # >0: Grain worker processes (mp_prefetch)
    read_threads: int = 4
    transform: RobotTransformConfig = dataclasses.field(default_factory=RobotTransformConfig)
    drop_remainder: bool = True
    pack: object | None = None             # a packing.PackConfig, applied before batching
    model_inputs: object | None = None     # a callable example -> example (tokenize, patchify), after transform


def _shard_options(cfg: PipelineConfig) -> tuple[int, int]:
    if cfg.shard_index is not None or cfg.shard_count is not None:
        if cfg.shard_index is None or cfg.shard_count is None:
            raise ValueError("PipelineConfig: set both shard_index and shard_count, or neither")
        idx, count = cfg.shard_index, cfg.shard_count
    else:
        idx, count = jax.process_index(), jax.process_count()
    if not 0 <= idx < count:
        raise ValueError(f"PipelineConfig: shard_index {idx} not in [0, {count})")
    return idx, count


class ShardSource:
    """Grain's ArrayRecordDataSource over one directory's shards, except that a record that does not read back (a
    Riegeli error, e.g. a bit flipped after the shard was written) is a DataError naming the shard file and the
    record, not a bare RuntimeError from a reader thread. Picklable (Grain worker processes)."""

    def __init__(self, paths: list[str], counts: list[int]):
        self.paths = list(paths)
        self.ends = [int(e) for e in np.cumsum(counts)]
        self._source = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index) -> bytes:
        try:
            return self._source[index]
        except Exception as e:  # noqa: BLE001 - array_record raises bare RuntimeErrors
            i = int(index)
            k = bisect.bisect_right(self.ends, i)
            if k >= len(self.paths):
                raise
            raise DataError(corrupt_record_message(Path(self.paths[k]), e, i - (self.ends[k - 1] if k else 0))) \
                from None

    def __repr__(self) -> str:
        return f"ShardSource({len(self.paths)} files, {len(self)} records)"


def source_dataset(shard_dir, tag_id: int, stats: NormStats, cfg: PipelineConfig, k: int,
                   tag: str = "") -> grain.MapDataset:
    index = load_index(shard_dir)
    tag = tag or index["tag"]
    if tag not in stats.tags:
        raise ValueError(f"{shard_dir}: tag {tag!r} not in norm_stats metadata_by_tag ({sorted(stats.tags)})")
    if think_styles.needs_depth(cfg.transform.style_probabilities) and not index.get("depth_codes"):
        first = next((e["episode_id"] for e in load_episodes(shard_dir)), None)
        raise DataError(f"the training styles {cfg.transform.style_probabilities} (robot_action, robot_depth, "
                        f"robot_depth_action) include depth styles, and tag {tag!r} was converted without depth "
                        f"codes: no episode has depth_buffer_codes, the first being episode {first}. Convert with "
                        f"molmoact2-data convert --depth-codes DIR (molmoact2-depth-codes writes DIR)",
                        path=Path(shard_dir) / "index.json", episode=first, key="depth_codes")
    shards = [s for s in index["shards"] if s["num_records"] > 0]
    for s in shards:  # a truncated or missing shard: a DataError naming it now, before anything compiles
        check_shard(shard_dir, s)
    ds = grain.MapDataset.source(ShardSource([str(Path(shard_dir) / s["file"]) for s in shards],
                                             [int(s["num_records"]) for s in shards]))
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed * 1000 + k)
    transform_cfg = dataclasses.replace(cfg.transform, norm_mode=stats.norm_mode, seed=cfg.seed)
    transform = RobotTransform(tag, tag_id, stats.tag(tag), index["camera_keys"], transform_cfg)
    ds = ds.repeat(cfg.num_epochs)
    return ds.random_map(transform, seed=cfg.seed * 1000 + 500 + k)


def build_map_dataset(cfg: PipelineConfig) -> grain.MapDataset:
    """The per-example MapDataset of this process (mixed, sharded, transformed; not batched)."""
    if not cfg.sources:
        raise ValueError("PipelineConfig.sources is empty")
    stats = NormStats.load(cfg.norm_stats)
    tags = sorted({s.norm_tag() for s in cfg.sources})
    parts = [source_dataset(s.shard_dir, tags.index(s.norm_tag()), stats, cfg, k, s.norm_tag())
             for k, s in enumerate(cfg.sources)]
    weights = [s.weight for s in cfg.sources]
    if any(w <= 0 for w in weights):
        raise ValueError(f"PipelineConfig.sources: weights must be > 0, got {weights}")
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)
    idx, count = _shard_options(cfg)
    ds = ds[idx::count]
    if cfg.model_inputs is not None:
        ds = ds.map(cfg.model_inputs)
    return ds


def build_robot_dataset(cfg: PipelineConfig) -> grain.IterDataset:
    ds = build_map_dataset(cfg)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.batch_size * 2))
    if cfg.pack is not None:
        it = PackIterDataset(it, cfg.pack)
    it = it.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
    if cfg.worker_count > 0:
        if not flags.FLAGS.is_parsed():  # Grain's worker setup reads absl flags; outside absl.app nobody parsed them
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
    return it


def tag_names(cfg: PipelineConfig) -> list[str]:
    """tag_id -> tag name, as used in batches."""
    return sorted({s.norm_tag() for s in cfg.sources})


def batch_fingerprint(batch: dict) -> list[tuple]:
    """(episode_id, frame_index) per example — identifies which frames a batch holds."""
    return list(zip(np.asarray(batch["episode_id"]).tolist(), np.asarray(batch["frame_index"]).tolist()))
