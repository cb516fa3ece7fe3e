"""Tracking on footage with known truth (shipped shapes models): one id per object for its whole time in view,
boxes and masks that fit, an entering object found within a keyframe interval, a leaving one's track ended;
and the tracker's contract on the tiny random models (keyframes, carried boxes, boxes only)."""
from __future__ import annotations

import numpy as np
import pytest

from grounding.errors import InvalidOptionError, InvalidPromptError, InvalidThresholdError
from grounding.pipeline import GroundedSAM
from grounding.video import TrackerConfig, VideoTracker
from tests.video.conftest import PROMPT

IN_VIEW = 0.9  # an object counts as in view when this much of it is inside the picture


def box_of(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union)


def follow(tracked, truth, phrase):
    """Per frame where `phrase` is in view: (track id or None, box IoU, mask IoU) of the best matching object."""
    full = max(t[phrase].sum() for t in truth if phrase in t)
    rows = {}
    for index, (frame, objects) in enumerate(zip(tracked, truth)):
        if phrase not in objects or objects[phrase].sum() < IN_VIEW * full:
            continue
        true_box = box_of(objects[phrase])
        best = max(frame.objects, key=lambda o: box_iou(o.box, true_box), default=None)
        if best is None or box_iou(best.box, true_box) < 0.5:
            rows[index] = (None, 0.0, 0.0)
            continue
        mask = best.mask
        rows[index] = (best.track_id, box_iou(best.box, true_box), float((mask & objects[phrase]).sum() / (mask | objects[phrase]).sum()))
    return rows


@pytest.fixture(scope="module", params=[1, 5])  # every frame; the default
def tracked(request, shapes, footage):
    tracker = VideoTracker(shapes, PROMPT, TrackerConfig(keyframe_interval=request.param), fps=30)
    return request.param, [tracker.step(frame) for frame in footage[0]]


@pytest.mark.parametrize("phrase", ["red circle", "blue square", "green star", "yellow triangle"])
def test_every_object_keeps_one_id_and_fits_its_truth(tracked, footage, phrase):
    _, frames = tracked
    rows = follow(frames, footage[1], phrase)
    ids = [row[0] for row in rows.values()]
    switches = sum(a != b for a, b in zip(ids, ids[1:]) if a is not None and b is not None)
    found = [row for row in rows.values() if row[0] is not None]
    box_ok = sum(row[1] >= 0.7 for row in rows.values()) / len(rows)
    mask_iou = float(np.mean([row[2] for row in found]))
    print(f"\n{phrase}: {len(rows)} frames in view, id switches {switches}, box IoU >= 0.7 on {box_ok:.0%}, "
          f"mask IoU {mask_iou:.3f}")
    assert switches <= 1
    assert box_ok >= 0.9
    assert mask_iou >= 0.75


def test_the_entering_object_gets_a_new_id_within_a_keyframe_interval(tracked, footage):
    interval, frames = tracked
    rows = follow(frames, footage[1], "green star")
    entered = min(rows)  # first frame with the star (nearly) all in view
    first_id = min(i for i, row in rows.items() if row[0] is not None)
    assert first_id - entered <= interval  # ByteTrack confirms on the frame after the keyframe that finds it
    others = {row[0] for phrase in ("red circle", "blue square", "yellow triangle")
              for row in follow(frames, footage[1], phrase).values()}
    assert rows[first_id][0] not in others  # a new id


def test_the_leaving_object_ends_its_track(tracked, footage):
    _, frames = tracked
    truth = footage[1]
    gone = next(i for i in range(len(truth)) if i > 0 and "yellow triangle" not in truth[i])
    triangle = follow(frames, truth, "yellow triangle")
    track_id = next(row[0] for row in triangle.values() if row[0] is not None)
    last_seen = max(i for i, frame in enumerate(frames) if any(o.track_id == track_id for o in frame.objects))
    assert last_seen < gone  # followed while in view (see the test above), not beyond
    assert all(o.phrase != "yellow triangle" for frame in frames[gone:] for o in frame.objects)


def test_keyframes_run_the_detector_and_other_frames_do_not(tiny_detector, tiny_segmenter, photo):
    pipeline = GroundedSAM(tiny_detector, tiny_segmenter)
    tracker = VideoTracker(pipeline, "red block . blue block", TrackerConfig(keyframe_interval=3, box_threshold=0.0), fps=10)
    frames = [tracker.step(np.roll(photo, shift, axis=1)) for shift in range(7)]
    assert [f.keyframe for f in frames] == [True, False, False, True, False, False, True]
    stats = tracker.pipeline.stats
    assert stats.detector_text_runs == 3 and stats.sam_image_encodes == 7  # SAM every frame, the detector on 3
    assert pipeline.stats.model_calls == 0  # the video ran on caches of its own, not the shared ones
    for frame in frames:
        for obj in frame.objects:
            assert obj.mask is not None and obj.mask.shape == photo.shape[:2]
            assert 0 <= obj.box[0] <= obj.box[2] <= photo.shape[1] and 0 <= obj.box[1] <= obj.box[3] <= photo.shape[0]


def test_boxes_only_tracking_moves_boxes_by_their_motion(tiny_detector, photo):
    tracker = VideoTracker(GroundedSAM(tiny_detector, None), "red block", TrackerConfig(keyframe_interval=10, box_threshold=0.0))
    frames = [tracker.step(photo) for _ in range(3)]
    assert frames[0].objects and all(o.mask is None for f in frames for o in f.objects)
    first = {o.track_id: o.box for o in frames[1].objects}
    for obj in frames[2].objects:  # a still picture: no motion, the carried boxes stay put
        np.testing.assert_allclose(obj.box, first[obj.track_id], atol=1e-4)


@pytest.mark.parametrize("config, prompt, error", [
    (TrackerConfig(keyframe_interval=0), "cat", InvalidOptionError),
    (TrackerConfig(keyframe_interval=2.5), "cat", InvalidOptionError),
    (TrackerConfig(box_threshold=1.5), "cat", InvalidThresholdError),
    (TrackerConfig(), " . ", InvalidPromptError),
])
def test_bad_settings_are_refused_before_any_frame(tiny_detector, config, prompt, error):
    with pytest.raises(error):
        VideoTracker(GroundedSAM(tiny_detector, None), prompt, config)
