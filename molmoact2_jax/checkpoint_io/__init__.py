"""Checkpoint I/O shared by training, conversion and inference: self-describing params checkpoints
(`params.py`) and a streaming Orbax writer for trees too large to hold in memory (`streaming.py`)."""
