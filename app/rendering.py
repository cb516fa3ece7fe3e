"""What the page shows for a pipeline result: the picture, the status line with legend, the table, the JSON and
the details.

The picture is `grounding.drawing.annotate` fitted to the page (long side 640-1280 px: small scenes enlarged,
large photos strided), within the slider budget (< 50 ms server side). The status line says what a newcomer
needs ("3 objects · 0.36 s", one chip per phrase with its colour and count, and for a phrase without a box how
close it came); per-stage timings, cache hits and the backend are in the details.
"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from app.curation import Curated, ListedObject
from grounding.drawing import annotate, class_colour, class_names, view_factor
from grounding.export import detections_json
from grounding.pipeline import GroundedResult

TABLE_HEADERS = ["#", "phrase", "score", "x1", "y1", "x2", "y2", "mask px", "edit"]
ABSENT_COLOUR = "#6b7280"  # grey chip: a prompt phrase that found nothing (4.8:1 on white)
VIEW_SIDES = (640, 1280)  # px, long side of the on-screen picture


@dataclass(frozen=True)
class Marks:
    """What the curation panel draws over the result, in image pixels: the selected object's box, its clicks, and
    the first corner of a box being added."""

    box: np.ndarray | None = None  # [4] xyxy
    points: tuple[tuple[float, float, int], ...] = ()
    corner: tuple[float, float] | None = None


KEEP_COLOUR, REMOVE_COLOUR = (34, 197, 94), (239, 68, 68)  # RGB: a "part of it" click, a "not part of it" click


def render(pixels: np.ndarray, result: GroundedResult, areas: list[int | None] | None = None,
           marks: Marks | None = None) -> np.ndarray:
    """On-screen picture [h, w, 3] uint8 RGB (see `grounding.drawing.annotate`), with `marks` on top."""
    picture = annotate(pixels, result, view_size=VIEW_SIDES, areas=areas)
    if marks is None:
        return picture
    enlarge, stride = view_factor(pixels.shape[1::-1], *VIEW_SIDES)
    scale = enlarge / stride
    thickness = max(2, round(max(picture.shape[:2]) / 250))
    if marks.box is not None:
        x1, y1, x2, y2 = (int(round(v * scale)) for v in marks.box)
        cv2.rectangle(picture, (x1, y1), (x2, y2), (0, 0, 0), thickness + 2)
        cv2.rectangle(picture, (x1, y1), (x2, y2), (255, 255, 255), thickness)
    radius = 3 * thickness
    for x, y, keep in marks.points:
        centre = (int(round(x * scale)), int(round(y * scale)))
        cv2.circle(picture, centre, radius, (255, 255, 255), -1)
        cv2.circle(picture, centre, radius - thickness // 2 - 1, KEEP_COLOUR if keep else REMOVE_COLOUR, -1)
    if marks.corner is not None:
        x, y = (int(round(v * scale)) for v in marks.corner)
        cv2.drawMarker(picture, (x, y), (255, 255, 255), cv2.MARKER_CROSS, 4 * radius, thickness + 2)
        cv2.drawMarker(picture, (x, y), (0, 0, 0), cv2.MARKER_CROSS, 4 * radius, max(1, thickness - 1))
    return picture


def picture_to_image(index: Any, size: tuple[int, int]) -> tuple[float, float]:
    """A click's (x, y) on the on-screen picture of an image of `size` (W, H) -> image pixels (pixel centres)."""
    enlarge, stride = view_factor(size, *VIEW_SIDES)
    x, y = (float(v) for v in index)
    return (x + 0.5) * stride / enlarge, (y + 0.5) * stride / enlarge


def phrase_colours(result: GroundedResult) -> dict[str, str]:
    """Hex colour of every class of `result`, as `grounding.drawing.annotate` draws it."""
    return {name: class_colour(i).as_hex() for i, name in enumerate(class_names([result]))}


def missing_phrase_hints(result: GroundedResult, box_threshold: float) -> list[str]:
    """For each prompt phrase without a box: why, and what to try."""
    present = set(result.phrases)
    hints = []
    for phrase in result.prompt_phrases:
        if phrase in present:
            continue
        best = result.phrase_scores.get(phrase, 0.0)
        if best < 0.05:
            hints.append(f"no box for '{phrase}' (best score {best:.2f}: nothing here looks like it to the model)")
        elif best <= box_threshold:
            hints.append(f"no box for '{phrase}' (best score {best:.2f} — lower the box threshold to see it)")
        else:
            hints.append(
                f"no box labelled '{phrase}' (best score {best:.2f}: its boxes carry a shorter label — lower the "
                f"text threshold — or were removed as overlapping)"
            )
    return hints


