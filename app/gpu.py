"""Hugging Face ZeroGPU support that costs nothing elsewhere.

On a ZeroGPU Space the `spaces` package is installed and `spaces.GPU` attaches a GPU for the duration of
a decorated call; everywhere else the functions run undecorated. `duration` is the longest a call may hold
the GPU (seconds); shorter asks get a better place in ZeroGPU's queue.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

try:
    import spaces
except ImportError:
    spaces = None


def on_gpu(fn: F, duration: int = 60) -> F:
    """`spaces.GPU(duration=duration)(fn)` when the `spaces` package is importable, else `fn` itself."""
    return spaces.GPU(duration=duration)(fn) if spaces is not None else fn
