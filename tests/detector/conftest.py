"""Fixtures of the detector tests: the tiny random model behind a GroundingDetector with a small resize."""
import numpy as np
import pytest
from PIL import Image

from grounding.detector import GroundingDetector
from tests.fixtures.dino import tiny_model


@pytest.fixture(scope="session")
def detector():
    """Tiny random Grounding DINO; images resized to short side 96 (long side at most 160) to keep CPU tests fast."""
    return GroundingDetector(tiny_model(seed=1), device="cpu", shortest_side=96, longest_side=160)


@pytest.fixture(scope="session")
def photo():
    """A 240x160 (W x H) RGB test image with a few coloured rectangles."""
    pixels = np.full((160, 240, 3), 200, np.uint8)
    pixels[20:90, 30:120] = (200, 30, 30)
    pixels[60:150, 140:220] = (30, 30, 200)
    return Image.fromarray(pixels)
