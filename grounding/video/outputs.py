"""What a tracked video is written to, frame by frame (nothing is held for the whole video):

- `annotated.mp4`: the frames with masks, boxes and "phrase #id" labels, one colour per track. H.264 (libx264,
  yuv420p, +faststart: plays in browsers) where PyAV's FFmpeg has the encoder, else MPEG-4 Part 2 (plays in VLC
  and most desktop players, not in every browser). Odd frame sides are padded by one black pixel (4:2:0).
- `tracks.json`: {"video": {...}, "prompt", "frames": [{"frame", "keyframe", "objects": [{"track_id", "phrase",
  "score", "bbox_xyxy", "segmentation": COCO RLE}]}], "tracks": [{"track_id", "phrase", "first_frame",
  "last_frame", "frames"}], "notes"}; frames are 0-based, RLE as in the image export (`grounding.export`).
- `tracks_mot.txt`: MOT-challenge lines "frame,id,x,y,w,h,score,-1,-1,-1" (frame 1-based, box left/top/size).
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import av
import numpy as np

from grounding.drawing import annotate_tracks
from grounding.export import mask_to_coco_rle
from grounding.video.source import VideoInfo
from grounding.video.tracker import TrackedFrame

VIDEO_FILE, TRACKS_FILE, MOT_FILE = "annotated.mp4", "tracks.json", "tracks_mot.txt"


def h264_available() -> bool:
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # PyAV raises UnknownCodecError (or ValueError in older releases)
        return False
    return True


class Mp4Writer:
    """Encodes RGB frames [H, W, 3] uint8 of one size into an MP4, one at a time (the annotated video)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        width, height = size
        self.padding = (width % 2, height % 2)
        self.codec = "libx264" if h264_available() else "mpeg4"
        self._container = av.open(str(path), mode="w", options={"movflags": "+faststart"})
        try:
            self._stream = self._container.add_stream(self.codec, rate=Fraction(fps).limit_denominator(1001))
            self._stream.width, self._stream.height = width + self.padding[0], height + self.padding[1]
            self._stream.pix_fmt = "yuv420p"
            if self.codec == "libx264":
                self._stream.options = {"crf": "23", "preset": "veryfast"}
            else:
                self._stream.bit_rate = max(1_000_000, width * height * 4)
        except BaseException:
            self._container.close()
            raise
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        if any(self.padding):
            rgb = np.pad(rgb, ((0, self.padding[1]), (0, self.padding[0]), (0, 0)))
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None


class TracksWriter:
    """tracks.json (streamed: valid JSON once closed) and tracks_mot.txt, one frame at a time."""

    def __init__(self, directory: Path, info: VideoInfo, prompt: str, settings: dict[str, Any]) -> None:
        self._json: TextIO = open(directory / TRACKS_FILE, "w", encoding="utf-8")
        try:
            self._mot: TextIO = open(directory / MOT_FILE, "w", encoding="utf-8")
        except BaseException:
            self._json.close()
            raise
        video = {"width": info.size[0], "height": info.size[1], "fps": info.fps, "source_width": info.source_size[0],
                 "source_height": info.source_size[1], "codec": info.codec}  # fmt: skip
        self._json.write('{"video": ' + json.dumps(video) + ', "prompt": ' + json.dumps(prompt)
                         + ', "settings": ' + json.dumps(settings) + ',\n"frames": [\n')
        self._first = True
        self.tracks: dict[int, dict[str, Any]] = {}  # track id -> phrase, first/last frame, frames seen

    def write(self, frame: TrackedFrame) -> None:
        objects = []
        for obj in frame.objects:
            x1, y1, x2, y2 = (round(float(v), 2) for v in obj.box)
            entry = {"track_id": obj.track_id, "phrase": obj.phrase, "score": round(obj.score, 4),
                     "bbox_xyxy": [x1, y1, x2, y2]}  # fmt: skip
            if obj.mask is not None:
                entry["segmentation"] = mask_to_coco_rle(obj.mask)
            objects.append(entry)
            self._mot.write(f"{frame.index + 1},{obj.track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{obj.score:.4f},-1,-1,-1\n")
            span = self.tracks.setdefault(obj.track_id, {"track_id": obj.track_id, "phrase": obj.phrase,
                                                         "first_frame": frame.index, "last_frame": frame.index,
                                                         "frames": 0})  # fmt: skip
            span.update(last_frame=frame.index, frames=span["frames"] + 1)
        line = json.dumps({"frame": frame.index, "keyframe": frame.keyframe, "objects": objects})
        self._json.write(("" if self._first else ",\n") + line)
        self._first = False

    def close(self, notes: list[str]) -> None:
        if self._json.closed:
            return
        try:
            self._json.write('\n],\n"tracks": ' + json.dumps(sorted(self.tracks.values(), key=lambda t: t["track_id"]))
                             + ',\n"notes": ' + json.dumps(notes) + "}\n")
        finally:
            self._json.close()
            self._mot.close()


def annotate_frame(pixels: np.ndarray, frame: TrackedFrame) -> np.ndarray:
    objects = frame.objects
    boxes = np.array([o.box for o in objects], np.float32).reshape(-1, 4)
    with_masks = bool(objects) and all(o.mask is not None for o in objects)
    masks = np.stack([o.mask for o in objects]) if with_masks else None
    return annotate_tracks(pixels, boxes, masks, [o.track_id for o in objects], [f"{o.phrase} #{o.track_id}" for o in objects])
