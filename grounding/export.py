"""Results out of the pipeline: supervision `Detections`, per-object PNG masks, COCO JSON, a zip bundle.

The zip (`write_bundle`) is in the frame of the image as it was handed in: when the pipeline worked on a
downscaled copy, boxes are scaled back and masks resized with the same mapping (each original pixel takes the
mask value at its centre's position in the working frame), one mask at a time, so a large photo with many
objects never holds all full-size masks at once.

COCO output follows the detection format (Lin et al. 2014): `bbox` is [x, y, width, height] in pixels,
`segmentation` is a compressed RLE {"size": [H, W], "counts": str} in column-major order, as written by
pycocotools (encoded with supervision's `mask_to_rle`, decodable by `rle_to_mask` or pycocotools), `score`
is the detector score. Categories are the prompt's phrases in prompt order (ids from 1), then any other
label in alphabetical order, so the same prompt always gives the same ids.
"""
from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import supervision as sv
from PIL import Image

from grounding.drawing import class_names
from grounding.pipeline import GroundedResult


def to_supervision(result: GroundedResult, names: Sequence[str] | None = None) -> sv.Detections:
    """`sv.Detections` with xyxy, confidence, mask, class_id (index in `names`, default `class_names`)
    and `data["class_name"]`, ready for supervision's annotators and sinks."""
    names = list(names) if names is not None else class_names([result])
    missing = sorted(set(result.phrases) - set(names))
    if missing:
        raise ValueError(f"labels {missing} are not in the class names given")
    return sv.Detections(
        xyxy=np.asarray(result.boxes, np.float32).reshape(-1, 4),
        mask=result.masks,
        confidence=np.asarray(result.scores, np.float32),
        class_id=np.array([names.index(p) for p in result.phrases], dtype=int),
        data={"class_name": np.array(result.phrases, dtype=str)},
    )


def mask_to_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """[H, W] bool -> {"size": [H, W], "counts": compressed RLE str} (pycocotools' format)."""
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": sv.mask_to_rle(mask, compressed=True)}


def coco_rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of `mask_to_coco_rle`: [H, W] bool."""
    height, width = rle["size"]
    return sv.rle_to_mask(rle["counts"], (width, height))


def coco_dataset(entries: Sequence[tuple[str, GroundedResult]], names: Sequence[str] | None = None) -> dict[str, Any]:
    """One COCO JSON dict for many images: `entries` are (file_name, result) pairs, image ids from 1; boxes and
    masks in each result's own frame."""
    names = list(names) if names is not None else class_names([result for _, result in entries])
    images, annotations = [], []
    for image_id, (file_name, result) in enumerate(entries, start=1):
        width, height = result.image_size
        images.append({"id": image_id, "file_name": file_name, "width": int(width), "height": int(height)})
        masks = iter(result.masks) if result.masks is not None else None
        for box, score, phrase in zip(result.boxes, result.scores, result.phrases):
            annotations.append(coco_annotation(
                len(annotations) + 1, image_id, names.index(phrase) + 1, box, score, next(masks) if masks else None
            ))
    return {"images": images, "annotations": annotations, "categories": coco_categories(names)}


def coco_categories(names: Sequence[str]) -> list[dict[str, Any]]:
    """COCO categories for class names in order (ids from 1)."""
    return [{"id": i, "name": name, "supercategory": "object"} for i, name in enumerate(names, start=1)]


def coco_annotation(
    annotation_id: int, image_id: int, category_id: int, box: np.ndarray, score: float, mask: np.ndarray | None
) -> dict[str, Any]:
    """One COCO annotation: bbox [x, y, w, h] from an xyxy box; with a mask, its RLE and pixel area."""
    x1, y1, x2, y2 = (float(v) for v in box)
    annotation: dict[str, Any] = {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
        "area": round((x2 - x1) * (y2 - y1), 2),
        "score": round(float(score), 4),
        "iscrowd": 0,
    }
    if mask is not None:
        annotation["segmentation"] = mask_to_coco_rle(mask)
        annotation["area"] = int(mask.sum())
    return annotation


def to_coco(result: GroundedResult, file_name: str = "image.png") -> dict[str, Any]:
    """COCO JSON dict for one image."""
    return coco_dataset([(file_name, result)])


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "object"


