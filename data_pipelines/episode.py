"""`Episode`: one robot episode in memory, the record every dataset writer takes (formats/lerobot_writer.py,
formats/droid_rlds.py) and every episode maker gives (synthetic.py's toy arm, molmoact2-sim record)."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Episode:
    states: np.ndarray             # [T, D] float32, physical units
    actions: np.ndarray            # [T, A] float32, absolute joint targets (A: the action dim)
    images: dict[str, np.ndarray]  # camera -> [T, H, W, 3] uint8
    task: str
    annotated_task: str

    @property
    def length(self) -> int:
        return len(self.states)
