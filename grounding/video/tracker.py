"""Text-prompted tracking, frame by frame: the detector on keyframes, ByteTrack for identities, SAM for masks.

Every `keyframe_interval`-th frame (the first included) runs the whole pipeline: Grounding DINO's boxes for the
prompt, and SAM's mask for each. Between keyframes no detector runs: each object's keyframe box moves along by the
object's motion (px per frame: from its detector boxes at its last two keyframes, or, for a new object, from its
mask frame to frame), and SAM, prompted with that box, cuts the object's mask in the new frame (kept within the
box grown by `CARRY_MARGIN`). An object whose carried mask vanishes (it left the picture) is carried no further.
The box stays the detector's, moved: a mask's extent would follow SAM's errors (a star's missed tip). With masks
off, the boxes move the same way.

Identities come from supervision's ByteTrack, fed every frame (the keyframe's detections or the carried ones):
it matches boxes to tracks by IoU after its Kalman prediction, starts a track for a detection no track explains,
and ends one unmatched for `lost_track_buffer` frames. An object that appears mid-video is found at the next
keyframe and gets a new id there (ByteTrack confirms a new track on its second frame, so it is reported from
the frame after). Why SAM (the image model) carries the objects and not SAM 2's video propagation: every
segmenter the studio loads does it the same way, memory stays one frame deep, and the detector re-anchors every
object at each keyframe. SAM 2 video propagation would need a segmenter-specific memory bank.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import supervision as sv

from grounding.cache import CacheConfig
from grounding.errors import InvalidOptionError
from grounding.pipeline import GroundedSAM, check_nms_iou
from grounding.postprocess import check_threshold
from grounding.text import normalize_caption

CARRY_MARGIN = 0.25  # a carried mask is kept within its prompt grown by this fraction of its side, each way
MIN_MASK_PIXELS = 4  # a carried mask smaller than this means the object is gone
# A video's frames pass through once: caches of their own, a frame or two deep.
VIDEO_CACHES = CacheConfig(image_entries=2, image_bytes=256 << 20, raw_entries=2, raw_bytes=64 << 20,
                           mask_entries=64, mask_bytes=128 << 20)  # fmt: skip


@dataclass(frozen=True)
class TrackerConfig:
    keyframe_interval: int = 5  # run the detector on every k-th frame (1 = every frame)
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    nms_iou: float | None = None
    masks: bool = True  # SAM masks (which also say when a carried object has left); False: boxes only
    lost_track_buffer: int = 30  # frames a track survives unmatched (at 30 fps; ByteTrack scales it by fps)
    track_activation_threshold: float = 0.25  # ByteTrack: detections at or above this can start a track
    minimum_matching_threshold: float = 0.8  # ByteTrack: 1 - IoU above this never matches

    def checked(self) -> "TrackerConfig":
        """Raises InvalidThresholdError / InvalidOptionError for a value out of range; returns self."""
        check_threshold(self.box_threshold, "box_threshold")
        check_threshold(self.text_threshold, "text_threshold")
        check_nms_iou(self.nms_iou)
        if not isinstance(self.keyframe_interval, int) or not 1 <= self.keyframe_interval <= 1000:
            raise InvalidOptionError(f"keyframe_interval must be a whole number from 1 to 1000, got {self.keyframe_interval!r}.")
        if not isinstance(self.masks, bool):
            raise InvalidOptionError("masks must be true or false.")
        return self


@dataclass
class TrackedObject:
    track_id: int
    phrase: str
    score: float  # the detector's score at the object's last keyframe
    box: np.ndarray  # [4] xyxy px
    mask: np.ndarray | None = field(default=None, repr=False)  # [H, W] bool


@dataclass
class TrackedFrame:
    index: int  # 0-based
    keyframe: bool
    objects: list[TrackedObject]  # by track id
    seconds: float  # model and tracking time for this frame


class VideoTracker:
    """Feed frames in order with `step`; each returns that frame's tracked objects."""

    def __init__(self, pipeline: GroundedSAM, prompt: str | list[str], config: TrackerConfig = TrackerConfig(),
                 fps: float = 30.0) -> None:  # fmt: skip
        self.config = config.checked()
        self.prompt = normalize_caption(prompt)
        self.with_masks = config.masks and pipeline.segmenter is not None
        self.pipeline = pipeline.with_caches(VIDEO_CACHES)
        with warnings.catch_warnings():  # supervision < 0.31 keeps ByteTrack, marked deprecated (see requirements)
            warnings.simplefilter("ignore", FutureWarning)
            self.byte_track = sv.ByteTrack(
                # ByteTrack starts a track from a detection scoring 0.1 above this: keep that within the box
                # threshold, so every box the detector keeps can start one
                track_activation_threshold=max(0.0, min(config.track_activation_threshold, config.box_threshold - 0.1)),
                lost_track_buffer=config.lost_track_buffer,
                minimum_matching_threshold=config.minimum_matching_threshold,
                frame_rate=fps,
            )
        self._index = 0
        # what was fed to ByteTrack last frame (`_detections`): boxes, scores, masks, phrases, motion
        self._carried: sv.Detections = sv.Detections.empty()
        self._motion: dict[int, _Motion] = {}  # track id -> how it moves (tracks of the last frame)

    def step(self, frame: np.ndarray) -> TrackedFrame:
        """frame [H, W, 3] uint8 RGB, the next one of the video -> its tracked objects."""
        start = time.perf_counter()
        keyframe = self._index % self.config.keyframe_interval == 0
        fed = self._detect(frame) if keyframe else self._carry(frame)
        fed.data["row"] = np.arange(len(fed))
        tracked = self.byte_track.update_with_detections(fed)
        motion = np.array(fed.data["motion"], np.float32).reshape(-1, 4)
        objects, states = [], {}
        for row, track_id in zip(tracked.data.get("row", []), tracked.tracker_id.tolist()):
            box = fed.xyxy[row]
            mask = fed.mask[row] if fed.mask is not None else None
            extent = _extent(mask) if mask is not None and mask.any() else box
            states[track_id] = self._moved(self._motion.get(track_id), keyframe, _centre(box), _centre(extent))
            motion[row] = states[track_id].motion
            objects.append(TrackedObject(track_id, str(fed.data["phrase"][row]), float(fed.confidence[row]), box.copy(), mask))
        fed.data["motion"] = motion
        self._carried, self._motion = fed, states
        self._index += 1
        objects.sort(key=lambda o: o.track_id)
        return TrackedFrame(self._index - 1, keyframe, objects, time.perf_counter() - start)

    def _moved(self, state: "_Motion | None", keyframe: bool, box_centre: np.ndarray, mask_centre: np.ndarray) -> "_Motion":
        """A track's motion after this frame. Keyframe to keyframe, the detector's box centres give it (the same kind
        of box at both ends: steady, and zero for an object that stopped). Until a track has two keyframes, the
        centre of its mask's extent from frame to frame gives it, smoothed."""
        index = self._index
        if state is None:
            return _Motion(mask_centre, np.zeros(4, np.float32), box_centre if keyframe else None, index if keyframe else None, False)
        if keyframe:
            if state.key_index is not None:
                motion = (box_centre - state.key_centre) / (index - state.key_index)
                return _Motion(mask_centre, motion.astype(np.float32), box_centre, index, True)
            return _Motion(mask_centre, state.motion, box_centre, index, False)
        if state.from_keyframes:
            return _Motion(mask_centre, state.motion, state.key_centre, state.key_index, True)
        motion = 0.5 * state.motion + 0.5 * (mask_centre - state.centre)
        return _Motion(mask_centre, motion.astype(np.float32), state.key_centre, state.key_index, False)

    def _detect(self, frame: np.ndarray) -> sv.Detections:
        c = self.config
        run = self.pipeline.segment if self.with_masks else self.pipeline.detect
        result = run(frame, self.prompt, c.box_threshold, c.text_threshold, c.nms_iou)
        return _detections(result.boxes, result.scores, result.phrases, result.masks if self.with_masks else None,
                           np.zeros((len(result), 4), np.float32))

    def _carry(self, frame: np.ndarray) -> sv.Detections:
        carried = self._carried
        if len(carried) == 0:
            return _detections(np.zeros((0, 4)), np.zeros(0), [], None, np.zeros((0, 4)))
        height, width = frame.shape[:2]
        motion = np.asarray(carried.data["motion"], np.float32).reshape(-1, 4)
        # The box (SAM's prompt) is the last one moved along, the keyframe's box in the end: prompting with the last
        # mask's extent would feed SAM's errors back (a missed tip shrinks the next prompt, which misses more).
        boxes = _clip(carried.xyxy + motion, width, height)  # [N, 4]
        alive = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        masks = None
        if self.with_masks:
            masks = np.zeros((len(boxes), height, width), bool)
            if alive.any():
                masks[alive] = self.pipeline.segment_boxes(frame, boxes[alive]).masks
                alive = _keep_masks(masks, boxes, alive, width, height)
        keep = np.flatnonzero(alive)
        return _detections(boxes[keep], carried.confidence[keep], list(carried.data["phrase"][keep]),
                           masks[keep] if masks is not None else None, motion[keep])


