"""One video through the tracker into its outputs: `VideoJob` (iterate it for progress; stop whenever) and
`label_video` (the whole video in one call)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grounding.pipeline import GroundedSAM
from grounding.text import normalize_caption
from grounding.video.outputs import MOT_FILE, TRACKS_FILE, VIDEO_FILE, Mp4Writer, TracksWriter, annotate_frame
from grounding.video.source import FrameSource, VideoInfo, VideoLimits, open_frames
from grounding.video.tracker import TrackedFrame, TrackerConfig, VideoTracker


@dataclass
class VideoSummary:
    frames: int  # frames processed
    keyframes: int
    tracks: list[dict[str, Any]]  # per track: track_id, phrase, first_frame, last_frame, frames
    seconds: float  # wall time, decoding and writing included
    size: tuple[int, int]
    fps: float  # the video's
    codec: str  # of annotated.mp4
    stopped: bool  # stopped before the end (cancelled); the outputs hold the frames done
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # video, tracks, mot -> path

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "frames_per_second": round(self.frames_per_second, 3)}


class VideoJob:
    """Opens the source and the outputs; iterating runs the video frame by frame (each item is the tracked frame
    just written). Stopping early (break, an exception, `close`) leaves valid outputs of the frames done.
    Raises InvalidVideoError / InvalidPromptError / InvalidThresholdError / InvalidOptionError when built."""

    def __init__(self, pipeline: GroundedSAM, source: Any, prompt: str | list[str], out_dir: str | Path,
                 config: TrackerConfig = TrackerConfig(), limits: VideoLimits = VideoLimits(),
                 fps: float | None = None) -> None:  # fmt: skip
        self.start = time.perf_counter()
        config.checked()
        prompt = normalize_caption(prompt)  # prompt and settings are checked before any decoding
        self.frames: FrameSource = open_frames(source, limits, fps)
        self.info: VideoInfo = self.frames.info
        try:
            self.tracker = VideoTracker(pipeline, prompt, config, self.info.fps)
            self.out_dir = Path(out_dir)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.video = Mp4Writer(self.out_dir / VIDEO_FILE, self.info.size, self.info.fps)
            try:
                self.tracks = TracksWriter(self.out_dir, self.info, prompt, asdict(config))
            except BaseException:
                self.video.close()
                raise
        except BaseException:
            self.frames.close()
            raise
        self.done = self.keyframes = 0
        self.stop_reason: str | None = None  # why a caller ended the run early, for the notes (set before closing)
        self.finished = False
        self._closed = False

    def __iter__(self) -> Iterator[TrackedFrame]:
        try:
            for pixels in self.frames:
                tracked = self.tracker.step(pixels)
                self.video.write(annotate_frame(pixels, tracked))
                self.tracks.write(tracked)
                self.done += 1
                self.keyframes += tracked.keyframe
                yield tracked
            self.finished = True
        finally:
            self.close()

    def __enter__(self) -> "VideoJob":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish the outputs with the frames done so far (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.frames.close()
        try:
            self.video.close()
        finally:
            self.tracks.close(self.notes)

    @property
    def notes(self) -> list[str]:
        if self.finished or not self.done:
            return list(self.frames.notes)
        return self.frames.notes + [self.stop_reason or f"Stopped after frame {self.done}; the outputs hold the frames before."]

    def summary(self) -> VideoSummary:
        return VideoSummary(
            frames=self.done, keyframes=self.keyframes, tracks=sorted(self.tracks.tracks.values(), key=lambda t: t["track_id"]),
            seconds=time.perf_counter() - self.start, size=self.info.size, fps=self.info.fps, codec=self.video.codec,
            stopped=not self.finished, notes=self.notes,
            outputs={"video": str(self.out_dir / VIDEO_FILE), "tracks": str(self.out_dir / TRACKS_FILE),
                     "mot": str(self.out_dir / MOT_FILE)},
        )  # fmt: skip


def label_video(pipeline: GroundedSAM, source: Any, prompt: str | list[str], out_dir: str | Path,
                config: TrackerConfig = TrackerConfig(), limits: VideoLimits = VideoLimits(), fps: float | None = None,
                on_frame: Callable[[TrackedFrame, VideoInfo], None] | None = None) -> VideoSummary:  # fmt: skip
    """Track `prompt` through the whole video into `out_dir` (annotated.mp4, tracks.json, tracks_mot.txt)."""
    with VideoJob(pipeline, source, prompt, out_dir, config, limits, fps) as job:
        for tracked in job:
            if on_frame is not None:
                on_frame(tracked, job.info)
    return job.summary()
