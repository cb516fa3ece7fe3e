"""Low-level operators used by the model."""
from grounding.ops.ms_deform_attn import backend, ms_deform_attn

__all__ = ["backend", "ms_deform_attn"]
