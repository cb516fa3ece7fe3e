"""Example rows for the page: drawn scenes in assets/examples/ with prompts that name what is in them."""
from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"

# image file, prompt, box threshold, text threshold
EXAMPLES: list[tuple[str, str, float, float]] = [
    ("shapes.png", "red circle . blue square . green triangle . yellow ball", 0.30, 0.25),
    ("house.png", "house . tree . sun . door . window . flower", 0.30, 0.25),
    ("fruit.png", "apple . orange . bowl", 0.35, 0.25),
    # Scenes of the procedural shapes data (grounding.train.shapes), what the shipped demo models know;
    # "blue star" is absent on purpose.
    ("shapes_scene_1.png", "red circle . yellow square . blue star", 0.35, 0.25),
    ("shapes_scene_2.png", "orange square . yellow triangle", 0.35, 0.25),
]


def example_rows() -> list[list[str | float]]:
    """[[image path, prompt, box threshold, text threshold], ...] for `gr.Examples`."""
    return [[str(EXAMPLES_DIR / name), prompt, box, text] for name, prompt, box, text in EXAMPLES]
