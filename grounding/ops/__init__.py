"""Low-level operators used by the model."""
from grounding.ops.ms_deform_attn import backend, backend_reason, ms_deform_attn

__all__ = ["backend", "backend_reason", "ms_deform_attn"]
