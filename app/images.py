"""The studio's image intake: `grounding.images.load_image` behind a small LRU keyed on the upload file.

Gradio hands every event of a session the same cached upload path, so a slider move finds the decoded,
checked image here instead of decoding the file again. Limits are the studio's: long side 2048 px keeps
masks and drawing fast enough for live sliders (the batch CLI keeps full resolution).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

from grounding.errors import InvalidImageError
from grounding.images import ImageLimits, LoadedImage, load_image

STUDIO_LIMITS = ImageLimits(max_side=2048)


class ImageLoader:
    """Thread-safe LRU of `LoadedImage`s keyed on (path, size, mtime) of the uploaded file."""

    def __init__(self, max_entries: int = 8, limits: ImageLimits = STUDIO_LIMITS) -> None:
        self.max_entries = max_entries
        self.limits = limits
        self._entries: OrderedDict[tuple[str, int, int], LoadedImage] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, path: str | os.PathLike | None) -> LoadedImage:
        """Checked RGB image of the file at `path`; raises InvalidImageError (None, corrupt, bomb, ...)."""
        try:
            stat = os.stat(path) if path else None
        except OSError:
            stat = None
        if stat is None:  # let load_image say what is wrong with it
            return self._load(path)
        key = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        loaded = self._load(path)
        with self._lock:
            self._entries[key] = loaded
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return loaded

    def _load(self, path: str | os.PathLike | None) -> LoadedImage:
        """`load_image`, with the server-side upload path in messages replaced by what the user knows."""
        try:
            return load_image(os.fspath(path) if path else None, self.limits)
        except InvalidImageError as error:
            message = str(error).replace(os.fspath(path), "The uploaded file") if path else str(error)
            raise InvalidImageError(message) from error
