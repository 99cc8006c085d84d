"""Build small real-format fixture datasets (LeRobot v2.1/v3.0, DROID RLDS) from the simulator."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from data_pipelines.embodiments import EMBODIMENTS, SO100_OLD, Embodiment, get_embodiment
from data_pipelines.formats.droid_rlds import write_droid_rlds
from data_pipelines.formats.lerobot_writer import WriteOptions, write_lerobot
from data_pipelines.synthetic import simulate_episode

FORMATS = ("lerobot-v2.1", "lerobot-v3.0", "droid-rlds")


def _builtin(embodiment) -> str | None:
    """The built-in name `embodiment` names, or None for an embodiment file / object (no built-in quirks then)."""
    return embodiment if isinstance(embodiment, str) and embodiment in EMBODIMENTS else None


def fixture_embodiment(embodiment, fmt: str, so100_naming: str | None = None) -> Embodiment:
    """SO100 in v2.1 uses the old generation (main_* names, laptop/phone) unless told otherwise. `embodiment`: a
    built-in name, the path of an embodiment file, or an Embodiment."""
    emb = get_embodiment(embodiment)
    if _builtin(embodiment) == "so100":
        naming = so100_naming or ("old" if fmt == "lerobot-v2.1" else "new")
        if naming not in ("old", "new"):
            raise ValueError(f"so100_naming must be 'old' or 'new', got {naming!r}")
        emb = SO100_OLD if naming == "old" else emb
    return emb


def make_fixture(fmt: str, embodiment, out: str | Path, *, episodes: int = 6, seed: int = 0,
                 codec: str | None = None, dirty: tuple[str, ...] = (), so100_naming: str | None = None,
                 image_hw: tuple[int, int] | None = None, length: int | None = None,
                 **write_options) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    emb = fixture_embodiment(embodiment, fmt, so100_naming)
    builtin = _builtin(embodiment)
    if fmt == "droid-rlds" and builtin != "droid":
        raise ValueError("--format droid-rlds only exists for --embodiment droid")
    eps = [simulate_episode(emb, i, seed=seed, image_hw=image_hw, length=length) for i in range(episodes)]
    if fmt == "droid-rlds":
        return write_droid_rlds(out, eps, fps=emb.fps)
    opts = WriteOptions(version=fmt.split("-")[1], codec=codec or ("h264" if builtin == "yam" else "av1"),
                        dirty=tuple(dirty) + (("names_dict",) if builtin == "droid" else ()),
                        tasks_annotated=builtin == "yam")
    if opts.version == "v3.0":  # small caps so fixtures exercise multi-episode files and rollover
        opts = dataclasses.replace(opts, chunks_size=2, episodes_per_data_file=3,
                                   episodes_per_video_file=(2, 3, 4))
    opts = dataclasses.replace(opts, **write_options)
    return write_lerobot(out, emb, eps, opts)
