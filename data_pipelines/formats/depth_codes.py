"""MolmoThink depth-code companion data: per frame `depth_buffer_codes` (100 VQ-VAE codes of the first
camera's depth map, row-major 10x10) and `depth_updated_mask` (100 bools, cells changed since the previous frame).

Layout read here: parquet files anywhere under `ROOT/data/` (the released `<repo>_depth` LeRobot datasets, one
file per episode in v2.1 chunk folders or many episodes per file in v3.0, and what `molmoact2-depth-codes`
writes) with the columns `episode_index`, `frame_index`, `depth_buffer_codes`, and optionally
`depth_updated_mask`. Episodes are matched to the source dataset by `episode_index`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipelines.errors import DataError, IncompleteDatasetError, ShapeMismatchError

NUM_CELLS = 100
NUM_CODES = 128
CODES_KEY, MASK_KEY = "depth_buffer_codes", "depth_updated_mask"


class DepthCodes:
    def __init__(self, root):
        self.root = Path(root)
        files = sorted((self.root / "data").glob("**/*.parquet"))
        if not files:
            raise IncompleteDatasetError("no depth-code parquet files under data/", path=self.root / "data")
        self.files_of: dict[int, list[Path]] = {}
        for f in files:   # only the episode column is read up front
            try:
                eps = pq.read_table(f, columns=["episode_index"]).column(0).to_numpy()
            except (pa.ArrowInvalid, KeyError, OSError) as e:
                raise DataError(f"unreadable depth-code parquet (needs an episode_index column): {e}", path=f,
                                key="episode_index") from None
            for ep in np.unique(eps).tolist():
                self.files_of.setdefault(int(ep), []).append(f)

    def episodes(self) -> list[int]:
        return sorted(self.files_of)

    def episode(self, episode, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(codes int16 [length, 100], updated mask bool [length, 100]) of one episode of `length` frames;
        a DataError naming the file and episode when the episode is absent, has other frames or bad codes."""
        try:
            ep = int(episode)
        except (TypeError, ValueError):
            raise DataError("depth codes are matched by episode_index; this source's episode id is not an "
                            "integer", path=self.root, episode=episode, key="episode_index") from None
        files = self.files_of.get(ep)
        if not files:
            raise DataError(f"no depth codes for this episode ({len(self.files_of)} episodes have codes)",
                            path=self.root / "data", episode=ep, key=CODES_KEY)
        parts = []
        for f in files:   # only this episode's rows: a v3.0 file holds many episodes
            names = pq.read_schema(f).names
            missing = [k for k in ("frame_index", CODES_KEY) if k not in names]
            if missing:
                raise DataError(f"depth-code file lacks column(s) {missing}", path=f, episode=ep, key=missing[0])
            parts.append(pq.read_table(f, filters=[("episode_index", "=", ep)]))
        t = pa.concat_tables(parts, promote_options="default")
        t = t.take(pc.sort_indices(t, [("frame_index", "ascending")]))
        frames = t["frame_index"].to_numpy()
        where = files[0] if len(files) == 1 else self.root / "data"
        if len(frames) != length or not np.array_equal(frames, np.arange(length)):
            raise ShapeMismatchError(f"depth codes cover frames {frames[:3].tolist()}..{frames[-3:].tolist()} "
                                     f"({len(frames)} rows); the episode has frames 0..{length - 1}",
                                     path=where, episode=ep, key="frame_index")
        codes = _list_column(t, CODES_KEY, where, ep)
        if codes.min(initial=0) < 0 or codes.max(initial=0) >= NUM_CODES:
            raise DataError(f"depth codes outside [0, {NUM_CODES}): [{codes.min()}, {codes.max()}]", path=where,
                            episode=ep, key=CODES_KEY)
        mask = _list_column(t, MASK_KEY, where, ep).astype(bool) if MASK_KEY in t.column_names else \
            np.ones(codes.shape, bool)
        return codes.astype(np.int16), mask


def _list_column(t: pa.Table, key: str, path, ep) -> np.ndarray:
    rows = t[key].to_pylist()
    bad = next((i for i, r in enumerate(rows) if r is None or len(r) != NUM_CELLS), None)
    if bad is not None:
        n = None if rows[bad] is None else len(rows[bad])
        raise ShapeMismatchError(f"frame {bad}: {key} has {n} entries, expected {NUM_CELLS}", path=path, episode=ep,
                                 key=key)
    return np.asarray(rows).reshape(len(rows), NUM_CELLS)
