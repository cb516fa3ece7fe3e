"""Sine position embedding of the image feature maps (DETR style, Grounding DINO's temperature 20).

Positions are the cumulative count of valid (not padded) cells along each axis, normalised so the last
valid cell is 2*pi; every channel pair is (sin, cos) of position / temperature^(2i/num_feats). Output order
is (pos_y, pos_x) along channels, as the official `PositionEmbeddingSineHW(normalize=True)`.
"""
from __future__ import annotations

import math

import torch


def sine_position_embedding(padding_mask: torch.Tensor, num_feats: int, temperature: float) -> torch.Tensor:
    """padding_mask [B, H, W] bool True=padding -> [B, 2 * num_feats, H, W] float32."""
    valid = ~padding_mask
    y_embed = valid.cumsum(1, dtype=torch.float32)
    x_embed = valid.cumsum(2, dtype=torch.float32)
    eps = 1e-6
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * (2 * math.pi)
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * (2 * math.pi)

    dim_t = torch.arange(num_feats, dtype=torch.float32, device=padding_mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_x = x_embed[..., None] / dim_t  # [B, H, W, num_feats]
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # [B, 2 * num_feats, H, W]
