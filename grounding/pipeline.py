"""GroundedSAM: image + text prompt -> boxes, phrases and masks, with caches that make sliders live.

A request reads top-down:

    load_image -> image_key ─┬─ [raw cache] (image, prompt) -> RawDetections ── hit: no model runs
                             │     miss: [image cache] detector.encode_image (Swin, once per image)
                             │           detector.run_text (BERT + transformer, per prompt)
                             ├─ detector.filter (thresholds) -> same-phrase + class-agnostic NMS  (always, ~ms)
                             └─ [mask cache] (image, box) -> mask ── missing boxes only:
                                   [image cache] segmenter.encode_image (SAM ViT, once per image)
                                   segmenter.decode_boxes (all missing boxes in one batched call)

So a threshold or NMS move runs no model at all, a new prompt on a seen image runs neither image encoder,
and a box seen before never goes through SAM's decoder again. Every model call holds `run_lock` (pipelines
on one device share one), so two forwards never overlap on a device, whatever asked for them; a request
answered from the caches never waits for it.

Public API (consumed by the UI in `app/`):
    pipeline = GroundedSAM.from_names(detector="swint_ogc", sam="vit_b", device=None)
    result = pipeline.segment(image, "cat . remote control .", box_threshold=0.35, text_threshold=0.25,
                              nms_iou=None, same_phrase_nms_iou=0.8, multimask=False)
    result.boxes [N,4] xyxy px, result.scores [N], result.phrases [N], result.masks [N,H,W] bool,
    result.timings {stage: seconds}, result.cache {cache: hit?}, result.image_size (W, H), result.notes,
    result.phrase_scores {prompt phrase: best score, boxed or not}
    pipeline.detect(...) is the same without masks; pipeline.stats counts model calls;
    pipeline.encode_image(image) fills the image caches ahead of a prompt; pipeline.describe() names models and
    device (display names, never file paths).
"""
from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch
import torchvision

from grounding.cache import CacheConfig, PipelineCaches, box_key, image_key
from grounding.clicks import check_box, check_points, points_key
from grounding.errors import InvalidThresholdError, WeightsUnavailableError
from grounding.images import ImageLimits, LoadedImage, load_image
from grounding.postprocess import check_threshold
from grounding.precision import autocast_dtype, inference_precision, resolve_precision
from grounding.results import Detections
from grounding.segmenters import SEGMENTER_NAMES, SamMasks, Segmenter, load_segmenter
from grounding.text import normalize_caption, split_phrases, tokenize_caption

# Class-agnostic NMS is off by default, as in the official demos. 0.5 is the value to offer when a prompt
# names one thing twice ("dog . puppy ."): Grounded-SAM's automatic labelling uses 0.5 with torchvision's NMS.
SUGGESTED_NMS_IOU = 0.5
# The detector runs in fp32 under every policy: on 100 held-out scenes the shipped shapes detector's scores moved
# by up to 0.26 with its text side in bf16, and by up to 0.11 (3 of 273 detections over 0.03) with only its image
# encoder in bf16; the segmenters' image encoders in bf16 kept every mask (IoU >= 0.985). README "Precision".
DETECTOR_PRECISION = "fp32"
# Two boxes of the same label overlapping this much are one object found twice (the shapes example gave two
# "yellow square" boxes at IoU 0.98); distinct objects of one kind rarely overlap that much.
SAME_PHRASE_NMS_IOU = 0.8


class Detector(Protocol):
    """What GroundedSAM needs from `grounding.detector.GroundingDetector`."""

    def encode_image(self, image: Any) -> Any: ...
    def run_text(self, encoding: Any, prompt: str) -> Any: ...
    def filter(self, raw: Any, box_threshold: float, text_threshold: float) -> Detections: ...
    def phrase_scores(self, raw: Any) -> dict[str, float]: ...


