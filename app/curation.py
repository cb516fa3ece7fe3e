"""Curation: one user's edits on top of what the pipeline found, before export (per session, never shared).

The objects of a result are listed in a fixed order, numbered from 1 as in the table: the detector's boxes (the
pipeline's order, highest score first), then the boxes the user added. An edit belongs to a box, keyed like the
mask cache (`grounding.cache.box_key`: the box to 1/100 px), so it survives slider moves where it still makes
sense: a dropped or relabelled detection stays so whenever its box is shown again, clicks stay attached to their
box, and added boxes are always listed. Moving a slider changes which boxes are listed, never what was done to
one. A new image, prompt, detector or segmenter starts clean (`Curation.for_context`).

`Curation` is an immutable value: every operation returns a new one (Gradio keeps it per session and deep-copies
it), with the operation appended to `history` (exported in meta.json). `curate` applies it to a pipeline result:
refined masks come from `GroundedSAM.refine` (one decoder call from the cached image embedding, then cached).
Everything a session can store is bounded (`CurationLimits`).
"""
from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grounding.cache import box_key
from grounding.clicks import MAX_POINTS, check_box, check_points
from grounding.errors import InvalidEditError
from grounding.images import LoadedImage
from grounding.pipeline import GroundedResult, GroundedSAM

BoxKey = tuple[float, float, float, float]
Point = tuple[float, float, int]  # x, y (pixels of the image the models saw), 1 = part of the object / 0 = not
OPERATIONS = ("drop", "restore", "relabel", "add_box", "next_mask", "undo_point", "reset", "clear")


@dataclass(frozen=True)
class CurationLimits:
    """What one session may store: a few kB at most."""

    max_label_chars: int = 100
    max_added_boxes: int = 100
    max_edited_objects: int = 500
    max_history: int = 1000  # older entries are counted, not kept


@dataclass(frozen=True)
class ObjectEdit:
    """What the user did to one object."""

    points: tuple[Point, ...] = ()
    candidate: int | None = None  # None: SAM's single mask; 0-2: one of its three candidates
    dropped: bool = False
    label: str | None = None  # relabelled to this

    @property
    def refined(self) -> bool:
        return bool(self.points) or self.candidate is not None

    def describe(self, source: str) -> str:
        """The table's "edit" cell: "added, relabelled, 2 clicks (+1 −1), mask 2 of 3, dropped"."""
        parts = ["added"] if source == "added" else []
        if self.label is not None and source != "added":
            parts.append("relabelled")
        if self.points:
            keep = sum(label for _, _, label in self.points)
            parts.append(f"{len(self.points)} click{'s' if len(self.points) > 1 else ''} (+{keep} −{len(self.points) - keep})")
        if self.candidate is not None:
            parts.append(f"mask {self.candidate + 1} of 3")
        if self.dropped:
            parts.append("dropped")
        return ", ".join(parts)


@dataclass(frozen=True)
class AddedBox:
    box: BoxKey  # xyxy px, rounded like the keys
    label: str


