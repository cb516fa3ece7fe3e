"""Two Gradio components with the checks moved from Gradio's preprocessing into the app.

`gr.Image` opens every upload with PIL before the event function runs, so a corrupt file or a
decompression bomb fails inside Gradio with a bare "Error". `gr.Slider` rejects out-of-range API values
with a message that does not say which slider. These subclasses hand the raw value through, and the
app (`grounding.images.load_image`, the pipeline's threshold checks) answers with a message that says
what is wrong and what to do. The browser side is unchanged: `is_template` keeps the parent's frontend.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

import gradio as gr
from gradio.data_classes import ImageData

from gradio.events import Dependency

class ImageUpload(gr.Image):
    """`gr.Image` input that passes the uploaded file's path on unopened (whatever `type` says).

    No `__init__` of its own: Gradio builds the page config from the signature of `gr.Image.__init__`.
    """

    is_template = True

    def preprocess(self, payload: ImageData | None) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return self._save_data_url(payload.url)
        return payload.path

    def _save_data_url(self, url: str) -> str:
        """Write a base64 data URL's bytes to the cache unparsed; the app decides whether it is an image."""
        try:
            data = base64.b64decode(url.partition(",")[2], validate=True)
        except (binascii.Error, ValueError) as error:
            raise gr.Error("The image data URL is not valid base64; send the image as a file.") from error
        directory = Path(self.GRADIO_CACHE) / "data_urls"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{hashlib.sha256(data).hexdigest()[:32]}.bin"
        if not path.exists():
            path.write_bytes(data)
        return str(path)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class ThresholdSlider(gr.Slider):
    """`gr.Slider` whose value reaches the event function as sent, so the pipeline names the bad value."""

    is_template = True

    def preprocess(self, payload: float) -> float:
        return payload
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component