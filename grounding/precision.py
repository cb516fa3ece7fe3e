"""The numeric precision policy, one for detector and segmenter, applied once where models run (the pipeline's
model calls): weights stay fp32, and "bf16" / "fp16" run the segmenters' image encoders (SAM's ViT, SAM 2's Hiera)
under autocast, while LayerNorm / softmax / log stay fp32 (autocast's own lists). The detector stays fp32
(`pipeline.DETECTOR_PRECISION`): in bf16 it was not faithful (README "Precision").

fp32 islands, whatever runs under autocast: code whose result is sensitive to rounding casts its inputs to fp32
with autocast off (box refinement and the inverse sigmoid, the query-selection proposals, the contrastive class
logits: `grounding.model.decoder.full_precision`), and the segmenters' mask decoding and post-processing run in
fp32; only their image encoders run in the reduced precision.

`resolve_precision("auto", device)`: bf16 on CUDA GPUs that support it (Ampere and newer), fp16 on older GPUs,
bf16 on CPUs that run bf16 GEMMs natively (AVX512-BF16 or AMX: 2.4x fp32 on this project's machines), fp32 on
other CPUs, where bf16 is emulated and slower.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from grounding.errors import InvalidOptionError

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
CHOICES = ("auto", *PRECISIONS)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 dot products


def autocast_dtype(precision: str) -> torch.dtype | None:
    """"fp32" -> None (no autocast), "bf16" -> torch.bfloat16, "fp16" -> torch.float16; InvalidOptionError (a
    ValueError) otherwise."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise InvalidOptionError(f"precision must be one of {', '.join(CHOICES)}, got {precision!r}") from None


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """"auto" (or None) -> the precision this device runs fastest without losing the answers (module docstring);
    an explicit "fp32" / "bf16" / "fp16" as is (fp16 on a CPU is refused: no fast CPU kernels)."""
    device = torch.device(device)
    if precision in (None, "auto"):
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    autocast_dtype(precision)
    if precision == "fp16" and device.type == "cpu":
        raise InvalidOptionError("fp16 is for GPUs; on a CPU use bf16 (where the CPU runs it natively) or fp32")
    return precision


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True if this CPU computes bf16 dot products in hardware (the flags Linux reports); asked once per process."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:  # not Linux: no cheap way to tell, and emulated bf16 is slower than fp32
        return False
    return any(flag in flags.split() for flag in BF16_CPU_FLAGS)


@contextlib.contextmanager
def inference_precision(device: torch.device | str, precision: str = "fp32") -> Iterator[None]:
    """No-grad inference, under autocast for "bf16" / "fp16"; "fp32" changes nothing else (the same numbers as a
    plain call)."""
    dtype = autocast_dtype(precision)
    autocast = torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        yield


def fp32_region(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast off on `device`: what runs inside computes in its inputs' dtype (fp32 weights, fp32 inputs)."""
    return torch.autocast(torch.device(device).type, enabled=False)
