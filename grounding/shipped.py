"""The "shapes" demo models that ship in the repository (trained by `python -m grounding.train.demo_model`).

A bundle folder holds `detector.pth` (our checkpoint format: official keys + config, which records the input
size) and `sam.pth` (official SAM layout, the `shapes` variant). It loads through the same code paths as the
released checkpoints. The studio offers it as a model choice and falls back to it when the real weights
cannot be fetched. `$GROUNDING_SHAPES_DIR` points elsewhere (an empty folder hides the bundle).

The files are stored in fp16 (the loaders cast to the model's dtype), so that each stays under the 10 MiB a
Hugging Face Space accepts without Git LFS; `write_bundle` makes them from the trained fp32 weights:

    python -m grounding.shipped --detector runs/shapes/model/model.pth --sam runs/shapes/model/sam.pth
"""
from __future__ import annotations

import argparse
import io
import os
import threading
from pathlib import Path

import torch

from grounding.cache import PipelineCaches
from grounding.checkpoint import map_tensors_keeping_ties
from grounding.detector import GroundingDetector
from grounding.errors import WeightsUnavailableError
from grounding.pipeline import GroundedSAM
from grounding.precision import resolve_precision
from grounding.segmenters.sam import SamSegmenter

SHAPES_NAME = "shapes"
SHAPES_DIR_ENV = "GROUNDING_SHAPES_DIR"
DETECTOR_FILE = "detector.pth"
SAM_FILE = "sam.pth"
SAM_VARIANT = "shapes"
MAX_FILE_BYTES = 10 * 2**20  # a larger file must go through Git LFS on a Hugging Face Space


def shapes_dir() -> Path:
    """Where the bundle is read from: `$GROUNDING_SHAPES_DIR`, else `assets/shapes/` of the repository."""
    return Path(os.environ.get(SHAPES_DIR_ENV) or Path(__file__).resolve().parents[1] / "assets" / "shapes")


def shapes_available(directory: Path | None = None) -> bool:
    directory = directory or shapes_dir()
    return (directory / DETECTOR_FILE).is_file() and (directory / SAM_FILE).is_file()


def load_shapes_pipeline(
    device: str | torch.device | None = None,
    caches: PipelineCaches | None = None,
    directory: Path | None = None,
    run_lock: threading.Lock | None = None,
    precision: str = "fp32",
) -> GroundedSAM:
    """The shipped detector + SAM as one `GroundedSAM`; WeightsUnavailableError if the files are not there."""
    directory = directory or shapes_dir()
    if not shapes_available(directory):
        raise WeightsUnavailableError(
            f"The shapes demo models are not in {directory} (expected {DETECTOR_FILE} and {SAM_FILE}); "
            "`python -m grounding.train.demo_model` trains them."
        )
    detector = GroundingDetector.from_pretrained(directory / DETECTOR_FILE, device=device, download=False)
    segmenter = SamSegmenter.from_pretrained(SAM_VARIANT, checkpoint=directory / SAM_FILE, device=device, download=False)
    detector.name = segmenter.name = SHAPES_NAME
    return GroundedSAM(detector, segmenter, caches=caches, run_lock=run_lock, precision=precision)


def load_named_pipeline(detector: str, sam: str | None = "auto", device: str | torch.device | None = None,
                        sam_checkpoint: str | os.PathLike | None = None, precision: str = "auto",
                        download: bool = True) -> GroundedSAM:  # fmt: skip
    """`GroundedSAM.from_names`, plus `detector="shapes"`: the shipped bundle (its detector with its SAM; `sam=None`
    for boxes only), as the studio's model menu offers it. For the command-line tools."""
    if detector != SHAPES_NAME:
        return GroundedSAM.from_names(detector, sam=sam, device=device, sam_checkpoint=sam_checkpoint,
                                      precision=precision, download=download)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipeline = load_shapes_pipeline(device, precision=resolve_precision(precision, device))
    return pipeline if sam is not None else pipeline.with_segmenter(None)


def half_precision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors in fp16; keys that share a tensor (the tied box heads) still share one."""
    return map_tensors_keeping_ties(state_dict, lambda tensor: tensor.detach().half() if tensor.is_floating_point() else tensor)


def write_bundle(detector_checkpoint: str | os.PathLike, sam_checkpoint: str | os.PathLike, directory: Path | None = None) -> Path:
    """Write the bundle from trained weights (our detector checkpoint, an official-layout SAM state dict) in
    fp16; ValueError, with nothing written, if a file would pass MAX_FILE_BYTES."""
    directory = Path(directory or shapes_dir())
    detector = torch.load(detector_checkpoint, map_location="cpu", weights_only=True)
    sam = torch.load(sam_checkpoint, map_location="cpu", weights_only=True)
    files = {}
    for name, payload in ((DETECTOR_FILE, {**detector, "model": half_precision(detector["model"])}), (SAM_FILE, half_precision(sam))):
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        if (size := buffer.getbuffer().nbytes) > MAX_FILE_BYTES:
            raise ValueError(f"{name} would be {size / 2**20:.2f} MiB, over the {MAX_FILE_BYTES / 2**20:g} MiB limit")
        files[name] = buffer.getvalue()
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m grounding.shipped", description="Write the shapes demo bundle (fp16).")
    parser.add_argument("--detector", required=True, help="trained detector checkpoint (model.pth of demo_model)")
    parser.add_argument("--sam", required=True, help="trained SAM weights (sam.pth of demo_model)")
    parser.add_argument("--out", type=Path, default=None, help="bundle folder (default: assets/shapes/)")
    args = parser.parse_args(argv)
    directory = write_bundle(args.detector, args.sam, args.out)
    for name in (DETECTOR_FILE, SAM_FILE):
        print(f"{directory / name}: {(directory / name).stat().st_size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
