"""Progress bars that stay readable in a log file.

On a terminal, `progress_bar` is a plain tqdm bar. When its stream is not a TTY (a job log, `> run.log`,
`| tee`, CI), tqdm would redraw the bar with a carriage return on (nearly) every update, so a log collects one
multi-megabyte "line" per bar. There the bar is throttled instead: one line at the start, at most one line per
`log_interval_s` seconds (30 by default) while it runs and one at the end, each terminated by a newline so
`tail`/`grep` see separate lines.
"""
from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


class _LineWriter:
    """File wrapper for a non-TTY stream: tqdm's '\\r'-redraws become one newline-terminated line each."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, s: str) -> int:
        for piece in s.replace("\r", "\n").split("\n"):
            piece = piece.rstrip()
            if piece:
                self._stream.write(piece + "\n")
        return len(s)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):  # encoding etc. come from the wrapped stream
        return getattr(self._stream, name)


class ThrottledTqdm(tqdm):
    """set_postfix / set_description redraw only on the throttled schedule, not on every call."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=True):
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=False)

    def set_description_str(self, desc=None, refresh=True):
        super().set_description_str(desc, refresh=False)


def _is_primary_process() -> bool:
    import jax  # lazy: data_pipelines and evaluation use these bars without jax
    return jax.process_index() == 0


def progress_bar(iterable=None, *, total=None, desc: str | None = None, unit: str = "it", disable: bool = False,
                 primary_only: bool = False, file=None, log_interval_s: float = LOG_INTERVAL_S, **kwargs):
    """A tqdm bar (use it like `tqdm(...)`: as an iterator wrapper, or with update()/close()/`with`).

    disable: no output at all. primary_only: no output on JAX processes other than 0 (imports jax).
    file: the stream (default sys.stderr, as tqdm). log_interval_s: seconds between lines when that stream is
    not a TTY. Other keyword arguments go to tqdm unchanged (on a TTY; see below otherwise).
    """
    cls = tqdm
    stream = sys.stderr if file is None else file
    if primary_only and not disable:
        disable = not _is_primary_process()
    if not disable and not _is_tty(stream):
        # A time-based throttle: miniters=1 keeps tqdm's check "has log_interval_s passed?" on every update (one
        # clock read), and with a fixed miniters tqdm's monitor thread never forces extra redraws.
        kwargs.update(mininterval=log_interval_s, maxinterval=max(log_interval_s, 10.0), miniters=1)
        kwargs.pop("dynamic_ncols", None)  # there is no terminal width to follow
        stream = _LineWriter(stream)
        cls = ThrottledTqdm
    return cls(iterable, total=total, desc=desc, unit=unit, disable=disable, file=stream, **kwargs)
