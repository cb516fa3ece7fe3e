"""The studio's event functions: what runs when an image arrives, Run is pressed, a slider moves, or the
export is asked for. UI-free apart from the error edge: every function turns the package's typed errors
(`GroundingError`) into `gr.Error`, whose message the page shows in a toast and the API returns.

Results are not kept between events. Each event gets the inputs (image file, prompt, thresholds) and the
pipeline's content-keyed caches answer what was computed before, so a slider move is a re-filter of a
cached raw result (no model runs) and every session sees exactly its own inputs' result.
Nothing a client receives names a server path: models go by display name, messages through `redact_paths`.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
import numpy as np
from PIL import Image

import grounding
from app.examples import demo_example_rows
from app.images import ImageLoader, studio_image_limits
from app.messages import redact_paths
from app.models import ModelRegistry
from app.rendering import (
    TABLE_HEADERS, details_markdown, mask_areas, render, result_summary, status_html, table_rows,
)
from app.settings import HostingLimits
from app.uploads import ImageBytes, upload_folder
from grounding.drawing import annotate
from grounding.errors import GroundingError, InvalidOptionError, InvalidPromptError
from grounding.export import write_bundle
from grounding.images import LoadedImage
from grounding.pipeline import SAME_PHRASE_NMS_IOU, GroundedResult, GroundedSAM
from grounding.shipped import SHAPES_NAME
from grounding.text import MAX_TOKENS, normalize_caption

log = logging.getLogger(__name__)
DEFAULT_MAX_PROMPT_TOKENS = 1024  # 4 passes of the 256-token text window
F = TypeVar("F", bound=Callable[..., Any])
ImageInput = str | ImageBytes | None  # what `app.components.ImageUpload` hands over

LOAD_HELP = """Pass local weights, for example

```
python app.py --detector /path/groundingdino_swint_ogc.pth --sam vit_b --sam-checkpoint /path/sam_vit_b_01ec64.pth
```

or allow downloads (unset `HF_HUB_OFFLINE` / `GROUNDING_OFFLINE`) and restart; `python app.py --help` lists every
option. Once the files are in place, **Retry** loads them without a restart. The server log has the full errors."""


def user_errors(fn: F) -> F:
    """Typed errors -> `gr.Error` with their message (paths taken out); anything else -> a short `gr.Error`,
    logged in full."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except GroundingError as error:
            raise gr.Error(redact_paths(str(error)), title=error.title, print_exception=False) from error
        except Exception as error:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"Something went wrong inside the studio ({type(error).__name__}); the server log has the details.",
                title="Internal error",
                print_exception=False,
            ) from error

    return wrapper  # type: ignore[return-value]


class OutputFiles:
    """Files handed to Gradio (annotated pictures, zips), at most `max_files`: a result is superseded by the
    newer ones long before it is deleted. They are written inside Gradio's upload folder, which Gradio serves
    as is (no second copy) and the disk janitor bounds."""

    def __init__(self, directory: str | os.PathLike | None = None, max_files: int = 64) -> None:
        self.directory = Path(directory or tempfile.mkdtemp(prefix="studio-", dir=_ensure(upload_folder())))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_files = max_files
        self._files: deque[Path] = deque()
        self._lock = threading.Lock()

    def new_path(self, suffix: str, stem: str = "") -> Path:
        folder = self.directory / uuid.uuid4().hex[:16]
        folder.mkdir(parents=True)
        path = folder / f"{stem or 'result'}{suffix}"
        with self._lock:
            self._files.append(path)
            while len(self._files) > self.max_files:
                shutil.rmtree(self._files.popleft().parent, ignore_errors=True)
        return path


@dataclass(frozen=True)
class StudioRequest:
    """The inputs every result event takes, in the page's order (`app.ui` wires them so)."""

    image: ImageInput
    prompt: str | None
    box_threshold: float
    text_threshold: float
    nms_iou: float
    use_sam: bool
    model: str | None
    segmenter: str | None = None  # None: the pipeline's own

    def __post_init__(self) -> None:
        """Kinds only (the pipeline checks values): an API call can send anything in any position."""
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise InvalidPromptError(f"The prompt must be text, got {type(self.prompt).__name__}.")
        if not isinstance(self.use_sam, bool):
            raise InvalidOptionError(f"use_sam (masks on/off) must be true or false, got {self.use_sam!r}.")
        for option in ("model", "segmenter"):
            value = getattr(self, option)
            if value is not None and not isinstance(value, str):
                raise InvalidOptionError(f"{option} must be a model name (text) or null, got {type(value).__name__}.")

    @property
    def complete(self) -> bool:
        """An image and a prompt with some text: something to show."""
        return bool(self.image) and bool((self.prompt or "").strip())


