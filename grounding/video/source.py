"""Frames in, one at a time: a video file (decoded by PyAV), a folder of images, or any iterable of pictures.

Nothing holds more than one decoded frame, so a 10-minute video takes the memory of a 10-second one. Checks
happen before decoding where they can: a file that is not a video, a video without a video stream, or frames
larger than `VideoLimits.max_pixels` (read from the header) are refused with `InvalidVideoError`. Frames whose
longer side exceeds `max_side` are scaled down while decoding. A video longer than `max_frames` / `max_seconds`
is cut there; a file damaged part way is read up to the damage. Both are said in `FrameSource.notes`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from grounding.errors import GroundingError, InvalidVideoError
from grounding.images import ImageLimits, fitted_size, load_image

FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
DEFAULT_FPS = 30.0
MIN_SIDE, MAX_ASPECT = 16, 20.0  # as for images (grounding.images.ImageLimits)
# Only plain local files in common video containers: a playlist (HLS, concat, ...) uploaded as a "video" would
# otherwise make FFmpeg open other files on the server (or URLs) and hand their frames back.
DEMUXER_OPTIONS = {
    "format_whitelist": "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,flv,ogg,gif,mpeg,h264,hevc,ivf,nut",
    "protocol_whitelist": "file",
}


@dataclass(frozen=True)
class VideoLimits:
    max_frames: int | None = None  # frames after this are left out (said in the notes)
    max_seconds: float | None = None  # the same, in video time
    max_side: int = 1280  # px: frames with a longer side are scaled down to it (aspect kept)
    max_pixels: int = 8192 * 8192  # a frame larger than this is refused, from the header, before decoding

    def __post_init__(self) -> None:
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError("max_seconds must be positive")
        if not 16 <= self.max_side <= 4096 or self.max_pixels < 256:
            raise ValueError("max_side must be 16 to 4096 px and max_pixels at least 256")

    def frame_budget(self, fps: float) -> int | None:
        """The most frames to hand out at `fps`, or None for all."""
        budgets = [self.max_frames] if self.max_frames is not None else []
        if self.max_seconds is not None:
            budgets.append(max(1, math.ceil(self.max_seconds * fps - 1e-9)))
        return min(budgets) if budgets else None


@dataclass(frozen=True)
class VideoInfo:
    size: tuple[int, int]  # (W, H) of the frames handed out (after scaling down)
    source_size: tuple[int, int]  # (W, H) in the source
    fps: float
    frames: int | None  # frames expected (after the limits), None when unknown
    source_frames: int | None  # frames in the source, None when unknown
    codec: str | None  # the video codec, None for pictures


class FrameSource:
    """Iterate once for RGB frames [H, W, 3] uint8 of `info.size`; `notes` says what was left out. Close it (or
    use it as a context manager) to release the file."""

    def __init__(self, info: VideoInfo, frames: Iterator[np.ndarray], notes: list[str], close: Any = None) -> None:
        self.info = info
        self.notes = notes
        self._frames = frames
        self._close = close

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._frames

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_frames(source: Any, limits: VideoLimits = VideoLimits(), fps: float | None = None) -> FrameSource:
    """A video file path, a folder of images (sorted by name) or an iterable of pictures (arrays [H, W, 3] or
    PIL images) -> FrameSource. `fps` sets the rate of pictures (default 30) and overrides a file's."""
    if fps is not None and not (math.isfinite(fps) and 0 < fps <= 1000):
        raise InvalidVideoError(f"fps must be in (0, 1000], got {fps!r}.")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return _open_folder(path, limits, fps or DEFAULT_FPS)
        if path.is_file():
            return _open_file(path, limits, fps)
        raise InvalidVideoError(f"{path.name or path} is neither a video file nor a folder of frames.")
    if isinstance(source, Iterable) and not isinstance(source, (bytes, np.ndarray)):
        return _open_pictures(iter(source), limits, fps or DEFAULT_FPS)
    raise InvalidVideoError(f"A video must be a file, a folder of frames or an iterable of frames, not {type(source).__name__}.")


def _open_file(path: Path, limits: VideoLimits, fps: float | None) -> FrameSource:
    unreadable = (f"{path.name} could not be read as a video: it is damaged, incomplete or not a video "
                  "(MP4, WebM, MOV, MKV, AVI, ... that FFmpeg decodes).")  # fmt: skip
    try:
        container = av.open(str(path), metadata_errors="ignore", options=DEMUXER_OPTIONS)
    except (av.error.FFmpegError, UnicodeDecodeError, OSError):
        raise InvalidVideoError(unreadable) from None
    frames = None
    try:
        stream = container.streams.best("video")
        if stream is None:
            raise InvalidVideoError(f"{path.name} has no video stream.")
        _check_frame_size((stream.codec_context.width, stream.codec_context.height), limits, path.name)
        stream.thread_type = "AUTO"
        frames = _decoded_frames(container, stream, limits, unreadable)
        first = next(frames, None)  # the first frame says the picture's rotation (phone videos)
        if first is None:
            raise InvalidVideoError(f"{path.name} has no frames.")
        rate = fps or _stream_fps(stream)
        source_frames = stream.frames or None
        if source_frames is None and stream.duration and stream.time_base:
            source_frames = max(1, round(float(stream.duration * stream.time_base) * rate))
        budget = limits.frame_budget(rate)
        expected = min(x for x in (source_frames, budget) if x is not None) if (source_frames or budget) else None
        upright = first.shape[1::-1]
        info = VideoInfo(upright, _upright_size(stream, first), rate, expected, source_frames, stream.codec_context.name)
    except BaseException:
        if frames is not None:
            frames.close()
        container.close()
        raise
    notes: list[str] = []
    return FrameSource(info, _limited(first, frames, info, budget, notes, container), notes, container.close)


