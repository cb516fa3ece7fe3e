"""Grounded-SAM studio core: Grounding DINO, text handling, checkpoints, SAM stage and pipeline.

`grounding.backend(device)` names the multi-scale deformable attention implementation in use
("cuda-extension" or "pytorch"); `grounding.backend_reason(device)` says why.
"""
from grounding.ops import backend, backend_reason

__version__ = "0.13.0"
__all__ = ["__version__", "backend", "backend_reason"]
