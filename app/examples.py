"""Example rows for the page: drawn scenes in assets/examples/ with prompts that name what is in them.

Two groups: scenes of the procedural shapes data (what the shipped demo models know: the page leads with them
in demo mode and opens on the first), and photo-like drawings for the real Grounding DINO + SAM.
"""
from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"

# image file, prompt, box threshold, text threshold
SHAPES_EXAMPLES: list[tuple[str, str, float, float]] = [
    # Scenes drawn by grounding.train.shapes; "blue star" is absent on purpose.
    ("shapes_scene_1.png", "red circle . yellow square . blue star", 0.35, 0.25),
    ("shapes_scene_2.png", "orange square . yellow triangle", 0.35, 0.25),
    ("shapes.png", "red circle . blue square . green triangle . yellow ball", 0.30, 0.25),
]
PHOTO_EXAMPLES: list[tuple[str, str, float, float]] = [
    ("house.png", "house . tree . sun . door . window . flower", 0.30, 0.25),
    ("fruit.png", "apple . orange . bowl", 0.35, 0.25),
]
EXAMPLES = PHOTO_EXAMPLES + SHAPES_EXAMPLES


def _rows(examples: list[tuple[str, str, float, float]]) -> list[list[str | float]]:
    return [[str(EXAMPLES_DIR / name), prompt, box, text] for name, prompt, box, text in examples]


def example_rows() -> list[list[str | float]]:
    """[[image path, prompt, box threshold, text threshold], ...] of every example, photos first."""
    return _rows(EXAMPLES)


def demo_example_rows() -> list[list[str | float]]:
    """The shapes scenes, which the shipped demo models know."""
    return _rows(SHAPES_EXAMPLES)


def photo_example_rows() -> list[list[str | float]]:
    """The photo-like drawings, for the real models."""
    return _rows(PHOTO_EXAMPLES)
