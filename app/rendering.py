"""What the page shows for a pipeline result: the annotated picture, legend, table, JSON and timing line.

The picture is drawn for the screen, within the slider budget (< 50 ms server side): at most
`DISPLAY_MAX_SIDE` px, masks blended in one vectorised pass (supervision's MaskAnnotator paints mask by
mask with boolean indexing, ~10x slower for a few dozen full-image masks), then supervision's box and
label annotators. The export bundle keeps the full-resolution picture of `grounding.export.annotate`.
Colours come from one rule shared with it: a label's class index in `grounding.export.class_names` (the prompt's
phrases in prompt order, then other labels sorted) picks supervision's default palette entry, so "cat . dog"
always paints cats in the first colour and dogs in the second, whatever the sliders do, for every user.
"""
from __future__ import annotations

import html
from collections import Counter
from typing import Any

import cv2
import numpy as np
import supervision as sv

from grounding.export import class_names, to_supervision
from grounding.pipeline import GroundedResult

TABLE_HEADERS = ["#", "phrase", "score", "x1", "y1", "x2", "y2", "mask px"]
ABSENT_COLOUR = "#9ca3af"  # grey chip: a prompt phrase that found nothing
DISPLAY_MAX_SIDE = 1280  # px of the on-screen picture; larger inputs are drawn on a strided copy
MASK_OPACITY = 0.45
# supervision's annotators draw numpy scenes as BGR; swapping the palette's R and B draws RGB correctly.
BGR_PALETTE = sv.ColorPalette([sv.Color(r=c.b, g=c.g, b=c.r) for c in sv.ColorPalette.DEFAULT.colors])


def blend_masks(
    pixels: np.ndarray, masks: np.ndarray, colours: np.ndarray, opacity: float = MASK_OPACITY,
    areas: list[int] | None = None,
) -> np.ndarray:
    """Overlay masks [N, H, W] bool on pixels [H, W, 3] uint8 with colours [N, 3] uint8 RGB.

    Where masks overlap, the smallest one is on top (it would be hidden otherwise); `areas` [N] are the
    masks' pixel counts when the caller has them. Returns a new array.
    Every step is a contiguous whole-array operation (no per-mask boolean indexing).
    """
    count = len(masks)
    if count == 0:
        return pixels.copy()
    dtype = np.uint8 if count < 256 else np.uint16
    if areas is None:
        areas = [int(np.count_nonzero(mask)) for mask in masks]  # per mask: ~10x faster than axis=1
    priority = np.empty(count, dtype)
    priority[np.argsort(areas, kind="stable")] = np.arange(count, 0, -1)  # smallest mask -> N, largest -> 1
    top = (masks.view(np.uint8).astype(dtype, copy=False) * priority[:, None, None]).max(axis=0)  # [H, W], 0 = none
    lut = np.zeros((count + 1, 3), np.uint8)
    lut[priority] = colours
    layer = np.take(lut, top, axis=0)  # [H, W, 3]
    mixed = cv2.addWeighted(pixels, 1.0 - opacity, layer, opacity, 0.0)
    out = pixels.copy()
    cv2.copyTo(mixed, (top > 0).view(np.uint8), out)
    return out


