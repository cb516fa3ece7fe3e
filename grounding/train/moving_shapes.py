"""Moving shapes scenes as a video with its truth: the tracking tests' and benchmarks' footage.

Shapes of the training vocabulary glide on straight paths over a still textured background (the renderer of
`grounding.train.shapes`). The default cast of `moving_shapes`: a red circle and a blue square crossing the whole
video, a green star that enters from the right a third of the way in, and a yellow triangle that leaves through
the bottom edge before the middle. Each frame comes with every object's visible mask (by its cast name).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from grounding.train.shapes import COLOURS, shape_mask, textured_background


@dataclass(frozen=True)
class Glide:
    """A shape moving from `start` to `end` (centre, fractions of the frame side) between two frame fractions."""

    phrase: str  # "red circle"
    radius: float  # fraction of the frame side
    start: tuple[float, float]
    end: tuple[float, float]
    begin: float = 0.0  # fraction of the video when it starts moving (it waits at `start` before)
    finish: float = 1.0  # ... and when it arrives (it stays at `end` after)

    def centre(self, t: float) -> tuple[float, float]:
        u = min(1.0, max(0.0, (t - self.begin) / (self.finish - self.begin)))
        return self.start[0] + (self.end[0] - self.start[0]) * u, self.start[1] + (self.end[1] - self.start[1]) * u


CAST: tuple[Glide, ...] = (
    Glide("red circle", 0.11, (0.18, 0.25), (0.80, 0.30)),
    Glide("blue square", 0.10, (0.80, 0.78), (0.25, 0.65)),
    Glide("green star", 0.12, (1.25, 0.50), (0.62, 0.52), begin=0.3, finish=0.7),  # enters from the right
    Glide("yellow triangle", 0.10, (0.30, 0.55), (0.42, 1.30), begin=0.05, finish=0.4),  # leaves at the bottom
)


def moving_shapes(frames: int = 120, side: int = 256, seed: int = 0, cast: tuple[Glide, ...] = CAST
                  ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:  # fmt: skip
    """Frames [side, side, 3] uint8 RGB and, per frame, {phrase: visible mask [side, side] bool} of the objects
    in the picture (later cast members are drawn over earlier ones)."""
    background = textured_background(np.random.default_rng(seed), (side, side)).astype(np.float32)
    for index in range(frames):
        t = index / max(1, frames - 1)
        image = background.copy()
        visible: dict[str, np.ndarray] = {}
        for path in cast:
            cx, cy = path.centre(t)
            colour, shape = path.phrase.split()
            mask = shape_mask(shape, (side, side), cx * side, cy * side, path.radius * side, 0.3)
            visible = {name: m & ~mask for name, m in visible.items()}
            visible[path.phrase] = mask
            image = np.where(mask[..., None], np.array(COLOURS[colour], np.float32), image)
        picture = Image.fromarray(image.astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
        yield np.asarray(picture), {name: m for name, m in visible.items() if m.sum() >= 16}
