"""Text-prompted video: detections on keyframes, ByteTrack identities, SAM masks, streamed outputs.

    python -m grounding.video --video in.mp4 --prompt "red circle . blue star ." --out runs/video

See `tracker` (how objects are found and followed), `source` (frames in, limits), `outputs` (what is written)
and `job` (one video end to end).
"""
from grounding.video.job import VideoJob, VideoSummary, label_video
from grounding.video.outputs import MOT_FILE, TRACKS_FILE, VIDEO_FILE
from grounding.video.source import FrameSource, VideoInfo, VideoLimits, open_frames
from grounding.video.tracker import TrackedFrame, TrackedObject, TrackerConfig, VideoTracker

__all__ = [
    "FrameSource", "MOT_FILE", "TRACKS_FILE", "TrackedFrame", "TrackedObject", "TrackerConfig", "VIDEO_FILE",
    "VideoInfo", "VideoJob", "VideoLimits", "VideoSummary", "VideoTracker", "label_video", "open_frames",
]
