"""The Video tab and the /video endpoint: a clip and a prompt in, the annotated video, its tracks and a status
out, through `grounding.video` with the models the Image tab chose.

Work is bounded for a public server: a clip is cut at the hosting limits (`--video-max-seconds`,
`--video-max-frames`; said in the status) and its frames scaled down to `--video-max-side`. Only files Gradio
received are read (`app.uploads`). The handler is a generator: the page shows the frame count as it goes. Stop (or the
per-video time limit, `--video-max-run-s`) ends the run after the frame in progress, and the page then shows the
frames done, with their tracks.
"""
from __future__ import annotations

import html
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.data_classes import FileData
from gradio_client.utils import is_http_url_like

from app.uploads import EXPIRED_VIDEO_UPLOAD, REFUSED_VIDEO_SOURCE, RefusedInput, confined_path
from grounding.drawing import track_colour
from grounding.errors import GroundingError, InvalidOptionError, InvalidVideoError
from grounding.video import VideoJob, VideoLimits
from grounding.video.tracker import TrackerConfig

if TYPE_CHECKING:
    from app.studio import Studio

VIDEO_HELP = (
    "Upload a short clip (or record one), say what to find, and Run: the detector looks every *k*-th frame, "
    "the objects are followed in between, and each keeps its id (`red circle #2`) and colour while it is in view. "
    "Uses the detector and segmenter chosen on the Image tab."
)
PROGRESS_EVERY = 5  # frames between status updates on the page
MAX_STOP_MARKS = 1024


class VideoUpload(gr.Video):
    """`gr.Video` input that hands over the received file's path, unconverted, and only for a file Gradio received
    (no server path, no URL; see `app.uploads`)."""

    is_template = True

    def preprocess(self, payload: FileData | None) -> str | None:
        if payload is None:
            return None
        try:
            if payload.path:
                return confined_path(payload.path, REFUSED_VIDEO_SOURCE, EXPIRED_VIDEO_UPLOAD)
        except RefusedInput as refused:
            raise gr.Error(str(refused), title="Video problem", print_exception=False) from None
        raise gr.Error(REFUSED_VIDEO_SOURCE, title="Video problem", print_exception=False)

    async def async_move_resource_to_block_cache(self, url_or_file_path: str | Path | None) -> str | None:
        if isinstance(url_or_file_path, str) and is_http_url_like(url_or_file_path):
            raise gr.Error(REFUSED_VIDEO_SOURCE, title="Video problem", print_exception=False)
        return await super().async_move_resource_to_block_cache(url_or_file_path)


class VideoTab:
    """The Video tab's handlers over `studio`'s models. Its own output folder keeps the last `keep` results, so a
    running video's files are never evicted by image results; Stop marks the session, and the run stops after the
    frame in progress and shows what it did."""

    def __init__(self, studio: "Studio", keep: int = 8) -> None:
        from app.studio import OutputFiles

        self.studio = studio
        self.outputs = OutputFiles(studio.outputs.directory / "videos", max_files=keep)
        self._stops: dict[str, float] = {}  # session -> when Stop was pressed (bounded: sessions with a run)
        self._lock = threading.Lock()

    def stop(self, request: gr.Request) -> None:
        """The Stop button: the session's running video stops after its current frame."""
        with self._lock:
            if len(self._stops) >= MAX_STOP_MARKS:
                self._stops.pop(next(iter(self._stops)))
            self._stops[_session(request)] = time.monotonic()

    def run(self, video: Any, prompt: Any, box_threshold: Any, text_threshold: Any, keyframe_interval: Any,
            use_sam: Any, model: Any, segmenter: Any, request: gr.Request,
            progress: gr.Progress = gr.Progress()) -> Iterator[tuple[Any, ...]]:  # fmt: skip
        """Yields (annotated video, status HTML, [tracks.json, tracks_mot.txt], summary JSON): the status alone
        while it runs, everything at the end (also after Stop or the time limit: the frames done)."""
        from app.studio import StudioRequest, user_error

        session = _session(request)
        with self._lock:
            self._stops.pop(session, None)
        limits = self.studio.limits
        try:
            if not video:
                raise InvalidVideoError("Upload a video (or record one) first.")
            interval = _whole_number(keyframe_interval, "keyframe_interval")
            studio_request = StudioRequest(video, prompt, box_threshold, text_threshold, 1.0, use_sam, model, segmenter)
            pipeline = self.studio.pipeline_for(studio_request)
            config = TrackerConfig(keyframe_interval=interval, box_threshold=box_threshold,
                                   text_threshold=text_threshold, masks=bool(use_sam))  # fmt: skip
            video_limits = VideoLimits(max_frames=limits.video_max_frames, max_seconds=limits.video_max_seconds,
                                       max_side=limits.video_max_side)  # fmt: skip
            out_dir = self.outputs.new_path("", stem="video")
            job = VideoJob(pipeline, video, studio_request.prompt or "", out_dir, config, video_limits)
        except GroundingError as error:
            raise user_error(error, "video") from None
        notes = [] if pipeline.segmenter is not None or not use_sam else ["No segmenter is loaded: boxes only."]
        total, deadline = job.info.frames, time.monotonic() + limits.video_max_run_s
        try:
            with job:
                for tracked in job:
                    done = tracked.index + 1
                    progress((done, total) if total else done, desc="frames", unit="frames")
                    if self._stops.get(session) is not None:
                        job.stop_reason = f"Stopped at your request after frame {done}."
                        break
                    if time.monotonic() > deadline:
                        job.stop_reason = (f"Stopped after {limits.video_max_run_s:g} s (the server's time limit per "
                                           f"video), at frame {done}.")
                        break
                    if done % PROGRESS_EVERY == 0:
                        yield gr.skip(), _running_status(done, total), gr.skip(), gr.skip()
        except gr.Error:
            raise
        except Exception as error:
            raise user_error(error, "video") from error
        finally:
            with self._lock:
                self._stops.pop(session, None)
        summary = job.summary()
        summary.notes += notes
        public = {k: v for k, v in summary.to_dict().items() if k != "outputs"}
        files = [summary.outputs["tracks"], summary.outputs["mot"]]
        yield summary.outputs["video"], _done_status(summary), files, public


def _session(request: gr.Request | None) -> str:
    return str(getattr(request, "session_hash", None) or "")


def _whole_number(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise InvalidOptionError(f"{name} must be a whole number, got {str(value)[:40]!r}.")
    return int(value)


def _running_status(done: int, total: int | None) -> str:
    of = f" of {total}" if total else ""
    return f'<div class="gsam-legend"><b class="gsam-count">Frame {done}{of}…</b></div>'


def _done_status(summary: Any) -> str:
    tracks = summary.tracks
    chips = "".join(
        f'<span class="gsam-chip" style="--chip:{track_colour(t["track_id"])}"><span class="gsam-swatch"></span>'
        f'{html.escape(t["phrase"])} #{t["track_id"]} <b>frames {t["first_frame"] + 1}–{t["last_frame"] + 1}</b></span>'
        for t in tracks[:50]
    )
    more = f"<span> and {len(tracks) - 50} more</span>" if len(tracks) > 50 else ""
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in summary.notes)
    return (
        f'<div class="gsam-legend"><b class="gsam-count">{len(tracks)} track{"" if len(tracks) == 1 else "s"} · '
        f"{summary.frames} frames · {summary.frames_per_second:.1f} frames/s</b>{chips}{more}</div>"
        + (f'<ul class="gsam-hints">{notes}</ul>' if notes else "")
    )
