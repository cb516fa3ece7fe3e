"""Fixtures of the checkpoint tests: one tiny random model and a fixed input for comparing outputs."""
import pytest
import torch

from tests.fixtures.dino import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture(scope="module")
def inputs():
    """(input_ids [1, 9] "a cat . a remote control .", pixel_values [1, 3, 64, 96])."""
    input_ids = torch.tensor([[101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 102]])
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    return input_ids, pixel_values


def run(model, inputs):
    input_ids, pixel_values = inputs
    with torch.inference_mode():
        output = model(input_ids, torch.ones_like(input_ids), pixel_values=pixel_values)
    return output.pred_logits, output.pred_boxes
