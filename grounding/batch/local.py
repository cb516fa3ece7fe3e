"""The local engine: every image through `grounding.batch.records` in this process, one after another."""
from __future__ import annotations

from collections.abc import Callable

from grounding.batch.config import BatchConfig
from grounding.batch.inputs import ImageItem
from grounding.batch.records import EncodedImage, label_item
from grounding.pipeline import GroundedSAM


def run_local(todo: list[ImageItem], config: BatchConfig, keep: Callable[[EncodedImage], None],
              pipeline: GroundedSAM) -> None:
    """Label `todo` with the loaded `pipeline`, handing each finished image to `keep`."""
    for item in todo:
        keep(label_item(pipeline, item, config))
