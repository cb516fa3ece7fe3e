"""Video in, tracks out: `python -m grounding.video --video in.mp4 --prompt "cat . dog ." --out DIR`.

Writes `OUT/annotated.mp4`, `OUT/tracks.json` (per frame: track id, phrase, score, box, RLE mask) and
`OUT/tracks_mot.txt` (MOT-challenge boxes); see `grounding.video.outputs`. Ctrl-C stops and keeps what was done.
Exit status: 0 done, 2 a usage, video or weights error, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from grounding.cli_options import add_model_options
from grounding.errors import GroundingError
from grounding.shipped import load_named_pipeline
from grounding.video.job import VideoJob
from grounding.video.source import VideoLimits
from grounding.video.tracker import TrackerConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults, limits = TrackerConfig(), VideoLimits()
    parser = argparse.ArgumentParser(prog="python -m grounding.video", description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", required=True, help="a video file (MP4, WebM, MOV, ...) or a folder of frames")
    parser.add_argument("--prompt", required=True, help='phrases separated by ".", e.g. "cat . remote control ."')
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    add_model_options(parser, defaults.box_threshold, defaults.text_threshold)
    parser.add_argument("--keyframe-interval", type=int, default=defaults.keyframe_interval,
                        help="run the detector on every k-th frame; tracking carries objects between (1 = every frame)")
    parser.add_argument("--max-frames", type=int, default=None, help="use only the first N frames")
    parser.add_argument("--max-seconds", type=float, default=None, help="use only the first S seconds")
    parser.add_argument("--max-side", type=int, default=limits.max_side, help="scale larger frames down to this (px)")
    parser.add_argument("--fps", type=float, default=None, help="frame rate of a folder of frames (default 30); for a video file it overrides the file's")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        limits = VideoLimits(max_frames=args.max_frames, max_seconds=args.max_seconds, max_side=args.max_side)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = TrackerConfig(keyframe_interval=args.keyframe_interval, box_threshold=args.box_threshold,
                           text_threshold=args.text_threshold, nms_iou=args.nms_iou, masks=args.sam.lower() != "none")
    try:
        config.checked()
        pipeline = load_named_pipeline(args.detector, sam=None if args.sam.lower() == "none" else args.sam,
                                       device=args.device, sam_checkpoint=args.sam_checkpoint, precision=args.precision,
                                       download=not args.no_download)  # fmt: skip
        job = VideoJob(pipeline, args.video, args.prompt, args.out, config, limits, args.fps)
    except GroundingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    status = 0
    progress = tqdm(total=job.info.frames, desc="frames", unit="frame")
    try:
        for _ in job:
            progress.update()
    except KeyboardInterrupt:
        status = 130
    except GroundingError as error:  # a frame of a folder that cannot be read: the frames before are kept
        print(f"error: {error}", file=sys.stderr)
        status = 2
    finally:
        job.close()
        progress.close()
    summary = job.summary()
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps({k: summary.to_dict()[k] for k in ("frames", "keyframes", "frames_per_second", "codec", "outputs")}))
    print(f"{summary.frames} frames, {len(summary.tracks)} tracks, {summary.frames_per_second:.2f} frames/s -> {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
