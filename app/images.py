"""The studio's image intake: `grounding.images.load_image` behind a small LRU keyed on the received image.

Gradio hands every event of a session the same upload path, so a slider move finds the decoded, checked
image here instead of decoding the file again. Each read also marks the upload as used (its ctime), so the
disk janitor (`app.disk`) keeps an image a user is still working on. Limits are the studio's
(`HostingLimits`): the long side is downscaled to `max_side` (2048 px keeps masks and drawing fast enough for
live sliders; the batch CLI keeps full resolution) and the decode memory budget is judged from the header.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable

from app.settings import HostingLimits
from app.uploads import ImageBytes
from grounding.errors import InvalidImageError
from grounding.images import ImageLimits, LoadedImage, load_image


def studio_image_limits(limits: HostingLimits) -> ImageLimits:
    return ImageLimits(max_side=limits.max_side, max_decode_bytes=limits.max_decode_mb << 20)


class ImageLoader:
    """Thread-safe LRU of `LoadedImage`s keyed on the file (path, size, inode) or on the bytes' hash."""

    def __init__(self, max_entries: int = 8, limits: ImageLimits | None = None) -> None:
        self.max_entries = max_entries
        self.limits = limits or studio_image_limits(HostingLimits())
        self._entries: OrderedDict[Hashable, LoadedImage] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, image: str | os.PathLike | ImageBytes | None) -> LoadedImage:
        """Checked RGB image of a received file or data URL; raises InvalidImageError (None, corrupt, bomb, ...)."""
        key = self._key(image)
        if key is None:  # let load_image say what is wrong with it
            return self._load(image)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        loaded = self._load(image)
        with self._lock:
            self._entries[key] = loaded
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return loaded

    @staticmethod
    def _key(image: str | os.PathLike | ImageBytes | None) -> Hashable | None:
        if isinstance(image, ImageBytes):
            return ("bytes", hashlib.blake2b(image.data, digest_size=16).hexdigest())
        if not image:
            return None
        try:
            stat = os.stat(image)
            os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same times; the ctime says "in use"
        except OSError:
            return None
        return ("file", os.fspath(image), stat.st_size, stat.st_ino)

    def _load(self, image: str | os.PathLike | ImageBytes | None) -> LoadedImage:
        """`load_image`, with the server-side upload path in messages replaced by what the user knows."""
        if isinstance(image, ImageBytes):
            return load_image(image.data, self.limits)
        try:
            return load_image(os.fspath(image) if image else None, self.limits)
        except InvalidImageError as error:
            message = str(error).replace(os.fspath(image), "The uploaded file") if image else str(error)
            raise InvalidImageError(message) from error
