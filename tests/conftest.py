"""Shared test setup: offline environment and the fixtures that build tiny models (tests/fixtures/)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# --- SAM (tests/fixtures/sam.py) ---
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory):
    """Path of a tiny random SAM .pth in the official state-dict format."""
    from tests.fixtures.sam import tiny_sam_checkpoint as write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("sam") / "sam_tiny.pth")


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_sam_checkpoint):
    """A SamSegmenter loaded from the tiny checkpoint through the real loading path (CPU)."""
    from grounding.segmenters.sam import SamSegmenter

    return SamSegmenter.from_pretrained("tiny", checkpoint=tiny_sam_checkpoint, device="cpu")


# --- Grounding DINO (tests/fixtures/dino.py) ---
@pytest.fixture(scope="session")
def tiny_dino():
    """Tiny GroundingDINO with all parameters random (seed 0), eval mode. Shared: do not modify."""
    from tests.fixtures.dino import tiny_model

    return tiny_model(seed=0)


@pytest.fixture
def tiny_official_pth(tmp_path):
    """(path, model): the tiny random model written as an official .pth ({"model", "config"})."""
    from tests.fixtures.dino import tiny_official_checkpoint

    path = tmp_path / "groundingdino_tiny.pth"
    return path, tiny_official_checkpoint(path)


@pytest.fixture
def tiny_hf_dir(tmp_path):
    """(directory, model): the tiny random model as an HF checkpoint (config.json + model.safetensors)."""
    from tests.fixtures.dino import tiny_hf_checkpoint

    directory = tmp_path / "grounding-dino-tiny-random"
    return directory, tiny_hf_checkpoint(directory)


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A 120x160 RGB picture with a few coloured shapes (random models need some structure, not much)."""
    rng = np.random.default_rng(0)
    image = np.full((120, 160, 3), 200, np.uint8)
    image[20:70, 15:80] = (220, 30, 30)
    image[50:110, 90:150] = (30, 30, 220)
    image += rng.integers(0, 20, image.shape, dtype=np.uint8)
    return image
