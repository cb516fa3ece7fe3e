"""Which pipelines the studio offers, and loading them once, on demand, from the command-line settings.

A `ModelRegistry` maps a display name (what the model dropdown shows) to a factory. Each pipeline is
built at most once. A factory that fails (weights missing, a hub download that times out, a checkpoint of
the wrong shape) is tried again only on purpose: once `retry_after_s` has passed, or when someone presses
the page's Retry button (`retry`, itself at most once per `MIN_RETRY_INTERVAL_S`). Until then its error is
answered at once, so page loads and requests never re-run a slow failing load.
Tests inject their own factories; `registry_from_settings` builds the real ones.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch

from app.settings import StudioSettings
from grounding.cache import PipelineCaches
from grounding.checkpoint import display_name
from grounding.errors import GroundingError, WeightsUnavailableError
from grounding.pipeline import GroundedSAM
from grounding.precision import resolve_precision
from grounding.segmenters import load_segmenter
from grounding.segmenters.sam import default_sam_variant
from grounding.shipped import SHAPES_NAME, load_shapes_pipeline, shapes_available

PipelineFactory = Callable[[], GroundedSAM]
MIN_RETRY_INTERVAL_S = 30.0  # explicit retries (the page's button) are public: one per this interval
log = logging.getLogger(__name__)


class ModelRegistry:
    """Display name -> lazily built model (a `GroundedSAM` pipeline, or a segmenter); thread-safe, each built once,
    failures retried on purpose."""

    def __init__(
        self,
        factories: dict[str, PipelineFactory],
        sam_enabled: bool = True,
        retry_after_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        segmenters: "ModelRegistry | None" = None,
    ) -> None:
        """`segmenters`: the segmenter choices (name -> segmenter) beside these pipelines, if more may be offered."""
        if not factories:
            raise ValueError("the studio needs at least one pipeline factory")
        self.factories = dict(factories)
        self.sam_enabled = sam_enabled
        self.segmenters = segmenters
        self.retry_after_s = retry_after_s
        self.clock = clock
        self.load_attempts = 0  # factory calls, successful or not
        self._pipelines: dict[str, GroundedSAM] = {}
        self._errors: dict[str, GroundingError] = {}
        self._failed_at: dict[str, float] = {}
        self._last_retry: float | None = None
        self._locks = {name: threading.Lock() for name in factories}

    @property
    def names(self) -> list[str]:
        return list(self.factories)

    @property
    def default_name(self) -> str:
        """The first model in order that has loaded (the fallback once `load_all` ran), else the first."""
        return next((name for name in self.names if name in self._pipelines), self.names[0])

    def get(self, name: str | None) -> GroundedSAM:
        """The pipeline called `name` (None: the default); raises the loader's GroundingError if it fails, or
        failed less than `retry_after_s` ago."""
        name = name or self.default_name
        if name not in self.factories:
            raise WeightsUnavailableError(f"Unknown model {name!r}; choose one of {self.names}.")
        with self._locks[name]:
            if name in self._pipelines:
                return self._pipelines[name]
            error = self._errors.get(name)
            if error is not None and self.clock() - self._failed_at[name] < self.retry_after_s:
                raise type(error)(str(error))
            log.info("loading model %r", name)
            self.load_attempts += 1
            try:
                self._pipelines[name] = self.factories[name]()
            except GroundingError as error:
                self._errors[name], self._failed_at[name] = error, self.clock()
                log.warning("model %r could not be loaded: %s", name, error)
                raise
            self._errors.pop(name, None)
            return self._pipelines[name]

    def load_all(self) -> dict[str, str]:
        """Load every model not loaded yet (failed ones only once their retry time has come); returns
        {name: what to do} for those that are not available."""
        for name in self.names:
            try:
                self.get(name)
            except GroundingError:
                pass
        return {name: str(error) for name, error in self._errors.items()}

    def failures(self) -> dict[str, GroundingError]:
        """{name: the error of its last load} for the models that are not available."""
        return dict(self._errors)

    def retry(self) -> bool:
        """Try the failed models again now; False (nothing tried) within `MIN_RETRY_INTERVAL_S` of the last."""
        now = self.clock()
        if self._last_retry is not None and now - self._last_retry < MIN_RETRY_INTERVAL_S:
            return False
        self._last_retry = now
        for name in list(self._errors):
            self._failed_at[name] = now - self.retry_after_s  # due now
        self.load_all()
        return True

    def seconds_to_retry(self) -> float:
        """How long until the page's Retry button may try again (0: now)."""
        if self._last_retry is None:
            return 0.0
        return max(0.0, MIN_RETRY_INTERVAL_S - (self.clock() - self._last_retry))

    def loaded(self) -> dict[str, GroundedSAM]:
        return dict(self._pipelines)


def segmenter_display_name(spec: str, device: torch.device) -> str:
    """Menu label of a --sam value: "auto" as the variant it picks on `device`, a file or folder by its name."""
    return default_sam_variant(device) if spec == "auto" else display_name(spec)


def registry_from_settings(settings: StudioSettings) -> ModelRegistry:
    """One pipeline per --detector and one segmenter per --sam; they share the device, one set of caches and one
    run lock (one model call at a time on the device). Each pipeline starts with the first segmenter that loads;
    `registry.segmenters` offers the others."""
    from grounding.detector import GroundingDetector

    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(settings.precision, device)
    caches = PipelineCaches()
    run_lock = threading.Lock()
    segmenters = None
    if settings.sam_enabled:
        specs = settings.segmenters or ("auto",)
        segmenters = ModelRegistry(
            {segmenter_display_name(spec, device): (lambda spec=spec: load_segmenter(spec, settings.sam_checkpoint, device))
             for spec in specs},
            retry_after_s=settings.limits.load_retry_s,
        )

    def factory(spec: str) -> PipelineFactory:
        if spec == SHAPES_NAME:  # the shipped demo bundle brings its own SAM
            return lambda: load_shapes_pipeline(device, caches, run_lock=run_lock, precision=precision)

        def build() -> GroundedSAM:
            # Try both models, so the page names everything that is missing at once.
            problems, detector, sam = [], None, None
            try:
                detector = GroundingDetector.from_pretrained(spec, device=device)
            except GroundingError as error:
                problems.append(f"Grounding DINO ({spec}): {error}")
            try:
                sam = segmenters.get(None) if segmenters is not None else None
            except GroundingError as error:
                problems.append(f"SAM: {error} (or start with `--sam none` for boxes only)")
            if problems:
                raise WeightsUnavailableError("\n".join(problems))
            return GroundedSAM(detector, sam, caches=caches, run_lock=run_lock, precision=precision)

        return build

    specs = list(settings.detectors)
    if SHAPES_NAME not in {display_name(spec) for spec in specs} and shapes_available():
        specs.append(SHAPES_NAME)  # offered always, and the fallback when the real weights cannot be had
    return ModelRegistry(
        {display_name(spec): factory(spec) for spec in specs},
        sam_enabled=settings.sam_enabled,
        retry_after_s=settings.limits.load_retry_s,
        segmenters=segmenters,
    )
