"""Which image inputs the studio accepts: files Gradio received into this server's upload folder, or the bytes
of a data: URL. Nothing else, whatever the endpoint or client.

An API call can name any path (`{"path": "/srv/photo.png"}`, a relative path, a symlink, a URL). Reading such
a path would hand the server's files back to the caller (the annotated picture is the file itself when no box
is drawn). So a path is resolved (symlinks followed, relative to nothing the caller controls) and accepted
only inside Gradio's upload folder, where uploads, webcam and clipboard images and the page's cached examples
live; everything else gets one message, before any byte of it is read, whether or not it exists.
"""
from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from gradio.utils import get_upload_folder

REFUSED_SOURCE = (
    "Only images sent with the request are accepted: upload the file (or send it as a data: URL). "
    "Paths and links are not read."
)
EXPIRED_UPLOAD = "The uploaded image is no longer on the server (uploads are cleared after a while); upload it again."
REFUSED_VIDEO_SOURCE = "Only videos uploaded with the request are accepted: upload the file. Paths and links are not read."
EXPIRED_VIDEO_UPLOAD = "The uploaded video is no longer on the server (uploads are cleared after a while); upload it again."


class RefusedInput(ValueError):
    """An input the studio will not read; the message is safe to show to the caller."""


@dataclass(frozen=True)
class ImageBytes:
    """An image that arrived inside the request (a data: URL), held in memory: never written to disk."""

    data: bytes

    def __repr__(self) -> str:  # keep logs short
        return f"ImageBytes({len(self.data)} bytes)"


def upload_folder() -> str:
    """Gradio's folder for received files (`$GRADIO_TEMP_DIR`, else <tmp>/gradio), symlinks resolved."""
    return os.path.realpath(get_upload_folder())


def confined_path(path: str, refused: str = REFUSED_SOURCE, expired: str = EXPIRED_UPLOAD) -> str:
    """The real path of `path` if it is a file inside the upload folder; RefusedInput otherwise (with `refused`, or
    `expired` for a received file since deleted).

    The path must be inside the folder as written (absolute, no ".." part) and once symlinks are resolved;
    nothing outside the folder is looked at, so the answer never depends on what exists out there.
    """
    if not isinstance(path, str) or not path or "\0" in path or "://" in path or ".." in path.split(os.sep):
        raise RefusedInput(refused)
    root = upload_folder()
    if not _inside(os.path.abspath(path), root) and not _inside(os.path.abspath(path), get_upload_folder()):
        raise RefusedInput(refused)
    try:
        real = os.path.realpath(path)
        if not _inside(real, root):
            raise RefusedInput(refused)
        if not os.path.isfile(real):
            raise RefusedInput(expired)
    except OSError:
        raise RefusedInput(refused) from None
    return real


def _inside(path: str, root: str) -> bool:
    return path != root and os.path.commonpath([path, root]) == root


def data_url_bytes(url: str, max_bytes: int) -> ImageBytes:
    """The bytes of a base64 data: URL, its size checked on the encoded text before anything is decoded."""
    header, _, encoded = url.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        raise RefusedInput("An image data URL must be base64 encoded (data:image/png;base64,...).")
    if len(encoded) * 3 // 4 > max_bytes:
        raise RefusedInput(
            f"The image data URL holds about {len(encoded) * 3 // 4 / 2**20:.1f} MB; the limit is "
            f"{max_bytes / 2**20:.0f} MB. Send a smaller image."
        )
    try:
        return ImageBytes(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError) as error:
        raise RefusedInput("The image data URL is not valid base64; send the image as a file.") from error