def _decoded_frames(container: Any, stream: Any, limits: VideoLimits, unreadable: str) -> Iterator[np.ndarray]:
    """Upright RGB frames scaled to `limits.max_side`. Damage before the first frame is InvalidVideoError, after it
    `_Damaged` (the frames before are good)."""
    count = 0
    try:
        for frame in container.decode(stream):
            _check_frame_size((frame.width, frame.height), limits, "the video")
            width, height = fitted_size((frame.width, frame.height), limits.max_side)
            pixels = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
            turns = round(getattr(frame, "rotation", 0) / 90) % 4  # the display matrix: counterclockwise degrees
            count += 1
            yield np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels
    except av.error.FFmpegError:
        if count == 0:
            raise InvalidVideoError(unreadable) from None
        raise _Damaged(count) from None


class _Damaged(Exception):
    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


def _limited(first: np.ndarray, frames: Iterator[np.ndarray], info: VideoInfo, budget: int | None, notes: list[str],
             container: Any) -> Iterator[np.ndarray]:  # fmt: skip
    """The decoded frames within the limits, at one size; what was left out goes into `notes`."""
    count, cut = 1, False
    try:
        yield first
        for pixels in frames:
            if budget is not None and count >= budget:
                notes.append(_cut_note(budget, info))
                cut = True
                break
            if pixels.shape[1::-1] != info.size:  # a stream whose frame size changes: keep one output size
                pixels = cv2.resize(pixels, info.size, interpolation=cv2.INTER_AREA)
            count += 1
            yield pixels
    except _Damaged:
        notes.append(f"The file is damaged after frame {count}; the {count} frames before it were used.")
        cut = True
    finally:
        frames.close()
        container.close()
    if not cut and info.source_frames and count < info.source_frames - 1:
        notes.append(f"The file ends after frame {count} of the {info.source_frames} it announces (incomplete or "
                     f"damaged); those {count} frames were used.")


def _upright_size(stream: Any, first: np.ndarray) -> tuple[int, int]:
    """The source's (W, H) as shown (turned like the first frame)."""
    width, height = stream.codec_context.width, stream.codec_context.height
    scaled_turned = first.shape[1] < first.shape[0] and width > height or first.shape[1] > first.shape[0] and width < height
    return (height, width) if scaled_turned else (width, height)


def _open_folder(path: Path, limits: VideoLimits, fps: float) -> FrameSource:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise InvalidVideoError(f"The folder {path.name} holds no frames ({', '.join(sorted(FRAME_SUFFIXES))}).")
    return _open_pictures(iter(files), limits, fps, len(files))


def _open_pictures(pictures: Iterator[Any], limits: VideoLimits, fps: float, total: int | None = None) -> FrameSource:
    image_limits = ImageLimits(max_side=limits.max_side, max_pixels=limits.max_pixels)
    try:
        first = next(pictures)
    except StopIteration:
        raise InvalidVideoError("The video has no frames.") from None
    loaded = _load_picture(first, image_limits, 1)
    budget = limits.frame_budget(fps)
    expected = min(x for x in (total, budget) if x is not None) if (total or budget) else None
    info = VideoInfo(loaded.size, loaded.original_size, fps, expected, total, None)
    notes: list[str] = []

    def frames() -> Iterator[np.ndarray]:
        yield loaded.pixels
        count = 1
        for picture in pictures:
            if budget is not None and count >= budget:
                notes.append(_cut_note(budget, info))
                return
            pixels = _load_picture(picture, image_limits, count + 1).pixels
            if pixels.shape[1::-1] != info.size:
                pixels = cv2.resize(pixels, info.size, interpolation=cv2.INTER_AREA)
            count += 1
            yield pixels

    return FrameSource(info, frames(), notes, getattr(pictures, "close", None))


def _load_picture(picture: Any, limits: ImageLimits, number: int) -> Any:
    try:
        return load_image(picture, limits)
    except GroundingError as error:
        raise InvalidVideoError(f"Frame {number}: {error}") from None


def _check_frame_size(size: tuple[int, int], limits: VideoLimits, name: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidVideoError(f"{name} gives no usable frame size: it is damaged, or its frames are too large to decode.")
    if width * height > limits.max_pixels:
        raise InvalidVideoError(
            f"{name} has frames of {width}×{height} px, more than the {limits.max_pixels:,} pixels a frame may have.")
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_ASPECT * min(width, height):
        raise InvalidVideoError(f"{name} has frames of {width}×{height} px: at least {MIN_SIDE} px a side and an aspect "
                                f"ratio up to {MAX_ASPECT:g}:1 are needed.")


def _stream_fps(stream: Any) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) <= 1000:
            return float(rate)
    return DEFAULT_FPS


def _cut_note(budget: int, info: VideoInfo) -> str:
    whole = f" of {info.source_frames}" if info.source_frames else ""
    return f"Only the first {budget}{whole} frames ({budget / info.fps:.1f} s) were used (the frame/time limit)."