@dataclass(frozen=True)
class _Motion:
    centre: np.ndarray  # [4] (x, y, x, y) of the track's mask extent (else box) in its last frame
    motion: np.ndarray  # [4] px per frame
    key_centre: np.ndarray | None  # [4] its detector box's centre at its last keyframe
    key_index: int | None  # that keyframe's index
    from_keyframes: bool  # the motion comes from two keyframes


def _centre(box: np.ndarray) -> np.ndarray:
    return np.tile((box[:2] + box[2:]) / 2, 2).astype(np.float32)


def _detections(boxes: np.ndarray, scores: np.ndarray, phrases: list[str], masks: np.ndarray | None,
                motion: np.ndarray) -> sv.Detections:  # fmt: skip
    """What ByteTrack is fed: boxes [N, 4] (SAM's prompts on carried frames), scores, masks, and in `data` each
    object's phrase and motion [N, 4] (px per frame)."""
    count = len(phrases)
    return sv.Detections(
        xyxy=np.asarray(boxes, np.float32).reshape(count, 4),
        confidence=np.asarray(scores, np.float32).reshape(count),
        mask=None if masks is None else np.asarray(masks, bool).reshape(count, *np.shape(masks)[1:]),
        data={"phrase": np.array(phrases, dtype=object).reshape(count), "motion": np.asarray(motion, np.float32).reshape(count, 4)},
    )


def _extent(mask: np.ndarray) -> np.ndarray:
    """The xyxy box [4] of a non-empty bool mask [H, W] (pixel edges)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _clip(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)


def _keep_masks(masks: np.ndarray, prompts: np.ndarray, alive: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clears each carried mask outside its prompt grown by CARRY_MARGIN; an object whose mask is (nearly) empty
    there is gone. Returns the objects still alive."""
    sides = prompts[:, 2:] - prompts[:, :2]  # [N, 2] (w, h)
    windows = np.round(_clip(prompts + np.concatenate([-sides, sides], 1) * CARRY_MARGIN, width, height)).astype(int)
    alive = alive.copy()
    for i in np.flatnonzero(alive):
        x1, y1, x2, y2 = windows[i]
        inside = masks[i, y1:y2, x1:x2].copy()
        masks[i] = False
        masks[i, y1:y2, x1:x2] = inside
        alive[i] = np.count_nonzero(inside) >= MIN_MASK_PIXELS
    return alive
