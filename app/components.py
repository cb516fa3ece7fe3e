"""Three Gradio components with the checks moved from Gradio's preprocessing into the app.

`gr.Image` opens every upload with PIL before the event function runs, so a corrupt file or a
decompression bomb fails inside Gradio with a bare "Error", and it opens whatever path a caller names.
`gr.Slider` rejects out-of-range API values with a message that does not say which slider. These
subclasses hand the value through, checked only where it must be: `ImageUpload` accepts only what
`app.uploads` allows (a file in the upload folder, or a data: URL's bytes), and the app
(`grounding.images.load_image`, the pipeline's threshold checks) answers with a message that says what is
wrong and what to do. The browser side is unchanged: `is_template` keeps the parent's frontend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from gradio.data_classes import ImageData
from gradio_client.utils import is_http_url_like

from app.uploads import REFUSED_SOURCE, ImageBytes, RefusedInput, confined_path, data_url_bytes


class ImageUpload(gr.Image):
    """`gr.Image` input that passes a received file's path on unopened (whatever `type` says), or the bytes of
    a data: URL; anything else is refused (see `app.uploads`).

    No `__init__` of its own: Gradio builds the page config from the signature of `gr.Image.__init__`.
    `max_data_url_bytes` is set on the instance by the page (the upload limit).
    """

    is_template = True
    max_data_url_bytes = 50 << 20

    def preprocess(self, payload: ImageData | None) -> str | ImageBytes | None:
        if payload is None:
            return None
        try:
            if payload.path:
                return confined_path(payload.path)
            if payload.url and payload.url.startswith("data:"):
                return data_url_bytes(payload.url, self.max_data_url_bytes)
            if payload.url:
                raise RefusedInput(REFUSED_SOURCE)
        except RefusedInput as refused:
            raise gr.Error(str(refused), title="Image problem", print_exception=False) from None
        return None

    async def async_move_resource_to_block_cache(self, url_or_file_path: str | Path | None) -> str | None:
        """Gradio fetches a URL named as an input file before preprocessing; refuse it instead."""
        if isinstance(url_or_file_path, str) and is_http_url_like(url_or_file_path):
            raise gr.Error(REFUSED_SOURCE, title="Image problem", print_exception=False)
        return await super().async_move_resource_to_block_cache(url_or_file_path)


class PromptBox(gr.Textbox):
    """`gr.Textbox` whose value reaches the event function as sent (Gradio would turn a list or a number from an
    API call into its text form and run it as a prompt); the studio refuses what is not text."""

    is_template = True

    def preprocess(self, payload: str | None) -> str | None:
        return payload


class ThresholdSlider(gr.Slider):
    """`gr.Slider` whose value reaches the event function as sent, so the pipeline names the bad value."""

    is_template = True

    def preprocess(self, payload: float) -> float:
        return payload


class RawText(gr.Textbox):
    """`gr.Textbox` (hidden, an API parameter) whose value reaches the event function as sent; the app checks it."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


class RawNumber(gr.Number):
    """`gr.Number` (hidden, an API parameter) whose value reaches the event function as sent (Gradio would turn a
    wrong kind into a bare error); the app checks it."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload
