"""How the studio is started: command-line flags, each with an environment-variable default.

Flag beats environment variable beats built-in default. Gradio's own variables are honoured for the
address (`GRADIO_SERVER_NAME`, `GRADIO_SERVER_PORT`), which is what Hugging Face Spaces sets.
`HostingLimits` holds what keeps a public server within its memory and disk (README "Hosting").
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from grounding.precision import CHOICES as PRECISION_CHOICES
from grounding.precision import resolve_precision


@dataclass(frozen=True)
class HostingLimits:
    """What one request may cost the server, and how much disk the studio's files may hold. The defaults fit a
    2-core, 16 GB Space: four concurrent slider events at the full decode budget stay under 2 GB."""

    max_upload_mb: int = 50  # an uploaded file or a data: URL image; a JSON request body a little more
    max_decode_mb: int = 512  # memory one image may take while decoded (decided from its header)
    max_side: int = 2048  # long side the studio works at; larger images are downscaled, with a note
    cache_mb: int = 1024  # uploads + results under Gradio's cache folder; the oldest go first beyond this
    cache_minutes: float = 15.0  # files not used for this long are deleted
    load_retry_s: float = 300.0  # a model that failed to load is tried again after this (or on "Retry")
    video_max_seconds: float = 20.0  # a longer video is cut there (said in its status); the Video tab
    video_max_frames: int = 600
    video_max_side: int = 640  # px: larger frames are scaled down to this
    video_max_run_s: float = 300.0  # a video run stops after this, keeping the frames done (ZeroGPU's duration too)

    def __post_init__(self) -> None:
        sizes = (self.max_upload_mb, self.max_decode_mb, self.max_side, self.cache_mb, self.video_max_seconds,
                 self.video_max_frames, self.video_max_side, self.video_max_run_s)  # fmt: skip
        if min(sizes) <= 0 or self.cache_minutes <= 0:
            raise ValueError("hosting limits must be positive")
        if not 16 <= self.video_max_side <= 4096:
            raise ValueError("video_max_side must be 16 to 4096 px")
        if self.cache_mb < 2 * self.max_upload_mb:
            raise ValueError("the disk cache must hold at least two uploads (cache_mb >= 2 x max_upload_mb)")

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb << 20


@dataclass(frozen=True)
class StudioSettings:
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    device: str | None = None  # None: cuda if available, else cpu
    detectors: tuple[str, ...] = ("swint_ogc",)  # names or checkpoint paths; >1 gives a model dropdown
    # segmenter names (grounding.segmenters.SEGMENTER_NAMES), SAM .pth files or SAM 2 / SAM-HQ folders; >1 gives a
    # segmenter dropdown; () = "auto" (vit_h on a GPU, vit_b on a CPU); ("none",) = boxes only
    segmenters: tuple[str, ...] = ()
    sam_checkpoint: str | None = None  # local SAM weights for a SAM variant
    max_prompt_tokens: int = 1024  # longer prompts are refused with a message (batch CLI has no limit)
    precision: str = "auto"  # grounding.precision: auto | fp32 | bf16 | fp16
    limits: HostingLimits = HostingLimits()

    @property
    def sam_enabled(self) -> bool:
        return "none" not in {name.lower() for name in self.segmenters}


def parse_settings(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> StudioSettings:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Grounded-SAM studio: text prompt -> boxes (Grounding DINO) -> masks (SAM), in the browser.",
    )
    parser.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (env GRADIO_SERVER_NAME; 0.0.0.0 to serve the network)")
    parser.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (env GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", default=_truthy(env.get("GROUNDING_SHARE")),
                        help="open a public gradio.live link (env GROUNDING_SHARE=1); needs internet")
    parser.add_argument("--device", default=env.get("GROUNDING_DEVICE") or None,
                        help="torch device, e.g. cpu, cuda, cuda:1 (env GROUNDING_DEVICE; default: cuda if present)")
    parser.add_argument("--detector", action="append", default=None,
                        help="Grounding DINO: swint_ogc | swinb_cogcoor | IDEA-Research/grounding-dino-tiny | "
                             "IDEA-Research/grounding-dino-base | a local .pth/.safetensors/dir. Repeat (or comma-"
                             "separate) to offer a choice in the page (env GROUNDING_DETECTOR)")
    parser.add_argument("--sam", action="append", default=None,
                        help="segmenter: vit_b | vit_l | vit_h (SAM) | sam2.1_hiera_tiny | _small | _base_plus | _large "
                             "(SAM 2.1) | sam_hq_vit_b | _l | _h (SAM-HQ), a SAM .pth file, a SAM 2 / SAM-HQ folder, "
                             "or 'none' for boxes only. Repeat (or comma-separate) to offer a choice in the page "
                             "(env GROUNDING_SAM; default vit_h on GPU, vit_b on CPU)")
    parser.add_argument("--sam-checkpoint", default=env.get("SAM_CHECKPOINT") or None,
                        help="local SAM weights file for the variant (env SAM_CHECKPOINT)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES,
                        default=env.get("GROUNDING_PRECISION") or "auto",
                        help="numeric precision of the models: auto = bf16 on GPUs that have it and on CPUs that run "
                             "it natively (AVX512-BF16/AMX), fp16 on older GPUs, fp32 otherwise (env GROUNDING_PRECISION)")
    parser.add_argument("--max-prompt-tokens", type=int,
                        default=int(env.get("GROUNDING_MAX_PROMPT_TOKENS", "1024")),
                        help="longest prompt the studio runs, in BERT tokens; each 256 is one more model pass "
                             "(env GROUNDING_MAX_PROMPT_TOKENS)")
    hosting = parser.add_argument_group("hosting limits (README: Hosting)")
    defaults = HostingLimits()
    hosting.add_argument("--max-upload-mb", type=int, default=_number(env, "GROUNDING_MAX_UPLOAD_MB", defaults.max_upload_mb),
                         help="largest image file or data: URL accepted (env GROUNDING_MAX_UPLOAD_MB)")
    hosting.add_argument("--max-decode-mb", type=int, default=_number(env, "GROUNDING_MAX_DECODE_MB", defaults.max_decode_mb),
                         help="memory one image may take to decode, judged from its header; larger ones are refused "
                              "or, for JPEG, decoded at a reduced scale (env GROUNDING_MAX_DECODE_MB)")
    hosting.add_argument("--max-side", type=int, default=_number(env, "GROUNDING_MAX_SIDE", defaults.max_side),
                         help="long side images are downscaled to (env GROUNDING_MAX_SIDE)")
    hosting.add_argument("--cache-mb", type=int, default=_number(env, "GROUNDING_CACHE_MB", defaults.cache_mb),
                         help="disk for uploads and results; the oldest are deleted beyond it (env GROUNDING_CACHE_MB)")
    hosting.add_argument("--cache-minutes", type=float,
                         default=_number(env, "GROUNDING_CACHE_MINUTES", defaults.cache_minutes, float),
                         help="uploads and results unused for this long are deleted (env GROUNDING_CACHE_MINUTES)")
    hosting.add_argument("--load-retry-s", type=float,
                         default=_number(env, "GROUNDING_LOAD_RETRY_S", defaults.load_retry_s, float),
                         help="seconds before a model that failed to load is tried again; the page's Retry button "
                              "tries at once (env GROUNDING_LOAD_RETRY_S)")
    hosting.add_argument("--video-max-seconds", type=float,
                         default=_number(env, "GROUNDING_VIDEO_MAX_SECONDS", defaults.video_max_seconds, float),
                         help="the Video tab uses at most this much of a video (env GROUNDING_VIDEO_MAX_SECONDS)")
    hosting.add_argument("--video-max-frames", type=int,
                         default=_number(env, "GROUNDING_VIDEO_MAX_FRAMES", defaults.video_max_frames),
                         help="... and at most this many frames (env GROUNDING_VIDEO_MAX_FRAMES)")
    hosting.add_argument("--video-max-side", type=int,
                         default=_number(env, "GROUNDING_VIDEO_MAX_SIDE", defaults.video_max_side),
                         help="video frames are scaled down to this long side (env GROUNDING_VIDEO_MAX_SIDE)")
    hosting.add_argument("--video-max-run-s", type=float,
                         default=_number(env, "GROUNDING_VIDEO_MAX_RUN_S", defaults.video_max_run_s, float),
                         help="a video run stops after this many seconds, keeping the frames done "
                              "(env GROUNDING_VIDEO_MAX_RUN_S)")
    args = parser.parse_args(argv)
    try:
        limits = HostingLimits(
            max_upload_mb=args.max_upload_mb, max_decode_mb=args.max_decode_mb, max_side=args.max_side,
            cache_mb=args.cache_mb, cache_minutes=args.cache_minutes, load_retry_s=args.load_retry_s,
            video_max_seconds=args.video_max_seconds, video_max_frames=args.video_max_frames,
            video_max_side=args.video_max_side, video_max_run_s=args.video_max_run_s,
        )
    except ValueError as error:
        parser.error(str(error))
    try:  # a bad $GROUNDING_PRECISION (argparse checks only the flag), fp16 on a CPU; "auto" always resolves
        if args.precision != "auto":
            resolve_precision(args.precision, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except ValueError as error:
        parser.error(str(error))
    detector_specs = args.detector or [env.get("GROUNDING_DETECTOR") or "swint_ogc"]
    detectors = tuple(name.strip() for spec in detector_specs for name in spec.split(",") if name.strip())
    if not detectors:
        parser.error("--detector needs at least one name or path")
    sam_specs = args.sam or ([env["GROUNDING_SAM"]] if env.get("GROUNDING_SAM") else [])
    segmenters = tuple(name.strip() for spec in sam_specs for name in spec.split(",") if name.strip())
    return StudioSettings(
        host=args.host,
        port=args.port,
        share=args.share,
        device=args.device,
        detectors=detectors,
        segmenters=segmenters,
        sam_checkpoint=args.sam_checkpoint,
        max_prompt_tokens=args.max_prompt_tokens,
        precision=args.precision,
        limits=limits,
    )


def _number(env: dict[str, str] | os._Environ, name: str, default: float, kind: type = int) -> float:
    value = env.get(name)
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise SystemExit(f"python app.py: ${name} must be a number, got {value!r}") from None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}
