"""The "shapes" demo models that ship in the repository (trained by `python -m grounding.train.demo_model`).

A bundle folder holds `detector.pth` (our checkpoint format: official keys + config, which records the input
size) and `sam.pth` (official SAM layout, the `shapes` variant). It loads through the same code paths as the
released checkpoints. The studio offers it as a model choice and falls back to it when the real weights
cannot be fetched. `$GROUNDING_SHAPES_DIR` points elsewhere (an empty folder hides the bundle).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from grounding.cache import PipelineCaches
from grounding.detector import GroundingDetector
from grounding.errors import WeightsUnavailableError
from grounding.pipeline import GroundedSAM
from grounding.sam import SamSegmenter

SHAPES_NAME = "shapes"
SHAPES_DIR_ENV = "GROUNDING_SHAPES_DIR"
DETECTOR_FILE = "detector.pth"
SAM_FILE = "sam.pth"
SAM_VARIANT = "shapes"


def shapes_dir() -> Path:
    """Where the bundle is read from: `$GROUNDING_SHAPES_DIR`, else `assets/shapes/` of the repository."""
    return Path(os.environ.get(SHAPES_DIR_ENV) or Path(__file__).resolve().parents[1] / "assets" / "shapes")


def shapes_available(directory: Path | None = None) -> bool:
    directory = directory or shapes_dir()
    return (directory / DETECTOR_FILE).is_file() and (directory / SAM_FILE).is_file()


def load_shapes_pipeline(
    device: str | torch.device | None = None, caches: PipelineCaches | None = None, directory: Path | None = None
) -> GroundedSAM:
    """The shipped detector + SAM as one `GroundedSAM`; WeightsUnavailableError if the files are not there."""
    directory = directory or shapes_dir()
    if not shapes_available(directory):
        raise WeightsUnavailableError(
            f"The shapes demo models are not in {directory} (expected {DETECTOR_FILE} and {SAM_FILE}); "
            "`python -m grounding.train.demo_model` trains them."
        )
    detector = GroundingDetector.from_pretrained(directory / DETECTOR_FILE, device=device, download=False)
    segmenter = SamSegmenter.from_pretrained(SAM_VARIANT, checkpoint=directory / SAM_FILE, device=device, download=False)
    return GroundedSAM(detector, segmenter, caches=caches)
