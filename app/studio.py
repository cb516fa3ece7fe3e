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
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
import numpy as np
from PIL import Image

from app.images import ImageLoader, studio_image_limits
from app.messages import redact_paths
from app.models import PipelineRegistry
from app.rendering import (
    TABLE_HEADERS, legend_html, mask_areas, render, result_summary, table_rows, timings_markdown,
)
from app.settings import HostingLimits
from app.uploads import ImageBytes, upload_folder
from grounding.errors import GroundingError, InvalidPromptError
from grounding.export import annotate, write_bundle
from grounding.images import LoadedImage
from grounding.pipeline import GroundedResult, GroundedSAM
from grounding.shipped import SHAPES_NAME
from grounding.text import MAX_TOKENS, normalize_caption

log = logging.getLogger(__name__)
DEFAULT_MAX_PROMPT_TOKENS = 1024  # 4 passes of the 256-token text window
F = TypeVar("F", bound=Callable[..., Any])
ImageInput = str | ImageBytes | None  # what `app.components.ImageUpload` hands over

SHAPES_NOTICE = (
    ", the small demo model shipped with the studio: it knows coloured circles, squares, triangles, stars "
    "and rings (try the shapes examples), nothing else"
)
WHAT_TO_DO = (
    "Pass local weights: `python app.py --detector /path/groundingdino_swint_ogc.pth --sam vit_b "
    "--sam-checkpoint /path/sam_vit_b_01ec64.pth`, or allow downloads (unset `HF_HUB_OFFLINE` / "
    "`GROUNDING_OFFLINE`) and restart. `python app.py --help` lists every option."
)


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


class Studio:
    """Event functions over a `PipelineRegistry`. Thread-safe: Gradio calls them from its worker threads."""

    def __init__(
        self,
        registry: PipelineRegistry,
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
        """Top-of-page notice (markdown): empty when every model loads, else what is missing and what to do.
        Failed loads are not retried here (see `PipelineRegistry`): a page load costs nothing."""
        problems = self.registry.load_all()
        if not problems:
            return ""
        lines = [
            f"- **{name}**\n" + "\n".join(f"  - {line}" for line in redact_paths(message).splitlines())
            for name, message in problems.items()
        ]
        fallback = self.registry.default_name
        if fallback == self.registry.names[0] and fallback in self.registry.loaded():  # only extra choices failed
            return "### ℹ️ Some models in the menu could not be loaded\n" + "\n".join(lines)
        if fallback in self.registry.loaded():
            what_now = (
                f"The page uses **{fallback}** instead"
                + (SHAPES_NOTICE if fallback == SHAPES_NAME else "")
                + "; the model menu lists every choice.\n\n"
            )
        else:
            what_now = "The studio is running, but it cannot detect anything until the weights are found.\n\n"
        return (
            "### ⚠️ Model weights are not available\n"
            + what_now
            + "\n".join(lines)
            + f"\n\n**What to do:** {WHAT_TO_DO}"
        )

    def retry_loads(self) -> str:
        """The page's Retry button: load the failed models again now (rate-limited), then the banner."""
        if not self.registry.retry():
            wait = self.registry.seconds_to_retry()
            gr.Info(f"Loading was retried moments ago; try again in {wait:.0f} s.")
        return self.banner()

    # ---- events ------------------------------------------------------------------------------------
    @user_errors
    def encode(self, image: ImageInput, model: str | None, use_sam: bool) -> str:
        """Decode and check a new image and run the image encoders (detector, and SAM when masks are on)
        into the cache, so the first prompt on it only runs the text side. Returns a status line."""
        start = time.perf_counter()
        loaded = self.images(image)
        pipeline = self.registry.get(model)
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
    ) -> tuple[str, str, dict[str, Any], dict[str, Any], str]:
        """The full request: (annotated picture path, legend HTML, table, JSON summary, timing line)."""
        start = time.perf_counter()
        pipeline = self.registry.get(model)
        result, calls = self._run(pipeline, image, prompt, box_threshold, text_threshold, nms_iou, use_sam)
        tick = time.perf_counter()
        areas = mask_areas(result)
        picture_path = self._write_picture(render(self._pixels(image), result, areas))
        render_ms = (time.perf_counter() - tick) * 1000
        timings_ms = {name: seconds * 1000 for name, seconds in result.timings.items()}
        timings_ms["render"] = render_ms
        timings_ms["server"] = (time.perf_counter() - start) * 1000
        model_info = {**pipeline.describe(), "detector": self._model_name(model)}
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
        table = {"headers": TABLE_HEADERS, "data": table_rows(result, areas)}
        return (
            str(picture_path),
            legend_html(result),
            table,
            summary,
            timings_markdown(timings_ms, model_info, result.cache),
        )

    def refilter(
        self,
        image: ImageInput,
        prompt: str,
        box_threshold: float,
        text_threshold: float,
        nms_iou: float,
        use_sam: bool,
        model: str | None,
    ) -> tuple[Any, ...]:
        """`segment` for slider moves: with no image or no prompt yet there is nothing to update (no error)."""
        if not image or not (prompt or "").strip():
            return tuple(gr.skip() for _ in range(5))
        return self.segment(image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model)

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
    ) -> str:
        """Zip of `masks/NNN_phrase.png`, `coco.json`, `detections.json` and `annotated.png`."""
        pipeline = self.registry.get(model)
        result, _ = self._run(pipeline, image, prompt, box_threshold, text_threshold, nms_iou, use_sam)
        stem = Path(image).stem if isinstance(image, str) else "image"
        path = self.outputs.new_path(".zip", stem=f"{stem}_grounded_sam")
        return str(write_bundle(result, path, image_name=f"{stem}.png", annotated=annotate(self._pixels(image), result)))

    # ---- helpers -----------------------------------------------------------------------------------
    def _run(
        self,
        pipeline: GroundedSAM,
        image: ImageInput,
        prompt: str,
        box_threshold: float,
        text_threshold: float,
        nms_iou: float,
        use_sam: bool,
    ) -> tuple[GroundedResult, dict[str, int]]:
        """The pipeline result and the model calls it made (delta of `pipeline.stats`; other sessions'
        calls at the same moment may show up in it)."""
        loaded = self.images(image)
        self._check_prompt_size(pipeline, prompt)
        before = pipeline.stats.snapshot()
        run = pipeline.segment if use_sam else pipeline.detect
        result = run(loaded, prompt, box_threshold=box_threshold, text_threshold=text_threshold, nms_iou=nms_iou)
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

    def _model_name(self, model: str | None) -> str:
        """The dropdown's name of the model a request ran on."""
        return model if model in self.registry.factories else self.registry.default_name

    def _pixels(self, image: ImageInput) -> np.ndarray:
        return self.images(image).pixels

    def _write_picture(self, pixels: np.ndarray) -> Path:
        """JPEG, because it encodes ~15x faster than PNG and the slider path has a 50 ms budget."""
        path = self.outputs.new_path(".jpg", stem="annotated")
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
        return path


def _ensure(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    return folder


def warm_image_caches(pipeline: GroundedSAM, loaded: LoadedImage, with_sam: bool) -> dict[str, bool]:
    """Run the image encoders of `pipeline` on `loaded` into its caches; {encoder: was already cached}."""
    hits = pipeline.encode_image(loaded, with_sam=with_sam)
    names = {"image_features": "detector", "sam_embedding": "SAM"}
    return {names[cache]: hit for cache, hit in hits.items()}