def status_html(result: GroundedResult, seconds: float, box_threshold: float, precision: str | None = None,
                selected: str = "") -> str:
    """"3 objects · 0.36 s · bf16", a chip per class with its colour and count (prompt phrases without a box in
    grey), and a hint per phrase without a box; `data-alt` holds the picture's alt text (the page copies it over).
    `precision`: the pipeline's numeric precision (grounding.precision), shown after the time; `selected`: the
    selected object in words (`selection_text`), on a line of its own."""
    counts = Counter(result.phrases)
    chips = []
    for phrase, colour in phrase_colours(result).items():
        count = counts.get(phrase, 0)
        chips.append(
            f'<span class="gsam-chip" style="--chip:{colour if count else ABSENT_COLOUR}">'
            f'<span class="gsam-swatch"></span>{html.escape(phrase)} <b>×{count}</b></span>'
        )
    total = len(result.phrases)
    hints = "".join(f"<li>{html.escape(hint)}</li>" for hint in missing_phrase_hints(result, box_threshold))
    return (
        f'<div class="gsam-legend" data-alt="{html.escape(alt_text(result))}"><b class="gsam-count">{total} '
        f'object{"" if total == 1 else "s"} · {seconds:.2f} s</b>'
        + (f'<span class="gsam-precision" title="numeric precision of the models"> · {html.escape(precision)}</span>'
           if precision else "")
        + f'{"".join(chips)}</div>'
        + (f'<div class="gsam-selected">Selected: {html.escape(selected)}</div>' if selected else "")
        + (f'<ul class="gsam-hints">{hints}</ul>' if hints else "")
    )


def alt_text(result: GroundedResult) -> str:
    """The result picture for a screen reader: "3 objects: red circle ×1, yellow square ×2"."""
    counts = Counter(result.phrases)
    parts = [f"{phrase} ×{counts.get(phrase, 0)}" for phrase in class_names([result])]
    total = len(result.phrases)
    return f"{total} object{'' if total == 1 else 's'}" + (f": {', '.join(parts)}" if parts else "")


def mask_areas(result: GroundedResult) -> list[int | None]:
    """Pixels per mask, or None per detection when masks are off."""
    if result.masks is None:
        return [None] * len(result)
    return [int(np.count_nonzero(mask)) for mask in result.masks]  # per-mask: ~10x faster than axis=1


def table_rows(result: GroundedResult, areas: list[int | None] | None = None) -> list[list[Any]]:
    """One row per detection in the pipeline's order (highest score first), numbered from 1, columns `TABLE_HEADERS`."""
    rows = []
    areas = mask_areas(result) if areas is None else areas
    for index, item in enumerate(detections_json(result, areas=areas), start=1):
        x1, y1, x2, y2 = (round(v, 1) for v in item["box_xyxy"])
        area = item["mask_area"]
        rows.append([index, item["phrase"], round(item["score"], 3), x1, y1, x2, y2, "" if area is None else area, ""])
    return rows


def curated_rows(curated: Curated, areas: list[int | None]) -> list[list[Any]]:
    """The table of a curated result: every listed object (dropped ones too, so they can be restored), numbered
    as the curation numbers them; `areas` are the shown objects' mask areas."""
    shown_areas = iter(areas)
    rows = []
    for obj in curated.objects:
        area = None if obj.edit.dropped else next(shown_areas)
        x1, y1, x2, y2 = (round(float(v), 1) for v in obj.box)
        score = "" if obj.source == "added" else round(obj.score, 3)
        rows.append([obj.number, obj.phrase, score, x1, y1, x2, y2, "" if area is None else area, obj.edit.describe(obj.source)])
    return rows


def selection_text(obj: ListedObject | None) -> str:
    """The selected object in words: "#3 red circle · score 0.62 · 1,234 px · 2 clicks (+1 −1)"."""
    if obj is None:
        return ""
    parts = [f"#{obj.number} {obj.phrase}"]
    parts.append("added by hand" if obj.source == "added" else f"score {obj.score:.2f}")
    if obj.mask is not None:
        parts.append(f"{int(np.count_nonzero(obj.mask)):,} px")
    edit = obj.edit.describe(obj.source).replace("added", "").strip(", ")
    if edit:
        parts.append(edit)
    return " · ".join(parts)


def result_summary(
    result: GroundedResult, extra: dict[str, Any], areas: list[int | None] | None = None
) -> dict[str, Any]:
    """JSON-ready view of a result (boxes xyxy px, scores, phrases, mask areas) followed by `extra`."""
    areas = mask_areas(result) if areas is None else areas
    return {
        "image_size": list(result.image_size),
        "original_size": list(result.original_size),
        "notes": list(result.notes),
        "detections": detections_json(result, areas=areas),
        "phrase_scores": {phrase: round(score, 4) for phrase, score in result.phrase_scores.items()},
        **extra,
    }


def details_markdown(timings_ms: dict[str, float], model: dict[str, Any], cache: dict[str, bool]) -> str:
    """Per-stage milliseconds, where it ran (models, device, deformable-attention backend) and what came from the
    caches."""
    stages = " · ".join(f"{name} {ms:.1f}" for name, ms in timings_ms.items() if name not in ("server", "total"))
    hits = ", ".join(f"{name.replace('_', ' ')} {'cached' if hit else 'computed'}" for name, hit in cache.items())
    return (
        f"**{timings_ms.get('server', 0.0):.0f} ms** on the server: {stages} ms  \n"
        f"models: {model.get('detector')} + {model.get('sam') or 'no SAM'} · device `{model.get('device')}` · "
        f"precision `{model.get('precision')}` · deformable attention `{model.get('deform_attn_backend')}`  \n"
        f"{hits or 'nothing cached yet'}"
    )
