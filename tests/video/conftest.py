"""Video fixtures: the moving shapes footage (with its truth) and the shipped shapes models."""
from __future__ import annotations

import numpy as np
import pytest

from grounding.shipped import load_shapes_pipeline, shapes_available
from grounding.train.moving_shapes import moving_shapes
from grounding.video.outputs import Mp4Writer
from tests.pipeline.conftest import tiny_detector  # noqa: F401 (fixtures shared with the pipeline tests)

PROMPT = "red circle . blue square . green star . yellow triangle"


@pytest.fixture(scope="session")
def footage() -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    """120 frames of 256x256 and, per frame, each visible object's mask by phrase."""
    frames, truth = zip(*moving_shapes(120))
    return list(frames), list(truth)


@pytest.fixture(scope="session")
def footage_mp4(footage, tmp_path_factory):
    path = tmp_path_factory.mktemp("footage") / "moving.mp4"
    writer = Mp4Writer(path, (256, 256), 30.0)
    for frame in footage[0]:
        writer.write(frame)
    writer.close()
    return path


@pytest.fixture(scope="session")
def shapes():
    if not shapes_available():
        pytest.skip("the shipped shapes models are not in this checkout")
    return load_shapes_pipeline("cpu", precision="fp32")
