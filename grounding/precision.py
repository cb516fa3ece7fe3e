"""Numeric precision for GPU inference: TF32 matmuls plus bf16/fp16 autocast, with fp32 islands.

Weights stay fp32; `inference_precision(device, "bf16")` runs the matmul-heavy parts (Swin, BERT, linear
layers, attention) in bf16 under autocast while LayerNorm / softmax / log stay fp32 (autocast's own lists).
Code whose result is sensitive to rounding (box refinement, inverse sigmoid, proposal grids, the
contrastive class logits) wraps itself in `float32_region(tensor)` and casts its inputs with `.float()`.

    with inference_precision(device, "bf16"):
        outputs = model(input_ids, attention_mask, pixel_values=pixels)
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """"fp32" -> None (no autocast), "bf16" -> torch.bfloat16, "fp16" -> torch.float16; ValueError otherwise."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}") from None


def default_precision(device: torch.device | str) -> str:
    """bf16 on CUDA devices that support it (Ampere and newer), fp16 on older GPUs, fp32 on CPU.

    On CPU, bf16 autocast is usually slower than fp32 and is never chosen by default.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


@contextlib.contextmanager
def inference_precision(device: torch.device | str, precision: str = "fp32") -> Iterator[None]:
    """No-grad inference with TF32 matmuls/convolutions on CUDA and, for "bf16"/"fp16", autocast.

    The global TF32 switches are restored on exit. On CPU, "fp32" only adds inference mode; "bf16" uses
    CPU autocast (slow; for tests).
    """
    device = torch.device(device)
    dtype = autocast_dtype(precision)
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        autocast = (
            torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def float32_region(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for `tensor`'s device type: ops inside run in their inputs' dtype (cast them .float())."""
    return torch.autocast(tensor.device.type, enabled=False)