@dataclass(frozen=True)
class GroundedResult(Detections):
    """Detections of one image plus masks and bookkeeping. Boxes and masks are in the frame of the image
    the models saw: the input, or its downscaled copy when it exceeded the size limit (see `notes`)."""

    masks: np.ndarray | None = None  # [N, H, W] bool, or None from detect()
    mask_scores: np.ndarray | None = None  # [N] float32 SAM's predicted IoU per mask
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, plus "total"
    cache: dict[str, bool] = field(default_factory=dict)  # cache consulted -> hit (only those consulted)
    image_size: tuple[int, int] = (0, 0)  # (W, H) of boxes' and masks' frame
    original_size: tuple[int, int] = (0, 0)  # (W, H) of the input (after EXIF rotation)
    prompt_phrases: list[str] = field(default_factory=list)  # the prompt's phrases, in order (stable classes)
    notes: list[str] = field(default_factory=list)  # what was done to the input (downscaled, converted, ...)
    phrase_scores: dict[str, float] = field(default_factory=dict)  # best score per prompt phrase, boxed or not


@dataclass
class PipelineStats:
    """Model calls made by one GroundedSAM (what the cache tests count)."""

    detector_image_encodes: int = 0  # Swin + input projection
    detector_text_runs: int = 0  # BERT + encoder/decoder, once per prompt chunk set
    sam_image_encodes: int = 0  # SAM ViT
    sam_decoder_calls: int = 0  # batched prompt-encoder + mask-decoder calls
    sam_masks_decoded: int = 0  # boxes that went through the decoder

    def snapshot(self) -> dict[str, int]:
        return asdict(self)

    @property
    def model_calls(self) -> int:
        return self.detector_image_encodes + self.detector_text_runs + self.sam_image_encodes + self.sam_decoder_calls


def class_agnostic_nms(boxes: np.ndarray, scores: np.ndarray, iou: float | None) -> np.ndarray:
    """Indices to keep (highest score first) after NMS across all phrases; None or >= 1 keeps all."""
    if iou is None or iou >= 1.0 or len(boxes) < 2:
        return np.argsort(-scores, kind="stable")
    keep = torchvision.ops.nms(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores), float(iou))
    return keep.numpy()


def same_phrase_nms(boxes: np.ndarray, scores: np.ndarray, phrases: list[str], iou: float | None) -> np.ndarray:
    """Indices to keep (highest score first) after NMS among boxes of the same label; None or >= 1 keeps all."""
    if iou is None or iou >= 1.0 or len(boxes) < 2:
        return np.argsort(-scores, kind="stable")
    labels = {phrase: index for index, phrase in enumerate(dict.fromkeys(phrases))}
    groups = torch.as_tensor([labels[phrase] for phrase in phrases])
    boxes_t = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return torchvision.ops.batched_nms(boxes_t, torch.as_tensor(scores), groups, float(iou)).numpy()


def check_nms_iou(value: float | None, name: str = "nms_iou") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 <= value <= 1:
        raise InvalidThresholdError(f"{name} must be None (off) or a number between 0 and 1, got {value!r}")
    return float(value)


def _model_id(model: Any, fallback: str) -> str:
    return str(getattr(model, "model_id", None) or f"{fallback}@{id(model):x}")


def _model_name(model: Any, fallback: str) -> str:
    return str(getattr(model, "name", None) or fallback)


