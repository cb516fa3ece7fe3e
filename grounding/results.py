"""Typed results shared by the detector, the pipeline and the UI."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections of one image, in the original image's pixel frame."""

    boxes: np.ndarray  # [N, 4] float32 xyxy pixels
    scores: np.ndarray  # [N] float32, max token probability of the box
    phrases: list[str]  # [N] the prompt phrase each box was found for

    def __len__(self) -> int:
        return len(self.phrases)

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), [])
