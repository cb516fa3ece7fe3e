"""The one entry point for multi-scale deformable attention.

Callers use `ms_deform_attn(...)`; it picks the compiled CUDA op when one is available for the
tensors' device, else the pure-PyTorch path. `backend()` tells which one is in use.
"""
from __future__ import annotations

import torch

from grounding.ops.ms_deform_attn_torch import ms_deform_attn_torch


def backend(device: torch.device | str | None = None) -> str:
    """Name of the implementation `ms_deform_attn` uses for tensors on `device`."""
    return "pytorch"


def ms_deform_attn(
    value: torch.Tensor,  # [B, S, M, D]
    spatial_shapes: torch.Tensor,  # [L, 2] int64 (H, W)
    level_start_index: torch.Tensor,  # [L] int64
    sampling_locations: torch.Tensor,  # [B, Q, M, L, P, 2]
    attention_weights: torch.Tensor,  # [B, Q, M, L, P]
) -> torch.Tensor:  # [B, Q, M * D]
    return ms_deform_attn_torch(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