@dataclass(frozen=True)
class Curation:
    """One session's edits for one context (image, prompt, models). Operations return new values."""

    context: tuple = ()
    edits: dict[BoxKey, ObjectEdit] = field(default_factory=dict)
    added: tuple[AddedBox, ...] = ()
    selected: BoxKey | None = None
    corner: tuple[float, float] | None = None  # first corner of a box being added by two clicks
    history: tuple[dict[str, Any], ...] = ()
    history_dropped: int = 0  # entries beyond `max_history`, oldest first, no longer kept
    limits: CurationLimits = CurationLimits()

    def for_context(self, context: tuple) -> "Curation":
        """These edits if they belong to `context`, else a clean curation for it."""
        return self if context == self.context else Curation(context=context, limits=self.limits)

    @property
    def empty(self) -> bool:
        return not self.edits and not self.added

    def edit_of(self, key: BoxKey) -> ObjectEdit:
        return self.edits.get(key, ObjectEdit())

    # ---- operations ----------------------------------------------------------------------------------
    def select(self, key: BoxKey | None) -> "Curation":
        return dataclasses.replace(self, selected=key, corner=None)

    def set_points(self, key: BoxKey, points: tuple[Point, ...], operation: str = "clicks") -> "Curation":
        if len(points) > MAX_POINTS:
            raise InvalidEditError(f"{len(points)} clicks on one object; at most {MAX_POINTS} are used (SAM needs a few).")
        edit = dataclasses.replace(self.edit_of(key), points=tuple(points))
        return self._with(key, edit, {"op": operation, "box": list(key), "points": [list(p) for p in points]})

    def add_point(self, key: BoxKey, point: Point) -> "Curation":
        return self.set_points(key, (*self.edit_of(key).points, point), operation="click")

    def undo_point(self, key: BoxKey) -> "Curation":
        points = self.edit_of(key).points
        if not points:
            raise InvalidEditError("This object has no click to undo.")
        return self.set_points(key, points[:-1], operation="undo_click")

    def reset(self, key: BoxKey) -> "Curation":
        """Back to the box's own mask (clicks and mask choice gone; label and drop kept)."""
        edit = dataclasses.replace(self.edit_of(key), points=(), candidate=None)
        return self._with(key, edit, {"op": "reset_mask", "box": list(key)})

    def next_mask(self, key: BoxKey) -> "Curation":
        """SAM's single mask -> its candidates 1, 2, 3 -> the single mask again."""
        candidate = self.edit_of(key).candidate
        following = 0 if candidate is None else (None if candidate == 2 else candidate + 1)
        edit = dataclasses.replace(self.edit_of(key), candidate=following)
        return self._with(key, edit, {"op": "next_mask", "box": list(key), "mask": None if following is None else following + 1})

    def drop(self, key: BoxKey, dropped: bool = True) -> "Curation":
        edit = dataclasses.replace(self.edit_of(key), dropped=dropped)
        return self._with(key, edit, {"op": "drop" if dropped else "restore", "box": list(key)})

    def relabel(self, key: BoxKey, label: Any, previous: str) -> "Curation":
        label = self.check_label(label)
        edit = dataclasses.replace(self.edit_of(key), label=None if label == previous else label)
        return self._with(key, edit, {"op": "relabel", "box": list(key), "from": previous, "to": label})

    def add_box(self, box: np.ndarray, label: Any) -> "Curation":
        label = self.check_label(label)
        if len(self.added) >= self.limits.max_added_boxes:
            raise InvalidEditError(f"At most {self.limits.max_added_boxes} boxes can be added to one image.")
        key = box_key(box)
        if any(added.box == key for added in self.added):
            raise InvalidEditError("That box was already added.")
        changed = dataclasses.replace(self, added=(*self.added, AddedBox(key, label)), selected=key, corner=None)
        return changed._logged({"op": "add_box", "box": list(key), "label": label})

    def start_box(self, corner: tuple[float, float]) -> "Curation":
        return dataclasses.replace(self, corner=corner)

    def without_corner(self) -> "Curation":
        """A half-drawn box forgotten (the click mode changed)."""
        return self if self.corner is None else dataclasses.replace(self, corner=None)

    def clear(self) -> "Curation":
        cleared = Curation(context=self.context, history=self.history, history_dropped=self.history_dropped,
                           limits=self.limits)
        return cleared._logged({"op": "clear"})

    def check_label(self, label: Any) -> str:
        """A label as the user typed it, trimmed; InvalidEditError if empty, not text, or too long."""
        if not isinstance(label, str):
            raise InvalidEditError(f"A label must be text, got {type(label).__name__}.")
        label = " ".join(label.split())
        if not label:
            raise InvalidEditError("Type or choose a label first (one of the prompt's phrases, or any text).")
        if len(label) > self.limits.max_label_chars:
            raise InvalidEditError(f"A label is at most {self.limits.max_label_chars} characters ({len(label)} given).")
        if any(unicodedata.category(ch).startswith("C") for ch in label):
            raise InvalidEditError("A label cannot hold control characters.")
        return label

    def _with(self, key: BoxKey, edit: ObjectEdit, entry: dict[str, Any]) -> "Curation":
        edits = dict(self.edits)
        edits[key] = edit
        if edit == ObjectEdit():
            del edits[key]
        elif key not in self.edits and len(edits) > self.limits.max_edited_objects:
            raise InvalidEditError(f"At most {self.limits.max_edited_objects} objects can be edited on one image.")
        return dataclasses.replace(self, edits=edits)._logged(entry)

    def _logged(self, entry: dict[str, Any]) -> "Curation":
        history = (*self.history, entry)
        overflow = max(0, len(history) - self.limits.max_history)
        return dataclasses.replace(self, history=history[overflow:], history_dropped=self.history_dropped + overflow)


@dataclass(frozen=True)
class ListedObject:
    """One numbered object of a curated result."""

    number: int  # 1-based, as in the table
    key: BoxKey
    box: np.ndarray  # [4] xyxy px
    score: float  # the detector's; 1.0 for an added box
    phrase: str  # after relabelling
    detected_phrase: str  # before
    source: str  # "detector" | "added"
    edit: ObjectEdit
    mask: np.ndarray | None  # [H, W] bool, None with masks off
    mask_score: float | None


