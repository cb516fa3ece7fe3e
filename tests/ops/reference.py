"""A deliberately naive multi-scale deformable attention (Python loops, bilinear by hand) for tiny cases."""
from __future__ import annotations

import math

import torch


def bilinear_zero_padded(image: torch.Tensor, row: float, col: float) -> torch.Tensor:
    """image [H, W, D] sampled at pixel coordinates (row, col); corners outside the image count as 0."""
    height, width, channels = image.shape
    row0, col0 = math.floor(row), math.floor(col)
    out = torch.zeros(channels, dtype=image.dtype)
    for r, c in ((row0, col0), (row0, col0 + 1), (row0 + 1, col0), (row0 + 1, col0 + 1)):
        if 0 <= r < height and 0 <= c < width:
            out += (1 - abs(row - r)) * (1 - abs(col - c)) * image[r, c]
    return out


def ms_deform_attn_loops(
    value: torch.Tensor,  # [B, S, M, D]
    spatial_shapes: torch.Tensor,  # [L, 2]
    level_start_index: torch.Tensor,  # [L]
    sampling_locations: torch.Tensor,  # [B, Q, M, L, P, 2] (x, y)
    attention_weights: torch.Tensor,  # [B, Q, M, L, P]
) -> torch.Tensor:  # [B, Q, M * D]
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    out = torch.zeros(B, Q, M, D, dtype=value.dtype)
    for b in range(B):
        for level in range(L):
            height, width = (int(v) for v in spatial_shapes[level])
            start = int(level_start_index[level])
            image = value[b, start : start + height * width].view(height, width, M, D)
            for q in range(Q):
                for m in range(M):
                    for p in range(P):
                        x, y = (float(v) for v in sampling_locations[b, q, m, level, p])
                        # align_corners=False: pixel centres sit at (i + 0.5) / size
                        sample = bilinear_zero_padded(image[:, :, m], y * height - 0.5, x * width - 0.5)
                        out[b, q, m] += attention_weights[b, q, m, level, p] * sample
    return out.view(B, Q, M * D)


def random_inputs(
    shapes: list[tuple[int, int]],
    batch: int = 2,
    queries: int = 5,
    heads: int = 2,
    channels: int = 4,
    points: int = 3,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) on CPU.

    Locations spread over [-0.2, 1.2] so some points fall partly or wholly outside the maps (zero padding).
    """
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)  # [L, 2]
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])  # [L]
    levels = len(shapes)
    value = torch.randn(batch, int(areas.sum()), heads, channels, generator=gen, dtype=dtype)
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=gen, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, levels * points, generator=gen, dtype=dtype).softmax(-1)
    weights = weights.view(batch, queries, heads, levels, points)
    return value, spatial_shapes, level_start_index, locations, weights