def render(pixels: np.ndarray, result: GroundedResult, areas: list[int | None] | None = None) -> np.ndarray:
    """On-screen picture [h, w, 3] uint8 RGB: masks, boxes and "phrase 0.42" labels in class colours.

    Images with a side above `DISPLAY_MAX_SIDE` are drawn on a strided copy (every k-th pixel).
    """
    stride = -(-max(pixels.shape[:2]) // DISPLAY_MAX_SIDE)  # ceil
    scene = np.ascontiguousarray(pixels[::stride, ::stride])
    if len(result) == 0:
        return scene.copy()
    detections = to_supervision(result)
    detections.xyxy = detections.xyxy / stride
    if result.masks is not None:
        rgb = np.array([c.as_rgb() for c in sv.ColorPalette.DEFAULT.colors], np.uint8)
        colours = rgb[detections.class_id % len(rgb)]
        scene = blend_masks(scene, result.masks[:, ::stride, ::stride], colours, areas=areas)
    else:
        scene = scene.copy()
    detections.mask = None  # drawn above
    scale = max(scene.shape[:2]) / 1000.0
    scene = sv.BoxAnnotator(color=BGR_PALETTE, thickness=max(1, round(2 * scale))).annotate(scene, detections)
    labels = [f"{phrase} {score:.2f}" for phrase, score in zip(result.phrases, result.scores)]
    return sv.LabelAnnotator(
        color=BGR_PALETTE, text_scale=max(0.4, 0.5 * scale), text_thickness=max(1, round(scale)),
        text_padding=max(3, round(6 * scale)),
    ).annotate(scene, detections, labels=labels)


def phrase_colours(result: GroundedResult) -> dict[str, str]:
    """Hex colour of every class of `result`, as `grounding.export.annotate` draws it."""
    return {name: sv.ColorPalette.DEFAULT.by_idx(i).as_hex() for i, name in enumerate(class_names([result]))}


def legend_html(result: GroundedResult) -> str:
    """"N objects" then one chip per class with its colour and count; zero-count prompt phrases in grey."""
    counts = Counter(result.phrases)
    chips = []
    for phrase, colour in phrase_colours(result).items():
        count = counts.get(phrase, 0)
        chips.append(
            f'<span class="gsam-chip" style="--chip:{colour if count else ABSENT_COLOUR}">'
            f'<span class="gsam-swatch"></span>{html.escape(phrase)} <b>×{count}</b></span>'
        )
    total = len(result.phrases)
    return f'<div class="gsam-legend"><b>{total} object{"" if total == 1 else "s"}</b>{"".join(chips)}</div>'


def mask_areas(result: GroundedResult) -> list[int | None]:
    """Pixels per mask, or None per detection when masks are off."""
    if result.masks is None:
        return [None] * len(result)
    return [int(np.count_nonzero(mask)) for mask in result.masks]  # per-mask: ~10x faster than axis=1


def table_rows(result: GroundedResult, areas: list[int | None] | None = None) -> list[list[Any]]:
    """One row per detection in the pipeline's order (highest score first), columns `TABLE_HEADERS`."""
    rows = []
    areas = mask_areas(result) if areas is None else areas
    for index, (phrase, score, box, area) in enumerate(zip(result.phrases, result.scores, result.boxes, areas)):
        x1, y1, x2, y2 = (round(float(v), 1) for v in box)
        rows.append([index, phrase, round(float(score), 3), x1, y1, x2, y2, "" if area is None else area])
    return rows


def result_summary(
    result: GroundedResult, extra: dict[str, Any], areas: list[int | None] | None = None
) -> dict[str, Any]:
    """JSON-ready view of a result (boxes xyxy px, scores, phrases, mask areas) followed by `extra`."""
    areas = mask_areas(result) if areas is None else areas
    return {
        "image_size": list(result.image_size),
        "original_size": list(result.original_size),
        "notes": list(result.notes),
        "detections": [
            {
                "phrase": phrase,
                "score": round(float(score), 4),
                "box_xyxy": [round(float(v), 2) for v in box],
                "mask_area": area,
            }
            for phrase, score, box, area in zip(result.phrases, result.scores, result.boxes, areas)
        ],
        **extra,
    }


def timings_markdown(timings_ms: dict[str, float], model: dict[str, Any], cache: dict[str, bool]) -> str:
    """Per-stage milliseconds, then where it ran (device, deformable-attention backend) and cache hits."""
    server = timings_ms.get("server", 0.0)
    stages = " · ".join(f"{name} {ms:.1f}" for name, ms in timings_ms.items() if name not in ("server", "total"))
    hits = " ".join(f"{name.replace('_', ' ')} {'✓' if hit else '✗'}" for name, hit in cache.items())
    return (
        f"**{server:.0f} ms** on the server ({stages} ms)  \n"
        f"device `{model.get('device')}` · deformable attention `{model.get('deform_attn_backend')}` · "
        f"cache hits: {hits or '—'}"
    )
