"""Error types for the data pipelines.

Every error names where the bad input is (file, episode, key) so a user with
thousands of repos can find it without a debugger.
"""
from __future__ import annotations


class DataError(Exception):
    """Bad or unreadable input data. `str()` names file / episode / key when known."""

    def __init__(self, message: str, *, path=None, episode=None, key=None):
        self.path = None if path is None else str(path)
        self.episode = episode
        self.key = key
        where = []
        if path is not None:
            where.append(f"file={path}")
        if episode is not None:
            where.append(f"episode={episode}")
        if key is not None:
            where.append(f"key={key}")
        super().__init__(message + (f" [{', '.join(where)}]" if where else ""))


class CorruptRecordError(DataError):
    """TFRecord framing or CRC failure, or an undecodable protobuf payload."""


class TruncatedFileError(DataError):
    """A file ends before its format says it should (cut parquet/mp4/tfrecord)."""


class IncompleteDatasetError(DataError):
    """Dataset metadata is missing or the writer never finalized it."""


class MissingVideoError(DataError):
    """A camera's mp4 that the metadata promises does not exist."""


class VideoDecodeError(DataError):
    """The video decoder failed part-way (damaged or truncated mp4)."""


class FrameTimestampError(DataError):
    """A queried timestamp has no decoded frame within tolerance_s."""


class ShapeMismatchError(DataError):
    """An array does not have the shape the metadata or embodiment declares."""


class NonFiniteValueError(DataError):
    """NaN or inf in a state/action vector."""
