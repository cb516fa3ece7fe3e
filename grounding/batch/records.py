"""The per-image steps every engine runs, in order, with the same code:

    read_image (CPU)  ->  label_image (the models)  ->  encode_record (CPU)  ->  a record (one JSON line of a shard)

Between steps an image travels as a flat row of str / int / bytes (`to_row` / `from_row`), the form Ray Data
moves between workers; the local engine passes the same objects directly. Masks travel bit-packed, pixels raw.

A record holds the image id, its SHA-256, its size (upright: after EXIF rotation), per object the phrase, score,
COCO bbox [x, y, w, h], area and compressed RLE, all in that frame (a downscaled working copy's boxes and masks
are mapped back, as the studio's export does), and how the models ran (device kind, precision). A failed image's
record holds its error instead.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from grounding.batch.config import BatchConfig
from grounding.batch.inputs import ImageItem
from grounding.drawing import annotate, class_names
from grounding.errors import GroundingError
from grounding.export import coco_annotation, frame_scale, masks_in_original_frame
from grounding.cache import CacheConfig
from grounding.images import LoadedImage, load_image
from grounding.pipeline import GroundedResult, GroundedSAM
from grounding.shipped import load_named_pipeline

# Every image is new to a batch run: keep one image's features (what one call reuses), nothing across images.
BATCH_CACHES = CacheConfig(image_entries=1, raw_entries=1, mask_entries=64, mask_bytes=64 << 20)


@dataclass
class ReadImage:
    """A decoded image on its way to the models, or the reason it could not be read."""

    id: str
    sha256: str = ""
    pixels: bytes = b""  # [H, W, 3] uint8 RGB, C order
    width: int = 0  # of pixels (the working frame)
    height: int = 0
    original_width: int = 0  # as stored
    original_height: int = 0
    notes: str = "[]"  # JSON list of what was done to the image
    error: str = ""

    def loaded(self) -> LoadedImage:
        pixels = np.frombuffer(self.pixels, np.uint8).reshape(self.height, self.width, 3)
        return LoadedImage(pixels, (self.original_width, self.original_height), tuple(json.loads(self.notes)))


@dataclass
class LabelledImage:
    """What the models found in one image (working frame), ready to encode, or the error."""

    id: str
    sha256: str = ""
    result: str = "{}"  # JSON: boxes, scores, phrases, image_size, original_size, prompt_phrases, notes
    masks: bytes = b""  # np.packbits of [N, H, W] bool, C order
    annotated: bytes = b""  # PNG, when asked for
    error: str = ""


@dataclass
class EncodedImage:
    """A finished record (JSON) plus its annotated PNG for the writer."""

    id: str
    record: str = "{}"
    annotated: bytes = b""


def to_row(step: ReadImage | LabelledImage | EncodedImage) -> dict[str, Any]:
    return asdict(step)


def from_row(kind: type, row: dict[str, Any]) -> Any:
    """`kind(**row)` with numpy scalars and bytes-likes from a Ray batch made plain."""
    plain = {}
    for name in kind.__dataclass_fields__:
        value = row[name]
        plain[name] = value.item() if isinstance(value, np.generic) and not isinstance(value, np.bytes_) else value
        if isinstance(plain[name], (np.bytes_, bytearray, memoryview)):
            plain[name] = bytes(plain[name])
    return kind(**plain)


def load_pipeline(config: BatchConfig, device: str | None = None) -> GroundedSAM:
    """The run's models (`config.detector`, "shapes" included, and `config.sam`) on `device` (default
    `config.device`), behind caches bounded to one image. Raises WeightsUnavailableError and the like."""
    pipeline = load_named_pipeline(config.detector, sam=config.sam, device=device or config.device,
                                   sam_checkpoint=config.sam_checkpoint, precision=config.precision,
                                   download=config.download)
    return pipeline.with_caches(BATCH_CACHES)


def read_image(item: ImageItem, config: BatchConfig) -> ReadImage:
    """Read, hash and decode one file (EXIF rotation, colour conversion, downscale above the size limit)."""
    try:
        size = os.path.getsize(item.path)
        if size > config.max_file_bytes:
            raise GroundingError(f"the file is {size / 2**20:.0f} MiB, over the {config.max_file_bytes / 2**20:.0f} MiB limit")
        data = Path(item.path).read_bytes()
        loaded = load_image(data, config.image_limits)
    except Exception as error:  # OSError, a decoder's own error, ...: recorded, the run goes on
        return ReadImage(item.id, error=_describe(error).replace("The uploaded data", "The file", 1))
    return ReadImage(item.id, hashlib.sha256(data).hexdigest(), loaded.pixels.tobytes(), loaded.size[0], loaded.size[1],
                     loaded.original_size[0], loaded.original_size[1], json.dumps(list(loaded.notes)))


def label_image(pipeline: GroundedSAM, image: ReadImage, config: BatchConfig) -> LabelledImage:
    """The detector (and SAM) on one read image; any error is recorded, not raised (one image must not stop a run of
    millions, nor every rerun of it)."""
    if image.error:
        return LabelledImage(image.id, image.sha256, error=image.error)
    options = dict(box_threshold=config.box_threshold, text_threshold=config.text_threshold, nms_iou=config.nms_iou)
    try:
        loaded = image.loaded()
        if pipeline.segmenter is not None:
            result = pipeline.segment(loaded, config.prompt, multimask=config.multimask, **options)
        else:
            result = pipeline.detect(loaded, config.prompt, **options)
        summary = {
            "boxes": np.asarray(result.boxes, np.float32).reshape(-1, 4).tolist(),
            "scores": np.asarray(result.scores, np.float32).tolist(),
            "phrases": list(result.phrases),
            "image_size": list(result.image_size),
            "original_size": list(result.original_size),
            "prompt_phrases": list(result.prompt_phrases),
            "notes": list(result.notes),
            "ran_as": {"device": torch.device(pipeline.device).type, "precision": pipeline.precision},
        }
        masks = np.packbits(result.masks, axis=None).tobytes() if result.masks is not None else b""
        picture = _png(annotate(loaded.pixels, result, class_names([result]))) if config.annotated else b""
    except Exception as error:
        return LabelledImage(image.id, image.sha256, error=_describe(error))
    return LabelledImage(image.id, image.sha256, json.dumps(summary), masks, picture)


def encode_record(labelled: LabelledImage) -> EncodedImage:
    """RLE masks and COCO boxes in the stored image's frame (upright, after EXIF rotation): the record a shard
    keeps. An error becomes an error record."""
    if not labelled.error:
        try:
            return EncodedImage(labelled.id, json.dumps(_record(labelled)), labelled.annotated)
        except Exception as error:
            labelled = LabelledImage(labelled.id, labelled.sha256, error=_describe(error))
    return EncodedImage(labelled.id, json.dumps({"id": labelled.id, "sha256": labelled.sha256, "error": labelled.error}))


def _record(labelled: LabelledImage) -> dict[str, Any]:
    result = _result(labelled)
    sx, sy = frame_scale(result)
    boxes = np.asarray(result.boxes, np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
    masks = masks_in_original_frame(result) if result.masks is not None else None
    objects = []
    for box, score, phrase in zip(boxes, result.scores, result.phrases):
        annotation = coco_annotation(0, 0, 0, box, score, next(masks) if masks is not None else None)
        objects.append({"phrase": phrase, **{key: annotation[key] for key in ("score", "bbox", "area", "segmentation")
                                             if key in annotation}})
    width, height = (int(v) for v in result.original_size)
    return {"id": labelled.id, "sha256": labelled.sha256, "width": width, "height": height,
            "prompt_phrases": result.prompt_phrases, "objects": objects, "notes": result.notes,
            "ran_as": json.loads(labelled.result)["ran_as"]}


def label_item(pipeline: GroundedSAM, item: ImageItem, config: BatchConfig) -> EncodedImage:
    """All three steps for one image (the local engine)."""
    return encode_record(label_image(pipeline, read_image(item, config), config))


def _result(labelled: LabelledImage) -> GroundedResult:
    summary = json.loads(labelled.result)
    width, height = summary["image_size"]
    count = len(summary["phrases"])
    masks = None
    if labelled.masks:
        bits = np.unpackbits(np.frombuffer(labelled.masks, np.uint8), count=count * height * width)
        masks = bits.reshape(count, height, width).astype(bool)
    return GroundedResult(
        boxes=np.asarray(summary["boxes"], np.float32).reshape(-1, 4), scores=np.asarray(summary["scores"], np.float32),
        phrases=summary["phrases"], masks=masks, image_size=(width, height),
        original_size=tuple(summary["original_size"]), prompt_phrases=summary["prompt_phrases"], notes=summary["notes"],
    )


def _png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def _describe(error: BaseException) -> str:
    """A record's error text: the message of an error a user can fix, else the exception's type and message."""
    return str(error) if isinstance(error, GroundingError) else f"{type(error).__name__}: {error}"
