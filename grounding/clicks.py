"""What a user gives SAM besides a detector's box: clicked points (keep / remove) and hand-drawn boxes, checked once
at the pipeline's edge. Coordinates are pixels of the image the models saw (`LoadedImage.size`), as the result's
boxes are."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from grounding.errors import InvalidEditError

MAX_POINTS = 32  # per object; SAM was trained with a handful of clicks, and each adds decoder tokens
MIN_BOX_SIDE = 1.0  # px


def check_points(points: Any, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """[[x, y, 1 | 0], ...] (1 = part of the object, 0 = not) inside an image of `size` (W, H) -> (xy [P, 2]
    float32, labels [P] int64); InvalidEditError saying which point is wrong and why."""
    if points is None:
        points = []
    if not isinstance(points, (list, tuple, np.ndarray)):
        raise InvalidEditError(f"points must be a list of [x, y, 1 or 0], got {type(points).__name__}.")
    if len(points) > MAX_POINTS:
        raise InvalidEditError(f"{len(points)} points for one object; at most {MAX_POINTS} are used (SAM needs a few).")
    width, height = size
    xy, labels = np.zeros((len(points), 2), np.float32), np.zeros(len(points), np.int64)
    for i, point in enumerate(points):
        if not isinstance(point, (list, tuple, np.ndarray)) or len(point) != 3:
            raise InvalidEditError(f"point {i + 1} must be [x, y, 1 or 0] (1 keeps, 0 removes), got {_short(point)}.")
        x, y, label = (_number(v, f"point {i + 1}") for v in point)
        if label not in (0, 1):
            raise InvalidEditError(f"point {i + 1}: the label must be 1 (part of the object) or 0 (not), got {label:g}.")
        if not (0 <= x < width and 0 <= y < height):
            raise InvalidEditError(f"point {i + 1} ({x:g}, {y:g}) is outside the {width}×{height} image.")
        xy[i], labels[i] = (x, y), int(label)
    return xy, labels


def check_box(box: Any, size: tuple[int, int]) -> np.ndarray:
    """[x1, y1, x2, y2] in pixels (corners in any order; clipped to the image of `size` (W, H)) -> float32 [4];
    InvalidEditError for anything else or a box smaller than a pixel."""
    if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4:
        raise InvalidEditError(f"a box must be [x1, y1, x2, y2] in pixels, got {_short(box)}.")
    x1, y1, x2, y2 = (_number(v, "the box") for v in box)
    width, height = size
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
        raise InvalidEditError(f"the box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has no area inside the {width}×{height} image.")
    return np.array([x1, y1, x2, y2], np.float32)


def points_key(xy: np.ndarray, labels: np.ndarray) -> tuple[tuple[float, float, int], ...]:
    """Points as a hashable cache key (1/100 px, like `cache.box_key`)."""
    return tuple((round(float(x), 2), round(float(y), 2), int(label)) for (x, y), label in zip(xy, labels))


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise InvalidEditError(f"{what}: coordinates and labels must be finite numbers, got {_short(value)}.")
    return float(value)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"

