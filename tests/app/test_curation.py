"""app.curation: the operations on one session's edits, their bounds, and how they apply to a pipeline result."""
from __future__ import annotations

import numpy as np
import pytest

from app.curation import Curation, CurationLimits, curate
from grounding.errors import InvalidEditError
from grounding.pipeline import GroundedSAM
from tests.pipeline.conftest import tiny_detector  # noqa: F401 (fixtures)

KEY = (10.0, 20.0, 60.0, 80.0)


def test_operations_are_values_with_a_history():
    start = Curation(context=("image", "cat", "m", ""))
    edited = start.add_point(KEY, (30.0, 40.0, 1)).add_point(KEY, (50.0, 60.0, 0)).next_mask(KEY)
    assert start.empty and start.history == ()  # the original is untouched
    assert edited.edit_of(KEY).points == ((30.0, 40.0, 1), (50.0, 60.0, 0)) and edited.edit_of(KEY).candidate == 0
    assert edited.edit_of(KEY).describe("detector") == "2 clicks (+1 −1), mask 1 of 3"
    cycled = edited.next_mask(KEY).next_mask(KEY).next_mask(KEY)
    assert cycled.edit_of(KEY).candidate is None  # single -> 1 -> 2 -> 3 -> single
    undone = edited.undo_point(KEY).reset(KEY)
    assert KEY not in undone.edits  # nothing left to remember
    assert [entry["op"] for entry in undone.history] == ["click", "click", "next_mask", "undo_click", "reset_mask"]
    assert start.for_context(start.context) is start
    assert edited.for_context(("other image", "cat", "m", "")).empty


def test_relabel_to_the_detected_phrase_is_no_edit():
    relabelled = Curation().relabel(KEY, "  tabby   cat ", previous="cat")
    assert relabelled.edit_of(KEY).label == "tabby cat"
    assert KEY not in relabelled.relabel(KEY, "cat", previous="cat").edits


@pytest.mark.parametrize("label, message", [
    ("x" * 10_000, "at most 100 characters"), ("", "Type or choose"), ("  \t ", "Type or choose"),
    (42, "must be text"), ("bad\x00label", "control characters"),
])
def test_labels_are_checked(label, message):
    with pytest.raises(InvalidEditError, match=message):
        Curation().relabel(KEY, label, previous="cat")


def test_a_session_stores_a_bounded_amount():
    limits = CurationLimits(max_added_boxes=3, max_edited_objects=4, max_history=5)
    curation = Curation(limits=limits)
    for i in range(3):
        curation = curation.add_box(np.array([i, 0, i + 10, 10], np.float32), "thing")
    with pytest.raises(InvalidEditError, match="At most 3 boxes"):
        curation.add_box(np.array([50, 0, 60, 10], np.float32), "thing")
    with pytest.raises(InvalidEditError, match="already added"):
        Curation().add_box(np.array(KEY), "a").add_box(np.array(KEY), "b")
    for i in range(4):
        curation = curation.drop((float(i), 0.0, 1.0, 1.0))
    with pytest.raises(InvalidEditError, match="At most 4 objects"):
        curation.drop((9.0, 0.0, 1.0, 1.0))
    assert len(curation.history) == 5 and curation.history_dropped == 2  # 7 operations, the last 5 kept
    with pytest.raises(InvalidEditError, match="at most 32"):
        Curation().set_points(KEY, ((1.0, 1.0, 1),) * 33)


def test_curate_applies_drops_labels_clicks_and_added_boxes(tiny_detector, tiny_segmenter, photo):
    pipeline = GroundedSAM(tiny_detector, tiny_segmenter)
    result = pipeline.segment(photo, "red block . blue block", box_threshold=0.0)
    assert len(result) >= 2
    plain = curate(Curation(), result, pipeline, photo_loaded(pipeline, photo))
    assert plain.shown is result and [obj.number for obj in plain.objects] == list(range(1, len(result) + 1))
    first, second = plain.objects[0], plain.objects[1]
    curation = (Curation().drop(second.key).relabel(first.key, "crate", first.phrase)
                .add_point(first.key, (40.0, 40.0, 0)).add_box(np.array([5, 5, 50, 50], np.float32), "lid"))
    curated = curate(curation, result, pipeline, photo_loaded(pipeline, photo))
    assert len(curated.objects) == len(result) + 1 and len(curated.shown) == len(result)  # one dropped, one added
    assert curated.shown.phrases[0] == "crate" and curated.shown.phrases[-1] == "lid"
    refined = pipeline.refine(photo, first.box, [[40.0, 40.0, 0]]).masks[0]
    assert np.array_equal(curated.shown.masks[0], refined) and not np.array_equal(refined, first.mask)
    assert np.array_equal(curated.shown.masks[-1], pipeline.segment_boxes(photo, [[5, 5, 50, 50]]).masks[0])
    assert curated.find(len(result) + 1).source == "added"
    with pytest.raises(InvalidEditError, match="no object #0"):
        curated.find(0)
    x, y = (first.box[:2] + first.box[2:]) / 2
    assert curated.at(x, y) is not None


def photo_loaded(pipeline, photo):
    from grounding.images import load_image

    return load_image(photo, pipeline.image_limits)