class GroundedSAM:
    """Grounding DINO boxes + SAM masks behind content-keyed caches. Safe to call from several threads."""

    def __init__(
        self,
        detector: Detector,
        segmenter: Segmenter | None = None,
        cache_config: CacheConfig | None = None,
        image_limits: ImageLimits | None = None,
        caches: PipelineCaches | None = None,
        run_lock: threading.Lock | None = None,
        precision: str = "fp32",
    ) -> None:
        """`segmenter=None` gives a boxes-only pipeline (`segment` then raises WeightsUnavailableError).
        `caches` may be shared between pipelines over different models: keys include the model ids and the
        precision. `run_lock` is held around every model call; pipelines on the same device should share one.
        `precision`: "fp32" | "bf16" | "fp16", the policy of `grounding.precision` (resolve "auto" first)."""
        self.detector = detector
        self.segmenter = segmenter
        self.caches = caches or PipelineCaches(cache_config or CacheConfig())
        self.image_limits = image_limits or ImageLimits()
        autocast_dtype(precision)
        self.precision = precision
        # cache keys: the weights, and for the segmenter the precision its image encoder ran in
        self.detector_id = _model_id(detector, "detector")
        self.segmenter_id = f"{_model_id(segmenter, 'sam')}@{precision}" if segmenter is not None else None
        self.run_lock = run_lock or threading.Lock()
        self.stats = PipelineStats()
        self._stats_lock = threading.Lock()

    @classmethod
    def from_names(
        cls,
        detector: str = "swint_ogc",
        sam: str | None = "auto",
        device: str | torch.device | None = None,
        sam_checkpoint: str | Path | None = None,
        download: bool = True,
        cache_config: CacheConfig | None = None,
        precision: str = "auto",
    ) -> "GroundedSAM":
        """Load both models by name.

        detector: "swint_ogc" | "swinb_cogcoor" | "mm_grounding_dino_tiny" | "llmdet_base" | ... (the names of
            `grounding.checkpoint.KNOWN_WEIGHTS`) | a hub repo id | a local .pth / .safetensors / directory (see
            `GroundingDetector.from_pretrained`).
        sam: "vit_b" | "vit_l" | "vit_h" | "sam2.1_hiera_tiny" | "sam_hq_vit_b" | ... (`SEGMENTER_NAMES`) |
            "auto" (vit_h on a GPU, vit_b on CPU) | a SAM .pth | a SAM 2 / SAM-HQ folder | None (boxes only).
        sam_checkpoint: a local SAM .pth for a SAM variant (else $SAM_CHECKPOINT, the cache, or a download).
        precision: "auto" | "fp32" | "bf16" | "fp16" (`grounding.precision.resolve_precision`).
        Raises WeightsUnavailableError (an unknown name lists the valid ones) / CheckpointMismatchError.
        """
        from grounding.detector import GroundingDetector

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        grounding_detector = GroundingDetector.from_pretrained(detector, device=device, download=download)
        segmenter = None if sam is None else load_segmenter(sam, sam_checkpoint, device, download)
        return cls(grounding_detector, segmenter, cache_config=cache_config,
                   precision=resolve_precision(precision, device))

    def with_segmenter(self, segmenter: Segmenter | None) -> "GroundedSAM":
        """The same detector, caches, limits and run lock with another segmenter (loading nothing)."""
        return GroundedSAM(self.detector, segmenter, caches=self.caches, image_limits=self.image_limits,
                           run_lock=self.run_lock, precision=self.precision)

    def with_caches(self, cache_config: CacheConfig) -> "GroundedSAM":
        """The same models, limits and run lock behind caches of their own (a video's frames would otherwise push
        every other user's images out of shared caches)."""
        return GroundedSAM(self.detector, self.segmenter, cache_config=cache_config, image_limits=self.image_limits,
                           run_lock=self.run_lock, precision=self.precision)

    @property
    def device(self) -> str:
        device = getattr(self.detector, "device", None) or (self.segmenter.device if self.segmenter else "cpu")
        return str(device)

    def describe(self) -> dict[str, Any]:
        """Models, device and deformable-attention backend in use (for the UI's status line)."""
        from grounding.ops.ms_deform_attn import backend

        return {
            "detector": _model_name(self.detector, "detector"),
            "sam": _model_name(self.segmenter, "sam") if self.segmenter is not None else None,
            "device": self.device,
            "precision": self.precision,
            "deform_attn_backend": backend(self.device),
        }

    def detect(
        self,
        image: Any,
        prompt: str | list[str],
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        nms_iou: float | None = None,
        same_phrase_nms_iou: float | None = SAME_PHRASE_NMS_IOU,
    ) -> GroundedResult:
        """Boxes, scores and phrases for `prompt` in `image` (masks None).

        image: path, bytes, PIL image or numpy array (see `grounding.images.load_image`).
        prompt: "cat . remote control ." or ["cat", "remote control"]; longer than 256 tokens is chunked.
        box_threshold: keep a box whose best token probability exceeds this, in [0, 1].
        text_threshold: tokens above this form the phrase label, in [0, 1].
        nms_iou: class-agnostic NMS IoU in [0, 1]; None (default) or 1.0 is off. See SUGGESTED_NMS_IOU.
        same_phrase_nms_iou: NMS among boxes of the same label (one object found twice), in [0, 1]; None or
            1.0 is off. Applied before `nms_iou`.
        Raises InvalidImageError, InvalidPromptError, InvalidThresholdError.
        """
        return self._run(
            image, prompt, box_threshold, text_threshold, nms_iou, same_phrase_nms_iou, masks=False, multimask=False
        )

    def segment(
        self,
        image: Any,
        prompt: str | list[str],
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        nms_iou: float | None = None,
        multimask: bool = False,
        same_phrase_nms_iou: float | None = SAME_PHRASE_NMS_IOU,
    ) -> GroundedResult:
        """`detect` plus one SAM mask per box at the image's resolution.

        multimask: ask SAM for three masks per box and keep the one with the best predicted IoU.
        Raises what `detect` raises, and WeightsUnavailableError if no SAM is loaded.
        """
        self._require_segmenter()
        return self._run(
            image, prompt, box_threshold, text_threshold, nms_iou, same_phrase_nms_iou, masks=True, multimask=multimask
        )

    def refine(self, image: Any, box: Any, points: Any = (), multimask: bool = False) -> SamMasks:
        """One object's mask from its box plus clicked points, decoded from the cached SAM embedding (the image
        encoder runs only if the embedding is not cached). Results are cached like the box masks.

        box: [x1, y1, x2, y2] and points: [[x, y, 1 | 0], ...] (1 = part of the object, 0 = not), in pixels of the
        image the models saw (`GroundedResult.image_size`, the frame of its boxes).
        Returns SamMasks [K, H, W]: SAM's single mask (multimask=False) or its three candidates in its order.
        Raises InvalidEditError (bad points or box), InvalidImageError, WeightsUnavailableError (no SAM).
        """
        self._require_segmenter()
        loaded = load_image(image, self.image_limits)
        box = check_box(box, loaded.size)
        xy, labels = check_points(points, loaded.size)
        key = image_key(loaded.pixels)
        cache_key = (self.segmenter_id, key, box_key(box), points_key(xy, labels), bool(multimask), "points")

        def decode() -> tuple[np.ndarray, np.ndarray]:
            embedding, _ = self.caches.sam_embeddings.get_or_create(
                (self.segmenter_id, key), lambda: self._encode_for_sam(loaded)
            )
            with self._model_call("fp32", sam_decoder_calls=1, sam_masks_decoded=1):
                decoded = self.segmenter.decode_points(embedding, box, xy, labels, multimask=multimask)
            return decoded.masks, decoded.iou_scores

        masks, iou_scores = self.caches.masks.get_or_create(cache_key, decode)[0]
        return SamMasks(masks, iou_scores)

    def segment_boxes(self, image: Any, boxes: Any) -> SamMasks:
        """Masks for boxes given by hand ([[x1, y1, x2, y2], ...] in pixels of the image the models saw), through
        the same caches and batched decoder call as the detector's boxes. Raises InvalidEditError for a bad box."""
        self._require_segmenter()
        loaded = load_image(image, self.image_limits)
        checked = np.stack([check_box(box, loaded.size) for box in boxes]) if len(boxes) else np.zeros((0, 4), np.float32)
        return self._masks(loaded, image_key(loaded.pixels), checked, False, {}, {})

    def encode_image(self, image: Any, with_sam: bool = True) -> dict[str, bool]:
        """Run the image encoders on `image` into the caches now (e.g. on upload, before a prompt is typed),
        so the first `segment` on it only runs the text part. Returns {cache: was already there}."""
        loaded = load_image(image, self.image_limits)
        key = image_key(loaded.pixels)
        hits = {}
        _, hits["image_features"] = self.caches.image_features.get_or_create(
            (self.detector_id, key), lambda: self._encode_for_detector(loaded)
        )
        if with_sam and self.segmenter is not None:
            _, hits["sam_embedding"] = self.caches.sam_embeddings.get_or_create(
                (self.segmenter_id, key), lambda: self._encode_for_sam(loaded)
            )
        return hits

    def _require_segmenter(self) -> None:
        if self.segmenter is None:
            raise WeightsUnavailableError(
                "No SAM model is loaded, so masks are unavailable: turn masks off, or load a segmenter "
                f"(GroundedSAM.from_names(sam=...): {', '.join(SEGMENTER_NAMES)})."
            )

    @contextmanager
    def _model_call(self, precision: str | None = None, **counts: int) -> Iterator[None]:
        """Hold the device's run lock for one model call in `precision` (default: the pipeline's), then add
        `counts` to `stats`."""
        with self.run_lock, inference_precision(self.device, precision or self.precision):
            yield
        with self._stats_lock:
            for counter, amount in counts.items():
                setattr(self.stats, counter, getattr(self.stats, counter) + amount)

    def _run(
        self,
        image: Any,
        prompt: str | list[str],
        box_threshold: float,
        text_threshold: float,
        nms_iou: float | None,
        same_phrase_nms_iou: float | None,
        masks: bool,
        multimask: bool,
    ) -> GroundedResult:
        start = time.perf_counter()
        timings: dict[str, float] = {}
        cache_hits: dict[str, bool] = {}

        # Cheap checks first, so a bad slider value or empty prompt never waits for an image encoder.
        box_threshold = check_threshold(box_threshold, "box_threshold")
        text_threshold = check_threshold(text_threshold, "text_threshold")
        nms_iou = check_nms_iou(nms_iou)
        same_phrase_nms_iou = check_nms_iou(same_phrase_nms_iou, "same_phrase_nms_iou")
        caption = normalize_caption(prompt)

        tick = time.perf_counter()
        loaded = load_image(image, self.image_limits)
        key = image_key(loaded.pixels)
        timings["load_image"] = time.perf_counter() - tick

        raw, cache_hits["raw_detections"] = self.caches.raw_detections.get_or_create(
            (self.detector_id, key, caption), lambda: self._raw_detections(loaded, key, caption, timings, cache_hits)
        )

        tick = time.perf_counter()
        detections = self.detector.filter(raw, box_threshold, text_threshold)
        timings["filter"] = time.perf_counter() - tick

        tick = time.perf_counter()
        boxes = np.asarray(detections.boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(detections.scores, np.float32).reshape(-1)
        phrases = list(detections.phrases)
        kept = same_phrase_nms(boxes, scores, phrases, same_phrase_nms_iou)
        boxes, scores, phrases = boxes[kept].reshape(-1, 4), scores[kept].reshape(-1), [phrases[i] for i in kept]
        kept = class_agnostic_nms(boxes, scores, nms_iou)
        boxes, scores, phrases = boxes[kept].reshape(-1, 4), scores[kept].reshape(-1), [phrases[i] for i in kept]
        timings["nms"] = time.perf_counter() - tick

        sam_masks = self._masks(loaded, key, boxes, multimask, timings, cache_hits) if masks else None
        timings["total"] = time.perf_counter() - start
        return GroundedResult(
            boxes=boxes,
            scores=scores,
            phrases=phrases,
            masks=sam_masks.masks if sam_masks is not None else None,
            mask_scores=sam_masks.iou_scores if sam_masks is not None else None,
            timings=timings,
            cache=cache_hits,
            image_size=loaded.size,
            original_size=loaded.original_size,
            prompt_phrases=split_phrases(caption),
            notes=list(loaded.notes),
            phrase_scores=self.detector.phrase_scores(raw),
        )

    def _raw_detections(
        self, loaded: LoadedImage, key: str, caption: str, timings: dict[str, float], cache_hits: dict[str, bool]
    ) -> Any:
        """Level-2 miss: the detector's text stage on the (cached) image encoding."""
        tokenizer = getattr(self.detector, "tokenizer", None)
        if tokenizer is not None:  # prompt errors (too long a phrase, too many chunks) before any model runs
            tokenize_caption(caption, tokenizer)
        tick = time.perf_counter()
        encoding, cache_hits["image_features"] = self.caches.image_features.get_or_create(
            (self.detector_id, key), lambda: self._encode_for_detector(loaded)
        )
        timings["detector_image"] = time.perf_counter() - tick
        tick = time.perf_counter()
        with self._model_call(DETECTOR_PRECISION, detector_text_runs=1):
            raw = self.detector.run_text(encoding, caption)
        timings["detector_text"] = time.perf_counter() - tick
        return raw

    def _encode_for_detector(self, loaded: LoadedImage) -> Any:
        with self._model_call(DETECTOR_PRECISION, detector_image_encodes=1):
            return self.detector.encode_image(loaded.to_pil())

    def _encode_for_sam(self, loaded: LoadedImage) -> Any:
        assert self.segmenter is not None
        with self._model_call(sam_image_encodes=1):
            return self.segmenter.encode_image(loaded.pixels)

    def _masks(
        self,
        loaded: LoadedImage,
        key: str,
        boxes: np.ndarray,
        multimask: bool,
        timings: dict[str, float],
        cache_hits: dict[str, bool],
    ) -> SamMasks:
        """Level-3 lookups per box; the missing boxes go through SAM's decoder in one batched call."""
        assert self.segmenter is not None
        width, height = loaded.size
        mask_keys = [(self.segmenter_id, key, box_key(box), multimask) for box in boxes]
        cached = [self.caches.masks.get(k) for k in mask_keys]
        missing = [i for i, entry in enumerate(cached) if entry is None]
        cache_hits["masks"] = not missing
        if missing:
            tick = time.perf_counter()
            embedding, cache_hits["sam_embedding"] = self.caches.sam_embeddings.get_or_create(
                (self.segmenter_id, key), lambda: self._encode_for_sam(loaded)
            )
            timings["sam_image"] = time.perf_counter() - tick
            tick = time.perf_counter()
            # the mask decoder and its post-processing stay fp32 (cheap, and where masks are decided)
            with self._model_call("fp32", sam_decoder_calls=1, sam_masks_decoded=len(missing)):
                decoded = self.segmenter.decode_boxes(embedding, boxes[missing], multimask=multimask)
            for j, i in enumerate(missing):
                entry = (decoded.masks[j], np.float32(decoded.iou_scores[j]))
                self.caches.masks.put(mask_keys[i], entry)
                cached[i] = entry
            timings["sam_decode"] = time.perf_counter() - tick
        tick = time.perf_counter()
        if cached:
            stacked = np.stack([entry[0] for entry in cached])  # [N, H, W] bool
            iou_scores = np.array([entry[1] for entry in cached], np.float32)
        else:
            stacked, iou_scores = np.zeros((0, height, width), bool), np.zeros((0,), np.float32)
        timings["assemble_masks"] = time.perf_counter() - tick
        return SamMasks(stacked, iou_scores)
