"""Hugging Face ZeroGPU support that costs nothing elsewhere.

On a ZeroGPU Space the `spaces` package is installed and `spaces.GPU` attaches a GPU for the duration of
a decorated call; everywhere else the functions run undecorated.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

try:
    import spaces
except ImportError:
    spaces = None


def on_gpu(fn: F) -> F:
    """`spaces.GPU(fn)` when the `spaces` package is importable, else `fn` itself."""
    return spaces.GPU(fn) if spaces is not None else fn
