"""The studio's event functions: what runs when an image arrives, Run is pressed, a slider moves, or the
export is asked for. UI-free apart from the error edge: every function turns the package's typed errors
(`GroundingError`) into `gr.Error`, whose message the page shows in a toast and the API returns.

Results are not kept between events. Each event gets the inputs (image file, prompt, thresholds) and the
pipeline's content-keyed caches answer what was computed before, so a slider move is a re-filter of a
cached raw result (no model runs) and every session sees exactly its own inputs' result. The one thing kept per
session is its `Curation` (Gradio state: the user's edits, a few kB), applied on top of every result; only edit
events write it, and Run / upload reset it when the image, prompt or models changed.
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
from app.curation import OPERATIONS, Curated, Curation, check_added_box, check_click, curate
from app.examples import demo_example_rows
from app.images import ImageLoader, studio_image_limits
from app.messages import redact_paths
from app.models import ModelRegistry
from app.rendering import (
    TABLE_HEADERS, Marks, curated_rows, details_markdown, mask_areas, picture_to_image, render, result_summary,
    selection_text, status_html,
)
from app.settings import HostingLimits
from app.uploads import ImageBytes, upload_folder
from grounding.drawing import annotate
from grounding.cache import image_key
from grounding.clicks import check_box, check_points
from grounding.errors import GroundingError, InvalidEditError, InvalidOptionError, InvalidPromptError
from grounding.export import frame_scale, write_bundle
from grounding.images import LoadedImage
from grounding.pipeline import SAME_PHRASE_NMS_IOU, GroundedResult, GroundedSAM
from grounding.shipped import SHAPES_NAME
from grounding.text import MAX_TOKENS, normalize_caption, split_phrases

log = logging.getLogger(__name__)
DEFAULT_MAX_PROMPT_TOKENS = 1024  # 4 passes of the 256-token text window
F = TypeVar("F", bound=Callable[..., Any])
ImageInput = str | ImageBytes | None  # what `app.components.ImageUpload` hands over
# What a click on the result picture does (the curation panel's radio), and the help the page shows for it.
CLICK_SELECT, CLICK_KEEP, CLICK_REMOVE, CLICK_BOX = (
    "Select", "Add point: part of it (+)", "Add point: not part of it (−)", "Add a box (2 corners)")
CLICK_MODES = (CLICK_SELECT, CLICK_KEEP, CLICK_REMOVE, CLICK_BOX)
CURATION_HELP = (
    "Click an object in the picture (or its row in the table) to select it. To fix its mask, switch the click to "
    "**+** (part of it) or **−** (not part of it) and click in the picture: each click re-cuts the mask. To add a "
    "missed object, choose **Add a box** and click two opposite corners; it gets the label below. Edits stay with "
    "their box while you move the sliders, go into the zip, and reset with a new image or prompt."
)

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
        except Exception as error:
            raise user_error(error, fn.__name__) from error

    return wrapper  # type: ignore[return-value]


def user_error(error: Exception, where: str) -> gr.Error:
    """What the caller is told about `error` raised in `where`: a typed error's message (paths taken out), else a
    short "internal error" (the full one goes to the log)."""
    if isinstance(error, GroundingError):
        return gr.Error(redact_paths(str(error)), title=error.title, print_exception=False)
    log.exception("unexpected error in %s", where)
    return gr.Error(f"Something went wrong inside the studio ({type(error).__name__}); the server log has the details.",
                    title="Internal error", print_exception=False)


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
        curation: Curation | None = None,
    ) -> tuple[Any, ...]:
        """The full request: (picture path, status HTML, table, JSON summary, details markdown, curation), the
        session's edits applied; the curation is reset (else left alone) when the image, prompt or models changed."""
        request = StudioRequest(image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter)
        outputs, kept = self._curated_outputs(request, curation)
        return (*outputs, kept if kept is not curation else gr.skip())

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
        curation: Curation | None = None,
    ) -> tuple[Any, ...]:
        """`segment` for slider moves, with the session's edits (read, never written): with no image or no prompt
        yet there is nothing to update (no error)."""
        request = StudioRequest(image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter)
        if not request.complete:
            return tuple(gr.skip() for _ in range(5))
        return self._curated_outputs(request, curation)[0]

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
        curation: Curation | None = None,
    ) -> str:
        """Zip of what the inputs show, edits included, in the uploaded image's own frame: `masks/NNN_phrase.png`,
        `coco.json`, `detections.json`, `meta.json` (prompt, thresholds, models, sizes, the edits and their
        history) and `annotated.png`."""
        request = StudioRequest(image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter)
        pipeline, loaded, result, curation, _ = self._run_in_context(request, curation)
        curated = curate(curation, result, pipeline, loaded)
        result = curated.shown
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
            "curation": curation_meta(curation, curated, frame_scale(result)),
            "studio_version": grounding.__version__,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return str(write_bundle(result, path, image_name=name, annotated=annotate(self._pixels(image), result), meta=meta))

    @user_errors
    def preview(self, *inputs: Any) -> tuple[Any, Any]:
        """What a slider drag updates, from the page's inputs and the session's curation: (picture, status line);
        the table and JSON follow on release."""
        *fields, curation = inputs
        request = StudioRequest(*fields)
        if not request.complete:
            return gr.skip(), gr.skip()
        start = time.perf_counter()
        pipeline, loaded, result, curation, _ = self._run_in_context(request, curation)
        curated = curate(curation, result, pipeline, loaded)
        picture = self._picture(request.image, curated.shown, mask_areas(curated.shown), marks(curation, curated))
        selected = selection_text(curated.by_key(curation.selected))
        return picture, status_html(curated.shown, time.perf_counter() - start, request.box_threshold,
                                    pipeline.precision, selected)

    @user_errors
    def show(self, *inputs: Any) -> tuple[Any, ...]:
        """After an upload, from the page's inputs and the session's curation: as `segment`, or an empty result
        while there is no prompt (the last image's result must not stay beside the new image)."""
        *fields, curation = inputs
        request = StudioRequest(*fields)
        if not request.complete:
            return (*self.cleared(), gr.skip())
        outputs, kept = self._curated_outputs(request, curation)
        return (*outputs, kept if kept is not curation else gr.skip())

    # ---- curation ----------------------------------------------------------------------------------
    @user_errors
    def click(
        self, image: ImageInput, prompt: str, box_threshold: float, text_threshold: float, nms_iou: float,
        use_sam: bool, model: str | None, segmenter: str | None, curation: Curation | None, mode: str,
        label: str | None, event: gr.SelectData,
    ) -> tuple[Any, ...]:
        """A click on the result picture, by the click mode: select the object under it; add a + / − point to the
        selected object (the first click selects when nothing is selected); or set a corner of a box to add."""
        request = StudioRequest(image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter)
        pipeline, loaded, result, curation = self._curation_inputs(request, curation)
        curated = curate(curation, result, pipeline, loaded)
        x, y = picture_to_image(event.index, loaded.size)
        selected = curated.by_key(curation.selected)
        if mode != CLICK_BOX:
            curation = curation.without_corner()
        if mode == CLICK_BOX:
            if curation.corner is None:
                curation = curation.start_box(check_click(x, y, loaded, 1)[:2])
            else:
                box = check_added_box(curation.corner, x, y, loaded)
                curation = curation.add_box(box, label or _first_phrase(prompt))
        elif mode in (CLICK_KEEP, CLICK_REMOVE) and selected is not None:
            self._require_masks(request, pipeline)
            curation = curation.add_point(selected.key, check_click(x, y, loaded, int(mode == CLICK_KEEP)))
        else:  # select (also the first click of a point mode while nothing is selected)
            hit = curated.at(x, y)
            if hit is None and mode != CLICK_SELECT:
                raise InvalidEditError("Click on an object first to select it; then each click adds a point to it.")
            curation = curation.select(hit.key if hit is not None else None)
        return self._edited(request, pipeline, loaded, result, curation)

    @user_errors
    def select_row(
        self, image: ImageInput, prompt: str, box_threshold: float, text_threshold: float, nms_iou: float,
        use_sam: bool, model: str | None, segmenter: str | None, curation: Curation | None, event: gr.SelectData,
    ) -> tuple[Any, ...]:
        """A click on a row of the table selects its object (dropped ones too, to restore them)."""
        request = StudioRequest(image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter)
        pipeline, loaded, result, curation = self._curation_inputs(request, curation)
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        target = curate(curation, result, pipeline, loaded).find(int(row) + 1)
        return self._edited(request, pipeline, loaded, result, curation.select(target.key))

    @user_errors
    def edit_selected(
        self, operation: str, image: ImageInput, prompt: str, box_threshold: float, text_threshold: float,
        nms_iou: float, use_sam: bool, model: str | None, segmenter: str | None, curation: Curation | None,
        label: str | None,
    ) -> tuple[Any, ...]:
        """The panel's buttons, on the selected object: "undo_point", "reset", "next_mask", "drop" (drops it, or
        restores it when dropped), "relabel" (to `label`); "clear" takes back every edit."""
        request = StudioRequest(image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter)
        pipeline, loaded, result, curation = self._curation_inputs(request, curation)
        if operation == "clear":
            return self._edited(request, pipeline, loaded, result, curation.clear())
        selected = curate(curation, result, pipeline, loaded).by_key(curation.selected)
        if selected is None:
            raise InvalidEditError("Select an object first: click it in the picture, or its row in the table.")
        if operation == "drop" and selected.edit.dropped:
            operation = "restore"
        edited = self._apply(operation, curation, selected, request, pipeline, label)
        return self._edited(request, pipeline, loaded, result, edited)

    @user_errors
    def refine(
        self, image: ImageInput, prompt: str, box_threshold: float, text_threshold: float, nms_iou: float,
        use_sam: bool, model: str | None, segmenter: str | None, object: Any, points: Any,  # noqa: A002 (API name)
        curation: Curation | None = None,
    ) -> tuple[Any, ...]:
        """API: `object` (its number in the table's # column) gets these clicks, [[x, y, 1 | 0], ...] in the pixels of the
        result's frame (1 = part of it, 0 = not), replacing its earlier ones ([] = back to its box's mask). The
        outputs of /segment, plus the session's curation."""
        request = StudioRequest(image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter)
        pipeline, loaded, result, curation = self._curation_inputs(request, curation)
        self._require_masks(request, pipeline)
        target = curate(curation, result, pipeline, loaded).find(object)
        xy, labels = check_points(points, loaded.size)
        clicks = tuple((float(x), float(y), int(label)) for (x, y), label in zip(xy, labels))
        edited = curation.set_points(target.key, clicks).select(target.key)
        return self._edited(request, pipeline, loaded, result, edited)

    @user_errors
    def edit(
        self, image: ImageInput, prompt: str, box_threshold: float, text_threshold: float, nms_iou: float,
        use_sam: bool, model: str | None, segmenter: str | None, operation: Any, object: Any,  # noqa: A002
        label: Any, box: Any, curation: Curation | None = None,
    ) -> tuple[Any, ...]:
        """API: one edit. `operation`: "drop" | "restore" | "relabel" (`object`, its number in the table's #
        column, to `label`) | "add_box" (`box` [x1, y1, x2, y2] px with `label`) | "next_mask" | "undo_point" |
        "reset" (`object`) | "clear" (every edit). The outputs of /segment, plus the session's curation."""
        request = StudioRequest(image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter)
        pipeline, loaded, result, curation = self._curation_inputs(request, curation)
        if operation not in OPERATIONS:
            raise InvalidEditError(f"operation must be one of {', '.join(OPERATIONS)}, got {str(operation)[:40]!r}.")
        if operation == "clear":
            curation = curation.clear()
        elif operation == "add_box":
            curation = curation.add_box(check_box(box, loaded.size), label or _first_phrase(prompt))
        else:
            target = curate(curation, result, pipeline, loaded).find(object)
            curation = self._apply(operation, curation, target, request, pipeline, label).select(target.key)
        return self._edited(request, pipeline, loaded, result, curation)

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
    def _curated_outputs(self, request: StudioRequest, curation: Curation | None) -> tuple[tuple[Any, ...], Curation]:
        """(the five result outputs of `request` with the session's edits, the curation for its context)."""
        start = time.perf_counter()
        pipeline, loaded, result, curation, calls = self._run_in_context(request, curation)
        return self._outputs(request, pipeline, loaded, result, curation, calls, start), curation

    def _outputs(
        self, request: StudioRequest, pipeline: GroundedSAM, loaded: LoadedImage, result: GroundedResult,
        curation: Curation, calls: dict[str, int] | None = None, start: float | None = None,
    ) -> tuple[str, str, dict[str, Any], dict[str, Any], str]:
        """(picture path, status HTML, table, JSON summary, details markdown) of `result` with `curation` applied."""
        start = time.perf_counter() if start is None else start
        before = pipeline.stats.snapshot()
        tick = time.perf_counter()
        curated = curate(curation, result, pipeline, loaded)
        shown = curated.shown
        timings_ms = {name: seconds * 1000 for name, seconds in result.timings.items()}
        if not curation.empty:
            timings_ms["curation"] = (time.perf_counter() - tick) * 1000
        tick = time.perf_counter()
        areas = mask_areas(shown)
        picture = self._picture(request.image, shown, areas, marks(curation, curated))
        timings_ms["render"] = (time.perf_counter() - tick) * 1000
        timings_ms["server"] = (time.perf_counter() - start) * 1000
        after = pipeline.stats.snapshot()
        calls = {name: (calls or {}).get(name, 0) + after[name] - before[name] for name in after}
        model_info = {**pipeline.describe(), "detector": self._model_name(request.model)}
        summary = result_summary(
            shown,
            {
                "objects": [
                    {"number": obj.number, "phrase": obj.phrase, "source": obj.source, "dropped": obj.edit.dropped,
                     "edit": obj.edit.describe(obj.source)}
                    for obj in curated.objects
                ],
                "edits": len(curation.history) + curation.history_dropped,
                "timings_ms": {name: round(ms, 2) for name, ms in timings_ms.items()},
                "cache": result.cache,
                "model_calls": calls,
                "model": model_info,
            },
            areas,
        )
        selected = selection_text(curated.by_key(curation.selected))
        return (
            picture,
            status_html(shown, timings_ms["server"] / 1000, request.box_threshold, pipeline.precision, selected),
            {"headers": TABLE_HEADERS, "data": curated_rows(curated, areas)},
            summary,
            details_markdown(timings_ms, model_info, result.cache),
        )

    def _edited(
        self, request: StudioRequest, pipeline: GroundedSAM, loaded: LoadedImage, result: GroundedResult,
        curation: Curation,
    ) -> tuple[Any, ...]:
        """An edit event's outputs: the five result outputs and the new curation."""
        return (*self._outputs(request, pipeline, loaded, result, curation), curation)

    def _curation_inputs(
        self, request: StudioRequest, curation: Curation | None
    ) -> tuple[GroundedSAM, LoadedImage, GroundedResult, Curation]:
        """What an edit works on: the request's pipeline, image, (cached) result and the session's curation."""
        if not request.complete:
            raise InvalidEditError("There is nothing to edit yet: add an image and a prompt, and press Run.")
        return self._run_in_context(request, curation)[:4]

    def _run_in_context(
        self, request: StudioRequest, curation: Curation | None
    ) -> tuple[GroundedSAM, LoadedImage, GroundedResult, Curation, dict[str, int]]:
        """The request's pipeline, image and (cached) result, the session's curation for that context, and the
        model calls the run made."""
        pipeline = self._pipeline(request)
        result, loaded, calls = self._run(pipeline, request)
        return pipeline, loaded, result, self._in_context(curation, request, loaded), calls

    def _in_context(self, curation: Curation | None, request: StudioRequest, loaded: LoadedImage) -> Curation:
        """The session's curation if it belongs to this image, prompt and models, else a clean one for them."""
        context = (image_key(loaded.pixels), normalize_caption(request.prompt or ""), self._model_name(request.model),
                   request.segmenter or "")
        return (curation if isinstance(curation, Curation) else Curation()).for_context(context)

    def _apply(
        self, operation: str, curation: Curation, target: Any, request: StudioRequest, pipeline: GroundedSAM,
        label: Any,
    ) -> Curation:
        """One operation on the listed object `target` (`app.curation.ListedObject`)."""
        if operation == "drop":
            return curation.drop(target.key)
        if operation == "restore":
            return curation.drop(target.key, dropped=False)
        if operation == "relabel":
            return curation.relabel(target.key, label, target.detected_phrase)
        self._require_masks(request, pipeline)
        if operation == "next_mask":
            return curation.next_mask(target.key)
        if operation == "undo_point":
            return curation.undo_point(target.key)
        if operation == "reset":
            return curation.reset(target.key)
        raise InvalidEditError(f"operation must be one of {', '.join(OPERATIONS)}, got {str(operation)[:40]!r}.")

    @staticmethod
    def _require_masks(request: StudioRequest, pipeline: GroundedSAM) -> None:
        if not request.use_sam or pipeline.segmenter is None:
            raise InvalidEditError("Masks are off: turn on Masks (SAM) to fix a mask with clicks.")

    def _run(self, pipeline: GroundedSAM, request: StudioRequest) -> tuple[GroundedResult, LoadedImage, dict[str, int]]:
        """The pipeline result, the image it ran on, and the model calls it made (delta of `pipeline.stats`; other
        sessions' calls at the same moment may show up in it)."""
        loaded = self.images(request.image)
        self._check_prompt_size(pipeline, request.prompt)
        before = pipeline.stats.snapshot()
        run = pipeline.segment if request.use_sam else pipeline.detect
        result = run(loaded, request.prompt, box_threshold=request.box_threshold,
                     text_threshold=request.text_threshold, nms_iou=request.nms_iou)
        after = pipeline.stats.snapshot()
        return result, loaded, {name: after[name] - before[name] for name in after}

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

    def pipeline_for(self, request: StudioRequest) -> GroundedSAM:
        """The models `request` names, its prompt checked against the token budget (for the Video tab)."""
        pipeline = self._pipeline(request)
        self._check_prompt_size(pipeline, request.prompt or "")
        return pipeline

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

    def _picture(self, image: ImageInput, result: GroundedResult, areas: list[int | None], marks: Marks | None = None) -> str:
        """The on-screen picture as a JPEG: it encodes ~15x faster than PNG, and the slider path has a 50 ms
        budget. (Its alt text travels in the status line; the page copies it onto the picture.)"""
        path = self.outputs.new_path(".jpg", stem="annotated")
        Image.fromarray(render(self._pixels(image), result, areas, marks)).save(path, format="JPEG", quality=90)
        return str(path)


