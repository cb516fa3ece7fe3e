"""Multi-scale deformable attention in pure PyTorch (runs on every device).

Sampling convention (same as the CUDA kernel): a location (x, y) in [0, 1] maps to pixel
coordinates (x * W - 0.5, y * H - 0.5); bilinear interpolation with zero padding outside the map,
i.e. `grid_sample(align_corners=False, padding_mode="zeros")`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ms_deform_attn_torch(
    value: torch.Tensor,  # [B, S, M, D]  S = sum(H_l * W_l)
    spatial_shapes: torch.Tensor,  # [L, 2] int64 (H, W)
    level_start_index: torch.Tensor,  # [L] int64
    sampling_locations: torch.Tensor,  # [B, Q, M, L, P, 2] (x, y) in [0, 1]
    attention_weights: torch.Tensor,  # [B, Q, M, L, P], softmaxed over L * P
) -> torch.Tensor:  # [B, Q, M * D]
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for level, (h, w) in enumerate(shapes):
        # [B, H*W, M, D] -> [B*M, D, H, W]
        v = value_levels[level].flatten(2).transpose(1, 2).reshape(B * M, D, h, w)
        # [B, Q, M, P, 2] -> [B*M, Q, P, 2]
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B*M, D, Q, L*P] weighted by [B*M, 1, Q, L*P]
    weights = attention_weights.transpose(1, 2).reshape(B * M, 1, Q, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(B, M * D, Q).transpose(1, 2).contiguous()
