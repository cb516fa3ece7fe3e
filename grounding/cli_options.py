"""Command-line options every tool that runs the models shares (`grounding.batch`, `grounding.video`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from grounding.precision import CHOICES as PRECISION_CHOICES
from grounding.segmenters import SEGMENTER_NAMES
from grounding.shipped import SHAPES_NAME


def add_model_options(parser: argparse.ArgumentParser, box_threshold: float, text_threshold: float) -> None:
    """--detector, --sam, --sam-checkpoint, --device, --precision, --box/--text-threshold, --nms-iou, --no-download."""
    parser.add_argument("--detector", default="swint_ogc",
                        help=f"detector name, local checkpoint, or {SHAPES_NAME!r} (the shipped demo models, with their SAM)")
    parser.add_argument("--sam", default="auto",
                        help=f"{' | '.join(SEGMENTER_NAMES)} | auto | a SAM .pth | a SAM 2 / SAM-HQ folder | none "
                             "(boxes only)")
    parser.add_argument("--sam-checkpoint", type=Path, default=None, help="local SAM .pth (skips the download)")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:1 (default: cuda if available)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="auto = bf16 where the device runs it natively, fp16 on older GPUs, else fp32")
    parser.add_argument("--box-threshold", type=float, default=box_threshold)
    parser.add_argument("--text-threshold", type=float, default=text_threshold)
    parser.add_argument("--nms-iou", type=float, default=None, help="class-agnostic NMS IoU (default off)")
    parser.add_argument("--no-download", action="store_true", help="never download weights")