def short_reason(error: GroundingError) -> str:
    """One line per part of a load error (detector, SAM): its first clause, without library exception text or
    server paths."""
    parts = []
    for line in redact_paths(str(error)).splitlines():
        line = re.split(r": [A-Z]\w*(?:Error|Exception)\b|(?<=\.) ", line, maxsplit=1)[0].strip()
        parts.append(line if len(line) <= 200 else line[:199] + "…")
    return "; ".join(part for part in parts if part)


def marks(curation: Curation, curated: Curated) -> Marks | None:
    """What to draw over the picture for this session: the selected object's box and clicks, a pending corner."""
    selected = curated.by_key(curation.selected)
    if selected is None and curation.corner is None:
        return None
    return Marks(box=selected.box if selected is not None else None,
                 points=selected.edit.points if selected is not None else (), corner=curation.corner)


def curation_meta(curation: Curation, curated: Curated, scale: tuple[float, float]) -> dict[str, Any]:
    """The edits for meta.json, in the export's frame (the uploaded image's pixels): every listed object with what
    was done to it, and the operations in order."""
    sx, sy = scale

    def box(values: Any) -> list[float]:
        return [round(float(v) * (sx if i % 2 == 0 else sy), 2) for i, v in enumerate(values)]

    def point(values: Any) -> list[float | int]:
        return [round(float(values[0]) * sx, 2), round(float(values[1]) * sy, 2), int(values[2])]

    objects = [
        {
            "number": obj.number, "phrase": obj.phrase, "detected_phrase": obj.detected_phrase, "source": obj.source,
            "box_xyxy": box(obj.box), "dropped": obj.edit.dropped, "clicks": [point(p) for p in obj.edit.points],
            "mask_choice": None if obj.edit.candidate is None else obj.edit.candidate + 1,
        }
        for obj in curated.objects
    ]
    history = []
    for entry in curation.history:
        entry = dict(entry)
        if "box" in entry:
            entry["box"] = box(entry["box"])
        if "points" in entry:
            entry["points"] = [point(p) for p in entry["points"]]
        history.append(entry)
    return {"objects": objects, "history": history, "history_truncated": curation.history_dropped}


def _first_phrase(prompt: str | None) -> str:
    """The prompt's first phrase (the label a hand-drawn box gets when none is chosen), or ""."""
    if not isinstance(prompt, str) or not prompt.strip():
        return ""
    phrases = split_phrases(normalize_caption(prompt))
    return phrases[0] if phrases else ""


def _ensure(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    return folder


def warm_image_caches(pipeline: GroundedSAM, loaded: LoadedImage, with_sam: bool) -> dict[str, bool]:
    """Run the image encoders of `pipeline` on `loaded` into its caches; {encoder: was already cached}."""
    hits = pipeline.encode_image(loaded, with_sam=with_sam)
    names = {"image_features": "detector", "sam_embedding": "SAM"}
    return {names[cache]: hit for cache, hit in hits.items()}
