"""Frames per second of text-prompted video tracking (`grounding.video`) on this machine: the README's Video table.

    python bench/bench_video_cpu.py [--threads 2] [--frames 60]

1. The shipped shapes models on the moving shapes footage (256x256), keyframe interval 1, 5 and 15, masks on, and
   boxes only at k=5; whole job: decoding, models, tracking, annotation, H.264 and JSON writing.
2. The real architectures with random weights (Grounding DINO Swin-T + SAM vit_b, nothing downloaded) on the same
   footage scaled to 800 px: a keyframe and a carried frame timed, and the frames/s they give at k=1 and k=5.
Ratios are against k=1 in the same run.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from grounding.pipeline import GroundedSAM
from grounding.train.moving_shapes import moving_shapes
from grounding.video import TrackerConfig, VideoJob

PROMPT = "red circle . blue square . green star . yellow triangle"


def run(pipeline: GroundedSAM, frames: list, config: TrackerConfig) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        job = VideoJob(pipeline, frames, PROMPT, Path(out), config)
        count = sum(1 for _ in job)
        return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from grounding.shipped import load_shapes_pipeline

    footage = [frame for frame, _ in moving_shapes(args.frames)]
    shapes = load_shapes_pipeline("cpu")
    print(f"shapes models, {args.frames} frames of 256x256, precision {shapes.precision}, {torch.get_num_threads()} threads")
    print("| setting | frames/s | vs k=1 |\n|---|---|---|")
    base = None
    for name, config in [("k=1 (detector every frame)", TrackerConfig(keyframe_interval=1)),
                         ("k=5 (default)", TrackerConfig(keyframe_interval=5)),
                         ("k=15", TrackerConfig(keyframe_interval=15)),
                         ("k=5, boxes only", TrackerConfig(keyframe_interval=5, masks=False))]:
        fps = run(shapes, footage, config)
        base = base or fps
        print(f"| {name} | {fps:.2f} | {fps / base:.2f}x |", flush=True)

    from grounding.config import swint_ogc
    from grounding.detector import GroundingDetector
    from grounding.model import GroundingDINO
    from grounding.precision import resolve_precision
    from grounding.segmenters.sam import SAM_VARIANTS, SamSegmenter, build_sam
    from grounding.text import load_tokenizer

    torch.manual_seed(0)
    detector = GroundingDetector(GroundingDINO(swint_ogc()).eval(), load_tokenizer(), "cpu")
    segmenter = SamSegmenter(build_sam(SAM_VARIANTS["vit_b"]), "sam-vit_b:random")
    real = GroundedSAM(detector, segmenter, precision=resolve_precision("auto", "cpu"))
    big = [cv2.resize(frame, (800, 800), interpolation=cv2.INTER_LINEAR) for frame in footage[:3]]
    # Random weights' masks are noise (a carried object would "vanish" and cost nothing), so time the two kinds of
    # frame directly, each on a frame not seen before: a keyframe (detector, then SAM's encoder and 4 box decodes)
    # and a carried frame (SAM's encoder and 4 box decodes), as for a scene of four objects.
    boxes = np.array([[60, 80, 260, 300], [420, 100, 640, 280], [150, 450, 400, 700], [500, 480, 760, 760]], np.float32)
    real.detect(big[0], PROMPT, 0.35, 0.25)  # first-call overheads off the clock
    real.segment_boxes(big[0], boxes[:1])
    start = time.perf_counter()
    real.detect(big[1], PROMPT, 0.35, 0.25)
    real.segment_boxes(big[1], boxes)
    keyframe_s = time.perf_counter() - start
    start = time.perf_counter()
    real.segment_boxes(big[2], boxes)
    carried_s = time.perf_counter() - start
    for k in (1, 5):
        per_frame = (keyframe_s + (k - 1) * carried_s) / k
        print(f"random Swin-T + vit_b at 800x800, precision {real.precision}, k={k}: {1 / per_frame:.3f} frames/s "
              f"({per_frame:.1f} s a frame; keyframe {keyframe_s:.1f} s, carried frame {carried_s:.1f} s)")

if __name__ == "__main__":
    main()
