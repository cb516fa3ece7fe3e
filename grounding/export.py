"""Results out of the pipeline: supervision `Detections`, per-object PNG masks, COCO JSON, a zip bundle.

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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv
from PIL import Image

from grounding.pipeline import GroundedResult


def class_names(results: Iterable[GroundedResult]) -> list[str]:
    """Stable class list: prompt phrases in prompt order, then labels outside the prompt, sorted."""
    results = list(results)
    names: list[str] = []
    for result in results:
        names += [p for p in result.prompt_phrases if p not in names]
    extra = sorted({p for result in results for p in result.phrases if p not in names})
    return names + extra


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
    """One COCO JSON dict for many images: `entries` are (file_name, result) pairs, image ids from 1."""
    names = list(names) if names is not None else class_names(result for _, result in entries)
    images, annotations = [], []
    for image_id, (file_name, result) in enumerate(entries, start=1):
        width, height = result.image_size
        images.append({"id": image_id, "file_name": file_name, "width": int(width), "height": int(height)})
        for i, (box, score, phrase) in enumerate(zip(result.boxes, result.scores, result.phrases)):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotation: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": names.index(phrase) + 1,
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "area": round((x2 - x1) * (y2 - y1), 2),
                "score": round(float(score), 4),
                "iscrowd": 0,
            }
            if result.masks is not None:
                annotation["segmentation"] = mask_to_coco_rle(result.masks[i])
                annotation["area"] = int(result.masks[i].sum())
            annotations.append(annotation)
    categories = [{"id": i, "name": name, "supercategory": "object"} for i, name in enumerate(names, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}


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


def annotate(image: np.ndarray | Image.Image, result: GroundedResult, names: Sequence[str] | None = None) -> np.ndarray:
    """[H, W, 3] uint8 RGB with masks, boxes and "phrase 0.42" labels; one colour per class name."""
    scene = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if len(result) == 0:
        return scene
    detections = to_supervision(result, names)
    # supervision draws numpy scenes in BGR order: swap the palette's R and B to draw on RGB.
    palette = sv.ColorPalette([sv.Color(r=c.b, g=c.g, b=c.r) for c in sv.ColorPalette.DEFAULT.colors])
    scale = max(scene.shape[:2]) / 1000.0
    if result.masks is not None:
        scene = sv.MaskAnnotator(color=palette, opacity=0.45).annotate(scene, detections)
    scene = sv.BoxAnnotator(color=palette, thickness=max(1, round(2 * scale))).annotate(scene, detections)
    labels = [f"{phrase} {score:.2f}" for phrase, score in zip(result.phrases, result.scores)]
    scene = sv.LabelAnnotator(
        color=palette, text_scale=max(0.4, 0.5 * scale), text_thickness=max(1, round(scale)), smart_position=True
    ).annotate(scene, detections, labels=labels)
    return scene


def write_bundle(
    result: GroundedResult,
    path: str | Path,
    image_name: str = "image.png",
    annotated: np.ndarray | Image.Image | None = None,
) -> Path:
    """A zip for the UI's download: `masks/NNN_phrase.png`, `coco.json` (image `image_name`),
    `detections.json` (boxes xyxy, scores, phrases, timings) and, if given, `annotated.png`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "image_size": list(result.image_size),
        "original_size": list(result.original_size),
        "notes": result.notes,
        "detections": [
            {"phrase": p, "score": round(float(s), 4), "box_xyxy": [round(float(v), 2) for v in b]}
            for b, s, p in zip(result.boxes, result.scores, result.phrases)
        ],
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("coco.json", json.dumps(to_coco(result, image_name), indent=1))
        archive.writestr("detections.json", json.dumps(summary, indent=1))
        if result.masks is not None:
            for i, (mask, phrase) in enumerate(zip(result.masks, result.phrases)):
                archive.writestr(f"masks/{mask_png_name(i, phrase)}", mask_png_bytes(mask))
        if annotated is not None:
            picture = annotated if isinstance(annotated, Image.Image) else Image.fromarray(np.asarray(annotated))
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            archive.writestr("annotated.png", buffer.getvalue())
    return path
