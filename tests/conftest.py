"""Shared test setup: offline environment and the fixtures that build tiny models (tests/fixtures/)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# --- SAM (tests/fixtures/sam.py) ---
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory):
    """Path of a tiny random SAM .pth in the official state-dict format."""
    from tests.fixtures.sam import tiny_sam_checkpoint as write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("sam") / "sam_tiny.pth")


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_sam_checkpoint):
    """A SamSegmenter loaded from the tiny checkpoint through the real loading path (CPU)."""
    from grounding.sam import SamSegmenter

    return SamSegmenter.from_pretrained("tiny", checkpoint=tiny_sam_checkpoint, device="cpu")