def mask_png_name(index: int, phrase: str) -> str:
    return f"{index:03d}_{_slug(phrase)}.png"


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """[H, W] bool -> 8-bit grayscale PNG, 255 inside the object, 0 outside."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def write_mask_pngs(result: GroundedResult, directory: str | Path) -> list[Path]:
    """One PNG per object, `{index:03d}_{phrase}.png`, in score order; [] when there are no masks."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if result.masks is None:
        return []
    paths = []
    for i, (mask, phrase) in enumerate(zip(result.masks, result.phrases)):
        path = directory / mask_png_name(i, phrase)
        path.write_bytes(mask_png_bytes(mask))
        paths.append(path)
    return paths


def detections_json(
    result: GroundedResult, boxes: np.ndarray | None = None, areas: Sequence[int | None] | None = None
) -> list[dict[str, Any]]:
    """The detections as JSON-ready dicts: phrase, score, box xyxy px (`boxes`, default the result's), mask area."""
    boxes = result.boxes if boxes is None else boxes
    areas = areas if areas is not None else [None] * len(result)
    return [
        {"phrase": phrase, "score": round(float(score), 4), "box_xyxy": [round(float(v), 2) for v in box],
         "mask_area": area}
        for phrase, score, box, area in zip(result.phrases, result.scores, boxes, areas)
    ]


def frame_scale(result: GroundedResult) -> tuple[float, float]:
    """(sx, sy) from the result's working frame to the image as handed in."""
    (width, height), (original_width, original_height) = result.image_size, result.original_size
    return original_width / width, original_height / height


def masks_in_original_frame(result: GroundedResult) -> Iterator[np.ndarray]:
    """The result's masks one at a time, [H, W] bool at `original_size`: each original pixel takes the working
    mask's value at its centre (the mapping that scales the boxes)."""
    size = tuple(int(v) for v in result.original_size)
    for mask in result.masks if result.masks is not None else ():
        if tuple(mask.shape[::-1]) == size:
            yield mask
        else:
            yield cv2.resize(mask.view(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT).view(bool)


def write_bundle(
    result: GroundedResult,
    path: str | Path,
    image_name: str = "image.png",
    annotated: np.ndarray | Image.Image | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """A zip for the UI's download, in the frame of the image as handed in (`result.original_size`):
    `masks/NNN_phrase.png`, `coco.json` (image `image_name`), `detections.json` (boxes xyxy, scores, phrases,
    mask areas), `meta.json` (`meta` plus both frames) and, if given, `annotated.png` (the working frame)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sx, sy = frame_scale(result)
    boxes = np.asarray(result.boxes, np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
    names = class_names([result])
    width, height = (int(v) for v in result.original_size)
    annotations, areas = [], []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        masks = masks_in_original_frame(result) if result.masks is not None else None
        for i, (box, score, phrase) in enumerate(zip(boxes, result.scores, result.phrases)):
            mask = next(masks) if masks is not None else None
            annotations.append(coco_annotation(i + 1, 1, names.index(phrase) + 1, box, score, mask))
            areas.append(annotations[-1]["area"] if mask is not None else None)
            if mask is not None:
                archive.writestr(f"masks/{mask_png_name(i, phrase)}", mask_png_bytes(mask))
        coco = {
            "images": [{"id": 1, "file_name": image_name, "width": width, "height": height}],
            "annotations": annotations,
            "categories": coco_categories(names),
        }
        archive.writestr("coco.json", json.dumps(coco, indent=1))
        summary = {"image_size": [width, height], "notes": result.notes,
                   "detections": detections_json(result, boxes, areas)}
        archive.writestr("detections.json", json.dumps(summary, indent=1))
        frames = {"file_name": image_name, "original_size": [width, height],
                  "working_size": list(result.image_size), "frame": "original"}
        archive.writestr("meta.json", json.dumps({**(meta or {}), "image": frames}, indent=1))
        if annotated is not None:
            picture = annotated if isinstance(annotated, Image.Image) else Image.fromarray(np.asarray(annotated))
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            archive.writestr("annotated.png", buffer.getvalue())
    return path
