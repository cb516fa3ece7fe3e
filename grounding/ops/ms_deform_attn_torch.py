"""Multi-scale deformable attention in pure PyTorch (runs on every device).

Sampling convention (same as the CUDA kernel and `grid_sample(align_corners=False, padding_mode="zeros")`):
a location (x, y) in [0, 1] maps to pixel coordinates (x * W - 0.5, y * H - 0.5); bilinear interpolation
over the 4 neighbouring cells, a corner outside the map contributes zero.

Formulation: instead of sampling every level with `grid_sample`, stacking the samples and multiplying by
the attention weights (which materialises [B*M, D, Q, L*P] several times), every sample becomes 4 rows of
a flattened value table with weights (bilinear corner weight x attention weight), gathered and summed in
one `embedding_bag(mode="sum", per_sample_weights=...)` call. Each level map is zero-padded by one cell
before and two cells after along both axes, and pixel coordinates are clamped to [-1, size]: then every
corner index is in range without masks, and corners outside the original map read zeros (a clamped
coordinate lands on an integer, so the clamped-away corner has weight 0). Same numbers up to float
re-association, differentiable w.r.t. value, locations and weights, and several times faster on CPU.
Queries are processed in chunks to bound the memory of the index tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

QUERY_CHUNK = 4096  # bounds index memory (~100 MB); smaller chunks stay in cache, larger mean fewer ops
PAD_BEFORE, PAD_AFTER = 1, 2


def _padded_table(value: torch.Tensor, shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, list[int]]:
    """value [B, S, M, D] -> table [B*M*S_pad, D] (row (b*M + m)*S_pad + padded position) and level starts."""
    batch, _, heads, dim = value.shape
    padded_shapes = [(h + PAD_BEFORE + PAD_AFTER, w + PAD_BEFORE + PAD_AFTER) for h, w in shapes]
    table = value.new_zeros(batch * heads, sum(h * w for h, w in padded_shapes), dim)
    starts, start = [], 0
    for level, (height, width), (padded_h, padded_w) in zip(
        value.split([h * w for h, w in shapes], dim=1), shapes, padded_shapes
    ):
        grid = table[:, start : start + padded_h * padded_w].view(batch, heads, padded_h, padded_w, dim)
        grid[:, :, PAD_BEFORE : PAD_BEFORE + height, PAD_BEFORE : PAD_BEFORE + width] = (
            level.view(batch, height, width, heads, dim).permute(0, 3, 1, 2, 4)
        )
        starts.append(start)
        start += padded_h * padded_w
    return table.view(-1, dim), starts


def ms_deform_attn_torch(
    value: torch.Tensor,  # [B, S, M, D]  S = sum(H_l * W_l)
    spatial_shapes: torch.Tensor,  # [L, 2] int64 (H, W)
    level_start_index: torch.Tensor,  # [L] int64 (implied by spatial_shapes; kept for the common signature)
    sampling_locations: torch.Tensor,  # [B, Q, M, L, P, 2] (x, y) in [0, 1]
    attention_weights: torch.Tensor,  # [B, Q, M, L, P], softmaxed over L * P
) -> torch.Tensor:  # [B, Q, M * D]
    batch, _, heads, dim = value.shape
    _, queries, _, levels, _, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    table, starts = _padded_table(value, shapes)
    padded_size = table.shape[0] // (batch * heads)
    # Coordinate and index arithmetic runs in floating point, at least float32 (row numbers are exact below
    # 2**24 in float32, beyond that float64), converted to integers once.
    index_dtype = torch.promote_types(sampling_locations.dtype, torch.float32)
    if table.shape[0] >= 2**24:
        index_dtype = torch.float64
    options = dict(dtype=index_dtype, device=value.device)

    def per_level(values: list[float]) -> torch.Tensor:  # [1, 1, 1, L, 1]
        return torch.tensor(values, **options).view(1, 1, 1, levels, 1)

    widths, heights = per_level([w for _, w in shapes]), per_level([h for h, _ in shapes])
    lowest, minus_half = torch.full_like(widths, -1.0), torch.full_like(widths, -0.5)
    padded_widths = widths + PAD_BEFORE + PAD_AFTER
    head_rows = torch.arange(batch * heads, **options).view(batch, 1, heads, 1, 1) * padded_size
    # row of the padded cell (0, 0) of each original map: [B, 1, M, L, 1]
    origin = head_rows + per_level([float(s) for s in starts]) + PAD_BEFORE * padded_widths + PAD_BEFORE
    index_type = torch.int32 if table.shape[0] < 2**31 else torch.int64
    # corner (y, x) in {0, 1}^2 relative to the top-left one: row offset y * W_pad + x, [1, 1, 1, 2, 2, L, 1]
    corner_offsets = torch.stack(
        [torch.zeros_like(padded_widths), torch.ones_like(padded_widths), padded_widths, padded_widths + 1], 3
    ).view(1, 1, 1, 2, 2, levels, 1).to(index_type)
    # (1 - f, f) along a new axis 3 as base + sign * f
    near_far_base = torch.tensor([1.0, 0.0], dtype=value.dtype, device=value.device).view(1, 1, 1, 2, 1, 1)
    near_far_sign = torch.tensor([-1.0, 1.0], dtype=value.dtype, device=value.device).view(1, 1, 1, 2, 1, 1)

    output = value.new_empty(batch, queries, heads, dim)
    for start in range(0, queries, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, queries)
        locations = sampling_locations[:, start:stop].to(index_dtype)
        # pixel coordinates clamped to [-1, size], [B, q, M, L, P] each
        x = torch.addcmul(minus_half, locations[..., 0], widths).clamp_(min=lowest, max=widths)
        y = torch.addcmul(minus_half, locations[..., 1], heights).clamp_(min=lowest, max=heights)
        x0, y0 = x.floor(), y.floor()
        fx, fy = (x - x0).to(value.dtype), (y - y0).to(value.dtype)
        top_left = torch.addcmul(origin + x0, y0, padded_widths).to(index_type)
        # a bag holds the (corner_y, corner_x, level, point) samples of one (b, q, m), in any order
        indices = top_left[:, :, :, None, None] + corner_offsets  # [B, q, M, 2, 2, L, P]
        weight_x = torch.addcmul(near_far_base, fx[:, :, :, None], near_far_sign)  # [B, q, M, 2, L, P]
        weight_y = torch.addcmul(near_far_base, fy[:, :, :, None], near_far_sign)
        weight_y *= attention_weights[:, start:stop, :, None]
        weights = weight_y[:, :, :, :, None] * weight_x[:, :, :, None]  # [B, q, M, 2, 2, L, P]
        bags = batch * (stop - start) * heads
        sampled = F.embedding_bag(
            indices.view(bags, -1), table, per_sample_weights=weights.view(bags, -1), mode="sum"
        )
        output[:, start:stop] = sampled.view(batch, stop - start, heads, dim)
    return output.view(batch, queries, heads * dim)
