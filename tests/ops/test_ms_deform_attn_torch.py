"""The PyTorch path of multi-scale deformable attention against a hand-written loop reference."""
import pytest
import torch

from grounding.ops import ms_deform_attn
from grounding.ops.ms_deform_attn_torch import ms_deform_attn_torch
from tests.ops.reference import ms_deform_attn_loops, random_inputs

SHAPES = [(3, 5), (2, 3), (1, 1)]


def test_matches_loop_reference_with_zero_padding_fp64():
    # fp64 end to end (locations included): the path gradcheck and training checks rely on
    inputs = random_inputs(SHAPES, seed=1)
    expected = ms_deform_attn_loops(*inputs)
    assert expected.shape == (2, 5, 2 * 4)
    torch.testing.assert_close(ms_deform_attn_torch(*inputs), expected, rtol=1e-10, atol=1e-12)


def test_matches_loop_reference_fp32():
    inputs = random_inputs(SHAPES, seed=2, dtype=torch.float32)
    expected = ms_deform_attn_loops(*(t.double() if t.is_floating_point() else t for t in inputs))
    torch.testing.assert_close(ms_deform_attn_torch(*inputs).double(), expected, rtol=1e-5, atol=1e-5)


def test_pixel_centres_return_the_pixel_value():
    value, shapes, starts, locations, weights = random_inputs([(4, 6)], batch=1, queries=1, heads=1, points=1)
    row, col = 2, 3
    locations[..., 0] = (col + 0.5) / 6  # x
    locations[..., 1] = (row + 0.5) / 4  # y
    weights.fill_(1.0)
    out = ms_deform_attn_torch(value, shapes, starts, locations, weights)
    torch.testing.assert_close(out[0, 0], value[0, row * 6 + col, 0])


def test_points_outside_the_map_contribute_nothing():
    value, shapes, starts, locations, weights = random_inputs(SHAPES, queries=3)
    locations[:, 0] = -0.7  # every level, far outside
    locations[:, 1, ..., 0] = 1.6
    out = ms_deform_attn_torch(value, shapes, starts, locations, weights)
    assert torch.count_nonzero(out[:, :2]) == 0
    assert torch.count_nonzero(out[:, 2]) > 0


def test_gradcheck_fp64():
    value, shapes, starts, locations, weights = random_inputs([(3, 4), (2, 2)], batch=1, queries=2, points=2)
    # keep points off the pixel grid lines where bilinear interpolation has kinks
    locations = (locations * 7).round().div(7).add(0.013).requires_grad_()
    value.requires_grad_()
    weights.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn_torch(v, shapes, starts, loc, w), (value, locations, weights)
    )


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_dispatcher_keeps_fp32_locations_with_low_precision_value(low):
    value, shapes, starts, locations, weights = random_inputs(SHAPES, dtype=torch.float32)
    out = ms_deform_attn(value.to(low), shapes, starts, locations, weights)
    assert out.dtype == low
    expected = ms_deform_attn_loops(value.to(low).double(), shapes, starts, locations.double(), weights.double())
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)
