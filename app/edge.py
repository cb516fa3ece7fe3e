"""The server's edge, where Gradio receives a request before any studio code runs.

- `RequestBodyLimit`: an ASGI middleware that refuses request bodies over a byte limit (413) while they are
  received, so no call (JSON or an upload) carries more than one image's worth into memory; and JSON bodies
  holding more than `max_json_items` objects, arrays or values, which cost a hundred times their size to parse
  (a 10 MB body of `{},` took 700 MB), while a data: URL, one long string, costs little. 100,000 items parse
  in ~10 MB; an API call needs a few hundred (10,000 clicks, which the app then refuses by name, need 40,000).
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


class RequestBodyLimit:
    """Refuse HTTP request bodies over `max_bytes` with 413, judged from Content-Length and while streaming, and
    JSON bodies with more than `max_json_items` structural characters ({ [ ,)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_json_items: int = 100_000) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_items = max_json_items

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        # The whole body is read (it is bounded) and judged before the app sees a byte of it, so a refusal is
        # always this 413, never a parser's error halfway through.
        chunks, received, items = [], 0, 0
        is_json = b"json" in headers.get(b"content-type", b"")
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            received += len(body)
            if is_json:  # base64 has none of these; a caption a few hundred
                items += body.count(b"{") + body.count(b"[") + body.count(b",")
            if received > self.max_bytes or items > self.max_json_items:
                await self._refuse(scope, receive, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = PlainTextResponse(
            f"Request body larger than {self.max_bytes / 2**20:.0f} MB or with more than {self.max_json_items} "
            "values: send one image per request (a file upload, or a data: URL) and the endpoint's inputs only.",
            status_code=413,
        )
        await response(scope, receive, send)


class StudioBlocks(gr.Blocks):
    """`gr.Blocks` whose refusals of malformed inputs reach the caller as a message."""

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        if len(inputs) == len(_visible_inputs(block_fn)) < len(block_fn.inputs):
            inputs = _with_state_slots(block_fn, inputs)  # a raw HTTP call need not know of the session's State
        if len(inputs) != len(block_fn.inputs):
            raise gr.Error(malformed_message(block_fn, inputs), title="Malformed request", print_exception=False)
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except (InvalidPathError, OSError):  # a path outside the upload folder, marked as a Gradio file (or one
            # Gradio could not even look at): the same answer as any other path, whatever exists out there
            raise gr.Error(REFUSED_SOURCE, title="Image problem", print_exception=False) from None
        except Exception as error:
            log.info("refused a malformed call to %s: %s", block_fn.api_name or block_fn.name, error)
            raise gr.Error(malformed_message(block_fn, inputs), title="Malformed request", print_exception=False) from None


def _visible_inputs(block_fn: Any) -> list[Any]:
    """The inputs a caller sends: all but session State (Gradio fills that in; gradio_client sends None for it)."""
    return [block for block in block_fn.inputs if not block.stateful]


def _with_state_slots(block_fn: Any, inputs: list[Any]) -> list[Any]:
    """`inputs` (the visible ones, in order) with None where a State input goes."""
    given = iter(inputs)
    return [None if block.stateful else next(given) for block in block_fn.inputs]


def malformed_message(block_fn: Any, inputs: list[Any]) -> str:
    """Which input of the call was not in a form the endpoint takes, by name (session State not counted)."""
    visible = _visible_inputs(block_fn)
    names = [_input_name(block) for block in visible]
    endpoint = f"/{block_fn.api_name}" if block_fn.api_name else "this event"
    if len(inputs) != len(block_fn.inputs):
        takes = f"{len(names)} inputs ({', '.join(names)})" if names else "no inputs"
        return f"{endpoint} takes {takes}; the call sent {len(inputs)}."
    for index, (block, value) in enumerate(zip(block_fn.inputs, inputs)):
        data_model = getattr(block, "data_model", None)
        if block.stateful or data_model is None or value is None:
            continue
        try:
            data_model.model_validate(value)
        except Exception:
            return redact_paths(
                f"Input {index + 1} of {endpoint} ({_input_name(block)}) is not in a form it takes: "
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
