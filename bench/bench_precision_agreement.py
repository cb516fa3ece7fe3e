"""Does bf16 give the same answers as fp32? The shipped shapes models on freshly generated scenes (a seed no
training used), every scene's categories as the prompt, default thresholds: each fp32 detection must have a
bf16 twin (IoU >= 0.95, same phrase, score within 0.03, mask IoU >= 0.95), and the other way round. A detection
whose score is within 0.03 of the box threshold may exist in one precision only (it is on the edge in both).
Also reports the random Swin-T's logit and box differences at 800x1200.

    python bench/bench_precision_agreement.py [--scenes 100] [--seed 3000]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from grounding.agreement import Agreement, compare_detections
from grounding.shipped import load_shapes_pipeline
from grounding.train.shapes import ShapesConfig, render_scene

BOX_THRESHOLD, TEXT_THRESHOLD, EDGE = 0.35, 0.25, 0.03


def compare_scenes(scenes: int, seed: int) -> None:
    fp32 = load_shapes_pipeline("cpu", precision="fp32")
    bf16 = load_shapes_pipeline("cpu", precision="bf16")
    total = Agreement()
    detections, timings = 0, {"fp32": 0.0, "bf16": 0.0}
    for index in range(scenes):
        image, instances = render_scene(np.random.default_rng([seed, index]), ShapesConfig(image_size=(256, 256)))
        pixels = np.asarray(image)
        prompt = " . ".join(sorted({instance.category for instance in instances}))
        results = {}
        for name, pipeline in (("fp32", fp32), ("bf16", bf16)):
            tick = time.perf_counter()
            results[name] = pipeline.segment(pixels, prompt, BOX_THRESHOLD, TEXT_THRESHOLD)
            timings[name] += time.perf_counter() - tick
        agreement = compare_detections(results["fp32"], results["bf16"])
        detections += len(results["fp32"])
        total.pairs += agreement.pairs
        for name in ("box_ious", "score_diffs", "mask_ious", "unpaired_scores"):
            getattr(total, name).extend(getattr(agreement, name))
    off_edge = [score for score in total.unpaired_scores if abs(score - BOX_THRESHOLD) > EDGE]
    print(f"{scenes} scenes (seed {seed}), shipped shapes models, thresholds {BOX_THRESHOLD}/{TEXT_THRESHOLD}:")
    print(f"  fp32 detections {detections}, pairs {len(total.pairs)}, unpaired {len(total.unpaired_scores)} "
          f"(off the threshold's edge: {len(off_edge)})")
    print(f"  box IoU min {min(total.box_ious, default=1):.4f} (pairs < 0.95: {sum(v < 0.95 for v in total.box_ious)})")
    print(f"  score diff max {max(total.score_diffs, default=0):.4f} (pairs > 0.03: {sum(v > 0.03 for v in total.score_diffs)})")
    print(f"  mask IoU min {min(total.mask_ious, default=1):.4f} (pairs < 0.95: {sum(v < 0.95 for v in total.mask_ious)})")
    print(f"  time fp32 {timings['fp32']:.1f} s, bf16 {timings['bf16']:.1f} s (cold caches per scene)")


def random_swin_t() -> None:
    from grounding.config import swint_ogc
    from grounding.precision import inference_precision
    from tests.fixtures.dino import random_model

    model = random_model(swint_ogc(), seed=0)
    pixels = torch.randn(1, 3, 800, 1200)
    input_ids = torch.tensor([[101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 102]])
    outputs = {}
    for precision in ("fp32", "bf16"):
        with inference_precision("cpu", precision):
            outputs[precision] = model(input_ids, torch.ones_like(input_ids), pixel_values=pixels)
    finite = torch.isfinite(outputs["fp32"].pred_logits)
    logits = (outputs["fp32"].pred_logits[finite] - outputs["bf16"].pred_logits[finite]).abs()
    boxes = (outputs["fp32"].pred_boxes - outputs["bf16"].pred_boxes).abs()
    print(f"random Swin-T, 800x1200, bf16 vs fp32: logits max {logits.max():.3g} (mean {logits.mean():.3g}, "
          f"scale {outputs['fp32'].pred_logits[finite].abs().max():.3g}), boxes max {boxes.max():.3g} "
          f"(mean {boxes.mean():.3g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    compare_scenes(args.scenes, args.seed)
    random_swin_t()


if __name__ == "__main__":
    main()