@dataclass(frozen=True)
class Curated:
    """A result with one session's edits applied: every listed object (dropped ones too), and what is shown."""

    objects: list[ListedObject]
    shown: GroundedResult  # the objects not dropped, as a result (the picture, the status line, the export)

    @property
    def shown_objects(self) -> list[ListedObject]:
        return [obj for obj in self.objects if not obj.edit.dropped]

    def find(self, number: Any) -> ListedObject:
        """The object numbered `number` (the table's #); InvalidEditError if there is none."""
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number != int(number):
            raise InvalidEditError(f"object must be the number in the table's # column, got {number!r}.")
        if not 1 <= number <= len(self.objects):
            listed = f"#1-#{len(self.objects)}" if self.objects else "none"
            raise InvalidEditError(
                f"There is no object #{int(number)} in the current result (listed: {listed}); the thresholds may have "
                "changed what is shown."
            )
        return self.objects[int(number) - 1]

    def by_key(self, key: BoxKey | None) -> ListedObject | None:
        return next((obj for obj in self.objects if obj.key == key), None) if key is not None else None

    def at(self, x: float, y: float) -> ListedObject | None:
        """The shown object under image pixel (x, y): the smallest mask holding it, else the smallest box."""
        xi, yi = int(x), int(y)
        hits = [obj for obj in self.shown_objects
                if obj.mask is not None and 0 <= yi < obj.mask.shape[0] and 0 <= xi < obj.mask.shape[1] and obj.mask[yi, xi]]
        if hits:
            return min(hits, key=lambda obj: int(np.count_nonzero(obj.mask)))
        boxed = [obj for obj in self.shown_objects if obj.box[0] <= x <= obj.box[2] and obj.box[1] <= y <= obj.box[3]]
        return min(boxed, key=lambda obj: float((obj.box[2] - obj.box[0]) * (obj.box[3] - obj.box[1])), default=None)


def curate(curation: Curation, result: GroundedResult, pipeline: GroundedSAM, loaded: LoadedImage) -> Curated:
    """`result` with `curation`'s edits: relabels, drops, added boxes (masked by SAM when masks are on) and refined
    masks (one decoder call per object whose clicks are not cached yet)."""
    with_masks = result.masks is not None
    listed = _detector_rows(result)
    if curation.empty:  # the common case, on every slider move: no copy of the masks
        objects = [ListedObject(number, key, box, score, phrase, phrase, source, ObjectEdit(), mask, mask_score)
                   for number, (key, box, score, phrase, source, mask, mask_score) in enumerate(listed, start=1)]
        return Curated(objects, result)
    if curation.added:
        added_boxes = np.array([added.box for added in curation.added], np.float32).reshape(-1, 4)
        added_masks = pipeline.segment_boxes(loaded, added_boxes) if with_masks else None
        for j, added in enumerate(curation.added):
            mask = added_masks.masks[j] if added_masks is not None else None
            mask_score = float(added_masks.iou_scores[j]) if added_masks is not None else None
            listed.append((added.box, added_boxes[j], 1.0, added.label, "added", mask, mask_score))
    objects = []
    for number, (key, box, score, phrase, source, mask, mask_score) in enumerate(listed, start=1):
        edit = curation.edit_of(key)
        if with_masks and edit.refined:
            decoded = pipeline.refine(loaded, box, [list(p) for p in edit.points], multimask=edit.candidate is not None)
            pick = edit.candidate or 0
            mask, mask_score = decoded.masks[pick], float(decoded.iou_scores[pick])
        objects.append(ListedObject(number, key, box, score, edit.label or phrase, phrase, source, edit, mask, mask_score))
    shown = [obj for obj in objects if not obj.edit.dropped]
    height, width = result.image_size[1], result.image_size[0]
    shown_result = dataclasses.replace(
        result,
        boxes=np.array([obj.box for obj in shown], np.float32).reshape(-1, 4),
        scores=np.array([obj.score for obj in shown], np.float32),
        phrases=[obj.phrase for obj in shown],
        masks=(np.stack([obj.mask for obj in shown]) if shown else np.zeros((0, height, width), bool)) if with_masks else None,
        mask_scores=np.array([obj.mask_score for obj in shown], np.float32) if with_masks else None,
    )
    return Curated(objects, shown_result)


def _detector_rows(result: GroundedResult) -> list[tuple[BoxKey, np.ndarray, float, str, str, np.ndarray | None, float | None]]:
    """(key, box, score, phrase, "detector", mask, mask score) of each detection, in the pipeline's order."""
    with_masks = result.masks is not None
    return [
        (box_key(box), np.asarray(box, np.float32), float(score), phrase, "detector",
         result.masks[i] if with_masks else None,
         float(result.mask_scores[i]) if with_masks and result.mask_scores is not None else None)
        for i, (box, score, phrase) in enumerate(zip(result.boxes, result.scores, result.phrases))
    ]  # fmt: skip


def check_click(x: Any, y: Any, loaded: LoadedImage, keep: int) -> Point:
    """A click on the picture, mapped to image pixels, as a checked point."""
    xy, labels = check_points([[x, y, keep]], loaded.size)
    return float(xy[0, 0]), float(xy[0, 1]), int(labels[0])


def check_added_box(corner: tuple[float, float], x: float, y: float, loaded: LoadedImage) -> np.ndarray:
    return check_box([corner[0], corner[1], x, y], loaded.size)
