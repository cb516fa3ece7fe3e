"""How a shapes detector reads prompts as people write them, family by family, on freshly generated scenes.

    python -m grounding.train.prompt_eval --detector assets/shapes/detector.pth [--scenes 100 --seed 3000]

Each scene is asked for one object kind it holds, written in the family's way ("a purple ring", "purple rings",
"find the purple ring", ...), through the pipeline at the studio's default thresholds (box 0.35, text 0.25).
Recall: the share of that kind's objects boxed (IoU >= 0.5); precision: the share of boxes on one of them.
Scene families change the scene instead (tiny or huge objects, shades of the colours, crowds) and ask plainly.
"No box" families ask for something absent (a common object word, or a shapes phrase not in the scene) and count
the scenes that get no box at all. The seed must be one no training run used (training 0, held-out 1000).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import supervision as sv
import torch

from grounding.pipeline import GroundedSAM
from grounding.train.shapes import ShapesConfig, category_names, render_scene
from grounding.train.wording import unrelated_phrase, written

DEFAULT_SEED = 3000
SCENE = ShapesConfig(image_size=(256, 256))
# family -> (scene, how the phrase is written; "unrelated" and "absent" ask for something not there)
FAMILIES: dict[str, tuple[ShapesConfig, str]] = {
    "plain (X)": (SCENE, "plain"),
    "article (a X)": (SCENE, "article"),
    "the X .": (SCENE, "the_dot"),
    "plural (Xs)": (SCENE, "plural"),
    "adjectives (small bright X)": (SCENE, "adjective"),
    "sentence (find the X)": (SCENE, "sentence"),
    "radius 0.02-0.05": (replace(SCENE, min_radius=0.02, max_radius=0.05, min_pixels=16), "plain"),
    "radius 0.25-0.4": (replace(SCENE, min_radius=0.25, max_radius=0.4, max_objects=3), "plain"),
    "shades (pastel / darker)": (replace(SCENE, shade=0.4), "plain"),
    "10-12 objects": (replace(SCENE, min_objects=10, max_objects=12, min_radius=0.04, max_radius=0.12), "plain"),
    "unrelated words (no box)": (SCENE, "unrelated"),
    "absent phrases (no box)": (SCENE, "absent"),
    "absent phrases, 10-12 objects (no box)": (replace(SCENE, min_objects=10, max_objects=12, min_radius=0.04,
                                                       max_radius=0.12), "absent"),
}


@dataclass
class FamilyResult:
    family: str
    scenes: int
    recall: float | None = None  # named objects boxed
    precision: float | None = None  # boxes on a named object
    no_box: float | None = None  # scenes without any box (the "no box" families)


def _mask_boxes(masks: list[np.ndarray]) -> np.ndarray:
    """[N, 4] xyxy px of masks' visible pixels, right and bottom edges exclusive (as the dataset's boxes)."""
    if not masks:
        return np.zeros((0, 4), np.float32)
    return sv.mask_to_xyxy(np.stack(masks)).astype(np.float32) + np.array([0, 0, 1, 1], np.float32)


def evaluate_family(pipeline: GroundedSAM, family: str, scenes: int, seed: int) -> FamilyResult:
    config, style = FAMILIES[family]
    names = category_names()
    found = wanted = on_target = boxes_total = clean = asked = 0
    index = 0
    while asked < scenes:
        rng = np.random.default_rng([seed, sorted(FAMILIES).index(family), index])
        index += 1
        image, instances = render_scene(rng, config)
        present = sorted({instance.category for instance in instances})
        if style == "absent":
            absent = [name for name in names if name not in present]
            if not absent:
                continue
            prompt = str(rng.choice(absent))
        elif style == "unrelated":
            prompt = unrelated_phrase(rng)
        elif not present:
            continue
        else:
            target = str(rng.choice(present))
            prompt = written(target, style, rng)[0] + (" ." if style == "the_dot" else "")
        asked += 1
        result = pipeline.detect(np.asarray(image), prompt)
        boxes = np.asarray(result.boxes, np.float32).reshape(-1, 4)
        if style in ("absent", "unrelated"):
            clean += int(len(boxes) == 0)
            continue
        truth = _mask_boxes([i.mask for i in instances if i.category == target])
        iou = sv.box_iou_batch(truth, boxes) if len(boxes) else np.zeros((len(truth), 0))
        wanted += len(truth)
        found += int((iou >= 0.5).any(1).sum()) if len(boxes) else 0
        boxes_total += len(boxes)
        on_target += int((iou >= 0.5).any(0).sum()) if len(boxes) else 0
    if style in ("absent", "unrelated"):
        return FamilyResult(family, scenes, no_box=clean / scenes)
    return FamilyResult(family, scenes, recall=found / max(wanted, 1), precision=on_target / max(boxes_total, 1))


def evaluate_prompts(pipeline: GroundedSAM, scenes: int = 100, seed: int = DEFAULT_SEED,
                     families: list[str] | None = None) -> list[FamilyResult]:
    return [evaluate_family(pipeline, family, scenes, seed) for family in families or list(FAMILIES)]


def markdown(results: list[FamilyResult]) -> str:
    rows = ["| family | recall | precision | no box |", "|---|---|---|---|"]
    cell = lambda value: f"{value:.2f}" if value is not None else ""  # noqa: E731
    rows += [f"| {r.family} | {cell(r.recall)} | {cell(r.precision)} | {cell(r.no_box)} |" for r in results]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m grounding.train.prompt_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--detector", type=Path, required=True, help="a shapes detector checkpoint (detector.pth)")
    parser.add_argument("--scenes", type=int, default=100, help="scenes per family")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from grounding.detector import GroundingDetector

    pipeline = GroundedSAM(GroundingDetector.from_pretrained(args.detector, device="cpu", download=False))
    results = evaluate_prompts(pipeline, args.scenes, args.seed)
    print(json.dumps([asdict(r) for r in results], indent=1) if args.json else markdown(results))


if __name__ == "__main__":
    main()
