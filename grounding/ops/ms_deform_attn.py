"""The one entry point for multi-scale deformable attention.

Callers use `ms_deform_attn(...)`; it picks the compiled CUDA op (csrc/, loaded by
`grounding.ops.cuda_extension` on the first CUDA call) when it is available for the tensors' device,
else the pure-PyTorch path. CPU tensors always take the PyTorch path. `backend(device)` names the
implementation in use and `backend_reason(device)` says why. Set GROUNDING_DISABLE_CUDA_OP=1 to force the
PyTorch path everywhere.
"""
from __future__ import annotations

import torch

from grounding.ops import cuda_extension
from grounding.ops.ms_deform_attn_torch import ms_deform_attn_torch

CUDA_EXTENSION = "cuda-extension"
PYTORCH = "pytorch"


def _as_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def backend(device: torch.device | str | None = None) -> str:
    """Name of the implementation `ms_deform_attn` uses for tensors on `device` (default: the best device).

    "cuda-extension" or "pytorch". On a CUDA device this may build the op on first use (see cuda_extension).
    """
    return CUDA_EXTENSION if _as_device(device).type == "cuda" and _extension_available() else PYTORCH


def backend_reason(device: torch.device | str | None = None) -> str:
    """One line for info panels, e.g. "pytorch (CPU tensors)" or "cuda-extension (prebuilt _C.so)"."""
    device = _as_device(device)
    if device.type != "cuda":
        return f"{PYTORCH} ({device.type} tensors)"
    status = cuda_extension.extension_status()
    return f"{CUDA_EXTENSION if status.available else PYTORCH} ({status.reason})"


@torch.compiler.assume_constant_result
def _extension_available() -> bool:
    # Constant for the life of the process, so torch.compile can specialise on it without a graph break.
    return cuda_extension.extension_status().available


def ms_deform_attn(
    value: torch.Tensor,  # [B, S, M, D]
    spatial_shapes: torch.Tensor,  # [L, 2] int64 (H, W)
    level_start_index: torch.Tensor,  # [L] int64
    sampling_locations: torch.Tensor,  # [B, Q, M, L, P, 2]
    attention_weights: torch.Tensor,  # [B, Q, M, L, P]
) -> torch.Tensor:  # [B, Q, M * D], dtype of value
    if value.is_cuda and _extension_available():
        # The kernel reads locations and weights in fp32 whatever their dtype, and accumulates in fp32.
        # Shapes and starts must sit on the GPU as int64 (no-ops when they already do).
        return torch.ops.grounding_ops.ms_deform_attn(
            value,
            spatial_shapes.to(value.device, torch.int64),
            level_start_index.to(value.device, torch.int64),
            sampling_locations,
            attention_weights,
        )
    # grid_sample needs one dtype; compute in the widest one so fp32 locations keep their precision.
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    out = ms_deform_attn_torch(
        value.to(dtype), spatial_shapes, level_start_index, sampling_locations.to(dtype), attention_weights.to(dtype)
    )
    return out.to(value.dtype)
