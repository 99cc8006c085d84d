"""mp4 writing and reading with PyAV (AV1 via libsvtav1/libdav1d, h264 via libx264).

Writing follows LeRobot: each episode is encoded as its own clip (yuv420p, g=2) and clips are
stream-copied one after another into a shared mp4 (v3.0); an episode's `from_timestamp` is the
summed duration of the clips before it. Reading follows LeRobot's PyAV path: seek to the
keyframe before the first query, decode forward, take the nearest frame per query and fail when
it is further than `tolerance_s` away.
"""
from __future__ import annotations

import io
import os
from collections import OrderedDict
from pathlib import Path

import av
import numpy as np

from data_pipelines.errors import FrameTimestampError, MissingVideoError, VideoDecodeError

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per encoder otherwise
av.logging.set_level(av.logging.FATAL)

ENCODERS = {"av1": "libsvtav1", "h264": "libx264"}


def encode_clip(frames: np.ndarray, fps: int, codec: str = "av1", crf: int = 30) -> bytes:
    """Encode [T,H,W,3] uint8 RGB into an in-memory mp4 clip."""
    if codec not in ENCODERS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(ENCODERS)}")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream(ENCODERS[codec], rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "2", "crf": str(crf)}
        if codec == "av1":
            stream.options["preset"] = "12"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def concat_clips(clips: list[bytes], path: str | Path) -> list[tuple[float, float]]:
    """Stream-copy clips into one mp4 (faststart). Returns (from_ts, to_ts) per clip in seconds."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    spans, offset, out_stream = [], 0, None
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        for clip in clips:
            with av.open(io.BytesIO(clip)) as src:
                in_stream = src.streams.video[0]
                if out_stream is None:
                    out_stream = out.add_stream_from_template(in_stream, opaque=True)
                    out_stream.time_base = in_stream.time_base
                tb = in_stream.time_base
                for packet in src.demux(in_stream):
                    if packet.dts is None:
                        continue
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = out_stream
                    out.mux(packet)
                duration = in_stream.duration
                spans.append((float(offset * tb), float((offset + duration) * tb)))
                offset += duration
    return spans


def write_video(frames: np.ndarray, path: str | Path, fps: int, codec: str = "av1") -> float:
    """Write one clip as its own mp4; returns its duration in seconds."""
    return concat_clips([encode_clip(frames, fps, codec)], path)[0][1]


def probe(path: str | Path) -> dict:
    with _open(path) as c:
        s = c.streams.video[0]
        return {"codec": s.codec_context.name, "height": s.height, "width": s.width,
                "fps": float(s.average_rate or 0), "frames": s.frames,
                "duration_s": float(s.duration * s.time_base) if s.duration else None}


def _open(path, episode=None):
    if not Path(path).exists():
        raise MissingVideoError("video file does not exist", path=path, episode=episode)
    try:
        return av.open(str(path))
    except av.FFmpegError as e:
        raise VideoDecodeError(f"cannot open video: {e}", path=path, episode=episode) from e


def decode_span(path, from_ts: float, to_ts: float, *, episode=None, key=None) -> tuple[np.ndarray, np.ndarray]:
    """Decode every frame with from_ts - eps <= pts < to_ts - eps. Returns (pts_s [N], rgb [N,H,W,3])."""
    eps = 1e-6
    times, frames = [], []
    with _open(path, episode) as c:
        s = c.streams.video[0]
        try:
            if from_ts > 0:
                c.seek(int(from_ts / s.time_base), stream=s, backward=True, any_frame=False)
            for frame in c.decode(s):
                t = float(frame.pts * s.time_base)
                if t >= to_ts - eps:
                    break
                if t >= from_ts - eps:
                    times.append(t)
                    frames.append(frame.to_ndarray(format="rgb24"))
        except av.FFmpegError as e:
            raise VideoDecodeError(f"decoding failed after {len(frames)} frames: {e}", path=path,
                                   episode=episode, key=key) from e
    if not frames:
        return np.zeros((0,)), np.zeros((0, s.height, s.width, 3), np.uint8)
    return np.array(times), np.stack(frames)


class VideoReader:
    """Frame lookup by timestamp with LeRobot's tolerance rule; keeps a few containers open."""

    def __init__(self, tolerance_s: float = 1e-4, max_open: int = 8):
        self.tolerance_s = tolerance_s
        self.max_open = max_open
        self._open_files: OrderedDict[str, av.container.InputContainer] = OrderedDict()

    def _container(self, path, episode):
        key = str(path)
        if key in self._open_files:
            self._open_files.move_to_end(key)
            return self._open_files[key]
        c = _open(path, episode)
        self._open_files[key] = c
        if len(self._open_files) > self.max_open:
            self._open_files.popitem(last=False)[1].close()
        return c

    def frames_at(self, path, timestamps, *, episode=None, key=None) -> np.ndarray:
        """Return [N,H,W,3] uint8, one frame per query timestamp (seconds in this file)."""
        query = np.asarray(timestamps, np.float64).reshape(-1)
        c = self._container(path, episode)
        s = c.streams.video[0]
        frame_s = 1.0 / float(s.average_rate or 30)
        first, last = query.min(), query.max()
        times, frames = [], []
        try:
            c.seek(max(0, int((first - frame_s) / s.time_base)), stream=s, backward=True, any_frame=False)
            for frame in c.decode(s):
                t = float(frame.pts * s.time_base)
                if t >= first - frame_s - self.tolerance_s:
                    times.append(t)
                    frames.append(frame)
                if t >= last:
                    break
        except av.FFmpegError as e:
            self._open_files.pop(str(path), None)
            raise VideoDecodeError(f"decoding failed near t={first:.4f}s: {e}", path=path, episode=episode,
                                   key=key) from e
        if not times:
            raise FrameTimestampError(f"no frame decoded at or after t={first:.4f}s", path=path,
                                      episode=episode, key=key)
        times = np.array(times)
        dist = np.abs(query[:, None] - times[None, :])
        nearest = dist.argmin(1)
        worst = dist[np.arange(len(query)), nearest]
        bad = worst > self.tolerance_s
        if bad.any():
            i = int(np.argmax(bad))
            raise FrameTimestampError(
                f"query timestamp {query[i]:.6f}s is {worst[i]:.6f}s from the nearest frame "
                f"({times[nearest[i]]:.6f}s), tolerance_s={self.tolerance_s}", path=path, episode=episode, key=key)
        return np.stack([frames[j].to_ndarray(format="rgb24") for j in nearest])

    def close(self):
        while self._open_files:
            self._open_files.popitem()[1].close()
