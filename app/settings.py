"""How the studio is started: command-line flags, each with an environment-variable default.

Flag beats environment variable beats built-in default. Gradio's own variables are honoured for the
address (`GRADIO_SERVER_NAME`, `GRADIO_SERVER_PORT`), which is what Hugging Face Spaces sets.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StudioSettings:
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    device: str | None = None  # None: cuda if available, else cpu
    detectors: tuple[str, ...] = ("swint_ogc",)  # names or checkpoint paths; >1 gives a model dropdown
    sam: str | None = None  # "vit_b" | "vit_l" | "vit_h" | a checkpoint path | "none"; None: by device
    sam_checkpoint: str | None = None  # local SAM weights for the chosen variant
    max_prompt_tokens: int = 1024  # longer prompts are refused with a message (batch CLI has no limit)

    @property
    def sam_enabled(self) -> bool:
        return (self.sam or "").lower() != "none"


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
    parser.add_argument("--sam", default=env.get("GROUNDING_SAM") or None,
                        help="SAM variant vit_b | vit_l | vit_h, a checkpoint path, or 'none' for boxes only "
                             "(env GROUNDING_SAM; default vit_h on GPU, vit_b on CPU)")
    parser.add_argument("--sam-checkpoint", default=env.get("SAM_CHECKPOINT") or None,
                        help="local SAM weights file for the variant (env SAM_CHECKPOINT)")
    parser.add_argument("--max-prompt-tokens", type=int,
                        default=int(env.get("GROUNDING_MAX_PROMPT_TOKENS", "1024")),
                        help="longest prompt the studio runs, in BERT tokens; each 256 is one more model pass "
                             "(env GROUNDING_MAX_PROMPT_TOKENS)")
    args = parser.parse_args(argv)
    detector_specs = args.detector or [env.get("GROUNDING_DETECTOR") or "swint_ogc"]
    detectors = tuple(name.strip() for spec in detector_specs for name in spec.split(",") if name.strip())
    if not detectors:
        parser.error("--detector needs at least one name or path")
    return StudioSettings(
        host=args.host,
        port=args.port,
        share=args.share,
        device=args.device,
        detectors=detectors,
        sam=args.sam,
        sam_checkpoint=args.sam_checkpoint,
        max_prompt_tokens=args.max_prompt_tokens,
    )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}
