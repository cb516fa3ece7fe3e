"""Do two runs give the same detections of one image (fp32 vs bf16, one checkpoint vs another)? Each detection of
one run is paired with the unused same-phrase detection of the other that it overlaps most (IoU >= 0.5); the
pairs then say how far boxes, scores and masks moved, and a detection without a twin is reported with its
score (one near the box threshold may fairly exist in one run only)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import supervision as sv

PAIR_IOU = 0.5  # below this two boxes are not one object found twice


@dataclass
class Agreement:
    """The pairs of two runs and their worst differences; `unpaired_scores` from both sides."""

    pairs: list[tuple[int, int]] = field(default_factory=list)  # (index in a, index in b)
    box_ious: list[float] = field(default_factory=list)  # per pair
    score_diffs: list[float] = field(default_factory=list)  # per pair, absolute
    mask_ious: list[float] = field(default_factory=list)  # per pair (empty without masks)
    unpaired_scores: list[float] = field(default_factory=list)


def pair_detections(a, b) -> tuple[list[tuple[int, int]], list[int]]:
    """Greedy twins: for each detection of `a` in order, the best-overlapping unused same-phrase detection of `b`
    at IoU >= PAIR_IOU. Returns (pairs, indices of `a` left unpaired). `a`, `b`: Detections or GroundedResult."""
    ious = sv.box_iou_batch(np.asarray(a.boxes, np.float32), np.asarray(b.boxes, np.float32)) if len(a) and len(b) else np.zeros((len(a), len(b)))
    pairs, unpaired, used = [], [], set()
    for i in range(len(a)):
        candidates = [(ious[i, j], j) for j in range(len(b)) if j not in used and b.phrases[j] == a.phrases[i]]
        best_iou, best = max(candidates, default=(0.0, -1))
        if best >= 0 and best_iou >= PAIR_IOU:
            pairs.append((i, best))
            used.add(best)
        else:
            unpaired.append(i)
    return pairs, unpaired


def compare_detections(a, b) -> Agreement:
    """`a` vs `b` (Detections, or GroundedResults with masks): the pairs' box IoUs, score differences and mask IoUs,
    and the scores of detections of either run that have no twin."""
    pairs, unpaired_a = pair_detections(a, b)
    _, unpaired_b = pair_detections(b, a)
    agreement = Agreement(pairs=pairs)
    agreement.unpaired_scores = [float(a.scores[i]) for i in unpaired_a] + [float(b.scores[j]) for j in unpaired_b]
    for i, j in pairs:
        agreement.box_ious.append(float(sv.box_iou_batch(a.boxes[i : i + 1], b.boxes[j : j + 1])[0, 0]))
        agreement.score_diffs.append(abs(float(a.scores[i]) - float(b.scores[j])))
        if getattr(a, "masks", None) is not None and getattr(b, "masks", None) is not None:
            both_empty = not a.masks[i].any() and not b.masks[j].any()
            agreement.mask_ious.append(1.0 if both_empty else float(sv.mask_iou_batch(a.masks[i : i + 1], b.masks[j : j + 1])[0, 0]))
    return agreement
