"""The server's edge, where Gradio receives a request before any studio code runs.

- `RequestBodyLimit`: an ASGI middleware that refuses request bodies over a byte limit (413) while they are
  received, so a JSON call cannot carry an image past the upload limit, nor a body of any size into memory.
  Gradio's upload route keeps its own limit (`max_file_size`) and is left to it.
- `StudioBlocks`: `gr.Blocks` whose input preprocessing turns Gradio's own refusals (too few inputs, a value
  its data model rejects, a file path outside the upload folder) into a message for the caller; Gradio would
  answer `{"error": null}` and keep the reason in the log.
"""
from __future__ import annotations

import logging
from typing import Any

import gradio as gr
from gradio.exceptions import InvalidPathError
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.messages import redact_paths
from app.uploads import REFUSED_SOURCE

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    pass


class RequestBodyLimit:
    """Refuse HTTP request bodies over `max_bytes` with 413, judged from Content-Length and while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt_suffixes: tuple[str, ...] = ("/upload",)) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_suffixes = exempt_suffixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/").endswith(self.exempt_suffixes):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = PlainTextResponse(
            f"Request body larger than {self.max_bytes / 2**20:.0f} MB: upload images as files "
            "(the API's file upload), not inside the request.",
            status_code=413,
        )
        await response(scope, receive, send)


class StudioBlocks(gr.Blocks):
    """`gr.Blocks` whose refusals of malformed inputs reach the caller as a message."""

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except InvalidPathError:  # a path outside the upload folder, marked as a Gradio file
            raise gr.Error(REFUSED_SOURCE, title="Image problem", print_exception=False) from None
        except Exception as error:
            log.info("refused a malformed call to %s: %s", block_fn.api_name or block_fn.name, error)
            raise gr.Error(malformed_message(block_fn, inputs), title="Malformed request", print_exception=False) from None


def malformed_message(block_fn: Any, inputs: list[Any]) -> str:
    """Which input of the call was not in a form the endpoint takes, by name."""
    names = [_input_name(block) for block in block_fn.inputs]
    endpoint = f"/{block_fn.api_name}" if block_fn.api_name else "this event"
    if len(inputs) < len(names):
        return f"{endpoint} takes {len(names)} inputs ({', '.join(names)}); the call sent {len(inputs)}."
    for index, (block, value) in enumerate(zip(block_fn.inputs, inputs)):
        data_model = getattr(block, "data_model", None)
        if data_model is None or value is None:
            continue
        try:
            data_model.model_validate(value)
        except Exception:
            return redact_paths(
                f"Input {index + 1} of {endpoint} ({names[index]}) is not in a form it takes: "
                f"{_expected_form(block)} See the API page (\"Use via API\" at the foot of the studio)."
            )
    return f"The inputs of {endpoint} ({', '.join(names)}) are not in a form it takes; see the API page."


def _input_name(block: Any) -> str:
    label = getattr(block, "label", None)
    return str(label) if label else type(block).__name__


def _expected_form(block: Any) -> str:
    if isinstance(block, gr.Image):
        return "an image is a file object ({\"path\": ..., \"meta\": {\"_type\": \"gradio.FileData\"}}) of a file " \
               "uploaded to this server, or {\"url\": \"data:image/...;base64,...\"}."
    return "a value of the component's type was expected."