class Studio:
    """Event functions over a `ModelRegistry`. Thread-safe: Gradio calls them from its worker threads."""

    def __init__(
        self,
        registry: ModelRegistry,
        images: ImageLoader | None = None,
        outputs: OutputFiles | None = None,
        max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
        limits: HostingLimits | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits or HostingLimits()
        self.images = images or ImageLoader(limits=studio_image_limits(self.limits))
        self.outputs = outputs or OutputFiles()
        self.max_prompt_tokens = max_prompt_tokens

    # ---- page status -------------------------------------------------------------------------------
    def banner(self) -> str:
        """Top-of-page notice (markdown): empty when every model loads, else one line on what the page runs
        with, and a collapsed "How to load real models" with a short reason per model and the commands.
        Failed loads are not retried here (see `ModelRegistry`): a page load costs nothing."""
        self.registry.load_all()
        problems = self.registry.failures()
        if not problems:
            return ""
        fallback = self.registry.default_name
        if fallback in self.registry.loaded() and fallback == self.registry.names[0]:  # only extra choices failed
            headline = f"ℹ️ {', '.join(problems)}: weights missing; **{fallback}** is in use."
        elif fallback in self.registry.loaded():
            knows = ", which knows coloured shapes only (try the examples)" if fallback == SHAPES_NAME else ""
            headline = f"**Demo mode** — real weights not found: using the small **{fallback}** model{knows}."
        else:
            headline = "⚠️ **No model could be loaded**: the studio cannot detect anything until the weights are found."
        reasons = "\n".join(f"- **{name}**: {short_reason(error)}" for name, error in problems.items())
        return f"{headline}\n\n<details><summary>How to load real models</summary>\n\n{reasons}\n\n{LOAD_HELP}\n\n</details>"

    def demo_mode(self) -> bool:
        """True when the page runs on the shipped shapes models because the configured ones did not load."""
        return self.registry.default_name == SHAPES_NAME and self.registry.names[0] != SHAPES_NAME

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, name) per model of the menu; one that cannot load says so."""
        failures = self.registry.failures()
        return [(f"{name} — weights missing" if name in failures else name, name) for name in self.registry.names]

    def segmenter_choices(self) -> list[tuple[str, str]]:
        """(label, name) per segmenter of the menu; one that cannot load says so."""
        segmenters = self.registry.segmenters
        if segmenters is None:
            return []
        failures = segmenters.failures()
        return [(f"{name} — weights missing" if name in failures else name, name) for name in segmenters.names]

    def choose_segmenter(self, segmenter: str | None) -> str | None:
        """The menu's segmenter if it loads; otherwise one short warning and the working one stays selected."""
        segmenters = self.registry.segmenters
        if segmenters is None or segmenter is None:
            return segmenter
        try:
            segmenters.get(segmenter)
            return segmenter
        except GroundingError:
            working = segmenters.default_name
            gr.Warning(f"{segmenter}: weights missing (see the server log); keeping {working}.")
            return working

    def choose_model(self, model: str | None) -> str:
        """The menu's choice if it loads; otherwise one short warning and the model in use stays selected."""
        try:
            self.registry.get(model)
            return model or self.registry.default_name
        except GroundingError:
            working = self.registry.default_name
            gr.Warning(f"{model}: weights missing (see “How to load real models” at the top); keeping {working}.")
            return working

    def retry_loads(self) -> str:
        """The page's Retry button: load the failed models again now (rate-limited), then the banner."""
        if not self.registry.retry():
            wait = self.registry.seconds_to_retry()
            gr.Info(f"Loading was retried moments ago; try again in {wait:.0f} s.")
        return self.banner()

    # ---- events ------------------------------------------------------------------------------------
    @user_errors
    def encode(self, image: ImageInput, model: str | None, use_sam: bool, segmenter: str | None = None) -> str:
        """Decode and check a new image and run the image encoders (detector, and SAM when masks are on)
        into the cache, so the first prompt on it only runs the text side. Returns a status line."""
        request = StudioRequest(image, None, 0.0, 0.0, 1.0, use_sam, model, segmenter)  # the kinds of the options
        start = time.perf_counter()
        loaded = self.images(image)
        pipeline = self._pipeline(request)
        hits = warm_image_caches(pipeline, loaded, with_sam=use_sam and pipeline.segmenter is not None)
        elapsed = time.perf_counter() - start
        width, height = loaded.size
        done = ", ".join(f"{name} {'(cached)' if hit else ''}".strip() for name, hit in hits.items())
        notes = "".join(f"  \n↳ {note}" for note in loaded.notes)
        return f"{width}×{height} px · image encoded in {elapsed:.2f} s ({done}){notes}"

    @user_errors
    def segment(
        self,
        image: ImageInput,
        prompt: str,
        box_threshold: float,
        text_threshold: float,
        nms_iou: float,
        use_sam: bool,
        model: str | None,
        segmenter: str | None = None,
    ) -> tuple[str, str, dict[str, Any], dict[str, Any], str]:
        """The full request: (picture path, status HTML, table, JSON summary, details markdown)."""
        return self._result(
            StudioRequest(image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter)
        )

    @user_errors
    def refilter(
        self,
        image: ImageInput,
        prompt: str,
        box_threshold: float,
        text_threshold: float,
        nms_iou: float,
        use_sam: bool,
        model: str | None,
        segmenter: str | None = None,
    ) -> tuple[Any, ...]:
        """`segment` for slider moves: with no image or no prompt yet there is nothing to update (no error)."""
        request = StudioRequest(image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter)
        if not request.complete:
            return tuple(gr.skip() for _ in range(5))
        return self._result(request)

    @user_errors
    def export(
        self,
        image: ImageInput,
        prompt: str,
        box_threshold: float,
        text_threshold: float,
        nms_iou: float,
        use_sam: bool,
        model: str | None,
        segmenter: str | None = None,
    ) -> str:
        """Zip of what the inputs show, in the uploaded image's own frame: `masks/NNN_phrase.png`, `coco.json`,
        `detections.json`, `meta.json` (prompt, thresholds, models, sizes) and `annotated.png`."""
        request = StudioRequest(image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter)
        pipeline = self._pipeline(request)
        result, _ = self._run(pipeline, request)
        name = Path(image).name if isinstance(image, str) else "image.png"
        path = self.outputs.new_path(".zip", stem=f"{Path(name).stem}_grounded_sam")
        meta = {
            "prompt": prompt,
            "phrases": result.prompt_phrases,
            "box_threshold": box_threshold,
            "text_threshold": text_threshold,
            "nms_iou": nms_iou,
            "same_phrase_nms_iou": SAME_PHRASE_NMS_IOU,
            "masks": bool(use_sam),
            "models": {**pipeline.describe(), "detector": self._model_name(model)},
            "precision": pipeline.precision,
            "studio_version": grounding.__version__,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return str(write_bundle(result, path, image_name=name, annotated=annotate(self._pixels(image), result), meta=meta))

    @user_errors
    def preview(self, *inputs: Any) -> tuple[Any, Any]:
        """What a slider drag updates, from the page's inputs: (picture, status line); the table and JSON follow
        on release."""
        request = StudioRequest(*inputs)
        if not request.complete:
            return gr.skip(), gr.skip()
        start = time.perf_counter()
        pipeline = self._pipeline(request)
        result, _ = self._run(pipeline, request)
        picture = self._picture(request.image, result, mask_areas(result))
        return picture, status_html(result, time.perf_counter() - start, request.box_threshold, pipeline.precision)

    @user_errors
    def show(self, *inputs: Any) -> tuple[Any, ...]:
        """After an upload, from the page's inputs: the result for the prompt, or an empty result while there is
        no prompt (the last image's result must not stay beside the new image)."""
        request = StudioRequest(*inputs)
        return self._result(request) if request.complete else self.cleared()

    def page_state(self) -> tuple[Any, ...]:
        """The page as it opens: (model menu, segmenter menu, Retry button, photo examples, image, prompt, box,
        text threshold). In demo mode it opens on the first shapes example, whose result the next event computes."""
        menu = gr.update(choices=self.model_choices(), value=self.registry.default_name)
        segmenters = self.registry.segmenters
        segmenter_menu = gr.skip()
        if segmenters is not None:
            segmenter_menu = gr.update(choices=self.segmenter_choices(), value=segmenters.default_name)
        retry = gr.update(visible=bool(self.registry.failures()))
        photos = gr.update(visible=not self.demo_mode())
        if not self.demo_mode():
            return menu, segmenter_menu, retry, photos, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        image, prompt, box, text = demo_example_rows()[0]
        return menu, segmenter_menu, retry, photos, image, prompt, box, text

    @staticmethod
    def cleared() -> tuple[Any, ...]:
        """Empty result outputs (after an error, or when the image is removed): nothing stale stays on show."""
        return None, "", {"headers": TABLE_HEADERS, "data": []}, None, ""

    # ---- helpers -----------------------------------------------------------------------------------
    def _result(self, request: StudioRequest) -> tuple[str, str, dict[str, Any], dict[str, Any], str]:
        """(picture path, status HTML, table, JSON summary, details markdown) of `request`."""
        start = time.perf_counter()
        pipeline = self._pipeline(request)
        result, calls = self._run(pipeline, request)
        tick = time.perf_counter()
        areas = mask_areas(result)
        picture = self._picture(request.image, result, areas)
        timings_ms = {name: seconds * 1000 for name, seconds in result.timings.items()}
        timings_ms["render"] = (time.perf_counter() - tick) * 1000
        timings_ms["server"] = (time.perf_counter() - start) * 1000
        model_info = {**pipeline.describe(), "detector": self._model_name(request.model)}
        summary = result_summary(
            result,
            {
                "timings_ms": {name: round(ms, 2) for name, ms in timings_ms.items()},
                "cache": result.cache,
                "model_calls": calls,
                "model": model_info,
            },
            areas,
        )
        return (
            picture,
            status_html(result, timings_ms["server"] / 1000, request.box_threshold, pipeline.precision),
            {"headers": TABLE_HEADERS, "data": table_rows(result, areas)},
            summary,
            details_markdown(timings_ms, model_info, result.cache),
        )

    def _run(self, pipeline: GroundedSAM, request: StudioRequest) -> tuple[GroundedResult, dict[str, int]]:
        """The pipeline result and the model calls it made (delta of `pipeline.stats`; other sessions'
        calls at the same moment may show up in it)."""
        loaded = self.images(request.image)
        self._check_prompt_size(pipeline, request.prompt)
        before = pipeline.stats.snapshot()
        run = pipeline.segment if request.use_sam else pipeline.detect
        result = run(loaded, request.prompt, box_threshold=request.box_threshold,
                     text_threshold=request.text_threshold, nms_iou=request.nms_iou)
        after = pipeline.stats.snapshot()
        return result, {name: after[name] - before[name] for name in after}

    def _check_prompt_size(self, pipeline: GroundedSAM, prompt: str) -> None:
        """Refuse prompts over the studio's token budget before any model runs (each 256 tokens is one
        more text + transformer pass; on a CPU a 2,000-token prompt would hold the queue for minutes)."""
        tokenizer = getattr(pipeline.detector, "tokenizer", None)
        if tokenizer is None or not isinstance(prompt, str) or 2 * len(prompt) + 2 <= self.max_prompt_tokens:
            return  # no tokenizer to ask, or too short to reach the budget (a token is at least one character)
        count = len(tokenizer(normalize_caption(prompt))["input_ids"])
        if count > self.max_prompt_tokens:
            raise InvalidPromptError(
                f"The prompt is {count} tokens long; the studio runs at most {self.max_prompt_tokens} tokens "
                f"({-(-self.max_prompt_tokens // MAX_TOKENS)} model passes of {MAX_TOKENS}) per request to stay "
                f"interactive. Shorten it, start the studio with --max-prompt-tokens {count}, or run long class "
                f"lists with the batch CLI (python -m grounding.batch)."
            )

    def _pipeline(self, request: StudioRequest) -> GroundedSAM:
        """The request's detector pipeline, with the chosen segmenter when one is chosen (the shipped shapes
        pipeline keeps its own: the other segmenters do not know its scenes' scale)."""
        pipeline = self.registry.get(request.model)
        segmenters = self.registry.segmenters
        if not request.segmenter or segmenters is None or pipeline.segmenter is None or self._is_shapes(request.model):
            return pipeline
        chosen = segmenters.get(request.segmenter)
        return pipeline if chosen is pipeline.segmenter else pipeline.with_segmenter(chosen)

    def _is_shapes(self, model: str | None) -> bool:
        return (model or self.registry.default_name) == SHAPES_NAME

    def _model_name(self, model: str | None) -> str:
        """The dropdown's name of the model a request ran on."""
        return model if model in self.registry.factories else self.registry.default_name

    def _pixels(self, image: ImageInput) -> np.ndarray:
        return self.images(image).pixels

    def _picture(self, image: ImageInput, result: GroundedResult, areas: list[int | None]) -> str:
        """The on-screen picture as a JPEG: it encodes ~15x faster than PNG, and the slider path has a 50 ms
        budget. (Its alt text travels in the status line; the page copies it onto the picture.)"""
        path = self.outputs.new_path(".jpg", stem="annotated")
        Image.fromarray(render(self._pixels(image), result, areas)).save(path, format="JPEG", quality=90)
        return str(path)


def short_reason(error: GroundingError) -> str:
    """One line per part of a load error (detector, SAM): its first clause, without library exception text or
    server paths."""
    parts = []
    for line in redact_paths(str(error)).splitlines():
        line = re.split(r": [A-Z]\w*(?:Error|Exception)\b|(?<=\.) ", line, maxsplit=1)[0].strip()
        parts.append(line if len(line) <= 200 else line[:199] + "…")
    return "; ".join(part for part in parts if part)


def _ensure(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    return folder


def warm_image_caches(pipeline: GroundedSAM, loaded: LoadedImage, with_sam: bool) -> dict[str, bool]:
    """Run the image encoders of `pipeline` on `loaded` into its caches; {encoder: was already cached}."""
    hits = pipeline.encode_image(loaded, with_sam=with_sam)
    names = {"image_features": "detector", "sam_embedding": "SAM"}
    return {names[cache]: hit for cache, hit in hits.items()}
