"""Folder in, annotations out: `python -m grounding.batch --images DIR --prompt "cat . dog ." --out DIR`.

Writes `OUT/annotated/<name>.png` (masks, boxes, labels), `OUT/coco.json` (all images, RLE masks) and,
with `--save-masks`, `OUT/masks/<name>/NNN_phrase.png`. Images that cannot be read are reported and
skipped; the exit status is 0 if every image was processed, 1 if some failed, 2 on a usage or weights error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from grounding.drawing import annotate
from grounding.errors import GroundingError
from grounding.export import coco_dataset, write_mask_pngs
from grounding.images import load_image
from grounding.pipeline import GroundedResult, GroundedSAM, check_nms_iou
from grounding.precision import CHOICES as PRECISION_CHOICES
from grounding.segmenters import SEGMENTER_NAMES
from grounding.postprocess import check_threshold
from grounding.text import normalize_caption, split_phrases

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def find_images(directory: Path) -> list[Path]:
    """Image files directly in `directory`, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m grounding.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of images (not recursive)")
    parser.add_argument("--prompt", required=True, help='phrases separated by ".", e.g. "cat . remote control ."')
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--detector", default="swint_ogc", help="detector name or local checkpoint path")
    parser.add_argument("--sam", default="auto",
                        help=f"{' | '.join(SEGMENTER_NAMES)} | auto | a SAM .pth | a SAM 2 / SAM-HQ folder | none "
                             f"(boxes only)")
    parser.add_argument("--sam-checkpoint", type=Path, default=None, help="local SAM .pth (skips the download)")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:1 (default: cuda if available)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="auto = bf16 where the device runs it natively, fp16 on older GPUs, else fp32")
    parser.add_argument("--box-threshold", type=float, default=0.35)
    parser.add_argument("--text-threshold", type=float, default=0.25)
    parser.add_argument("--nms-iou", type=float, default=None, help="class-agnostic NMS IoU (default off)")
    parser.add_argument("--multimask", action="store_true", help="best of SAM's three masks per box")
    parser.add_argument("--save-masks", action="store_true", help="also write one PNG per object")
    parser.add_argument("--no-download", action="store_true", help="never download weights")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, pipeline: GroundedSAM | None = None) -> int:
    """Process the folder; returns the exit status. `pipeline` overrides loading models by name."""
    if not args.images.is_dir():
        print(f"error: --images {args.images} is not a folder", file=sys.stderr)
        return 2
    paths = find_images(args.images)
    if not paths:
        print(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {args.images}", file=sys.stderr)
        return 2
    try:
        prompt_phrases = split_phrases(normalize_caption(args.prompt))
        check_threshold(args.box_threshold, "--box-threshold")
        check_threshold(args.text_threshold, "--text-threshold")
        check_nms_iou(args.nms_iou)
        if pipeline is None:
            sam = None if args.sam.lower() == "none" else args.sam
            pipeline = GroundedSAM.from_names(
                args.detector, sam=sam, device=args.device, sam_checkpoint=args.sam_checkpoint, precision=args.precision,
                download=not args.no_download,
            )
    except GroundingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_step = pipeline.segment if pipeline.segmenter is not None else pipeline.detect
    options = dict(box_threshold=args.box_threshold, text_threshold=args.text_threshold, nms_iou=args.nms_iou)
    if pipeline.segmenter is not None:
        options["multimask"] = args.multimask

    (args.out / "annotated").mkdir(parents=True, exist_ok=True)
    done: list[tuple[str, GroundedResult]] = []
    failures: list[str] = []
    for path in tqdm(paths, desc="images", unit="img"):
        try:
            loaded = load_image(path, pipeline.image_limits)
            result = run_step(loaded, args.prompt, **options)
        except GroundingError as err:
            failures.append(f"{path.name}: {err}")
            tqdm.write(f"skipped {path.name}: {err}", file=sys.stderr)
            continue
        names = prompt_phrases + sorted({p for p in result.phrases if p not in prompt_phrases})
        Image.fromarray(annotate(loaded.pixels, result, names)).save(args.out / "annotated" / f"{path.stem}.png")
        if args.save_masks:
            write_mask_pngs(result, args.out / "masks" / path.stem)
        done.append((path.name, result))

    coco = coco_dataset(done)
    (args.out / "coco.json").write_text(json.dumps(coco, indent=1))
    found = len(coco["annotations"])
    print(f"{len(done)}/{len(paths)} images, {found} objects -> {args.out}")
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
