"""Pipeline fixtures: a tiny real detector + tiny real SAM, and hooks that count actual module forwards."""
from __future__ import annotations

from collections import Counter

import pytest
from torch import nn

from grounding.pipeline import GroundedSAM


@pytest.fixture(scope="session")
def tiny_detector():
    """TEXT's GroundingDetector around MODEL-A's tiny random GroundingDINO (CPU)."""
    from grounding.detector import GroundingDetector
    from grounding.text import load_tokenizer
    from tests.fixtures.dino import tiny_model

    return GroundingDetector(tiny_model(seed=0), load_tokenizer(), "cpu")


class ForwardCounter:
    """Counts forward calls of named submodules (the ground truth behind `GroundedSAM.stats`)."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.counts: Counter[str] = Counter()
        self._handles = [
            module.register_forward_hook(lambda *_, name=name: self.counts.update([name]))
            for name, module in modules.items()
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@pytest.fixture
def pipeline(tiny_detector, tiny_segmenter):
    """A fresh GroundedSAM (empty caches, zero stats) with `pipeline.forwards` counting real model calls."""
    grounded = GroundedSAM(tiny_detector, tiny_segmenter)
    counter = ForwardCounter(
        {
            "swin": tiny_detector.model.backbone[0],
            "bert": tiny_detector.model.bert,
            "sam_image_encoder": tiny_segmenter.model.image_encoder,
            "sam_mask_decoder": tiny_segmenter.model.mask_decoder,
        }
    )
    grounded.forwards = counter.counts  # type: ignore[attr-defined]
    yield grounded
    counter.remove()
