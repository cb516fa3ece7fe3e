"""CPU timing of our Grounding DINO against transformers' GroundingDinoForObjectDetection.

Same process, same random weights (every parameter random; transformers loads them with from_pretrained from an HF
checkpoint written through grounding.keymap),
same input: the full Swin-T architecture (swint_ogc) on an 800x1200 image and the caption
"a cat . a remote control .", fp32. Each model runs once to warm up, then `--repeats` times alternately;
the medians, their ratio (ours / transformers) and the output differences are printed.

Where ours saves time (both exact up to float re-association):
- deformable attention: one embedding_bag gather over a padded value table instead of per-level
  grid_sample + stack + multiply + sum (grounding/ops/ms_deform_attn_torch.py);
- image<->text fusion: products re-associated so image tokens are never projected to 1024 dims
  (grounding/model/fusion.py);
- query selection runs the box head only on the 900 selected tokens.

The output differences are informative only: with random weights some query-selection scores tie within
fp32 rounding, so the two models may pick the same anchors in another order (tests/model/test_parity.py
checks parity with the ranking replayed).

    python bench/bench_detector_cpu.py [--size 800x1200] [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: grounding/ and tests/fixtures/

CAT_REMOTE = [101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 102]  # "a cat . a remote control ."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="800x1200", help="HxW of the preprocessed image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))

    from grounding.config import swint_ogc
    from grounding.keymap import as_transformers_port
    from tests.fixtures.dino import load_hf_reference, random_model

    config = swint_ogc()
    ours = random_model(as_transformers_port(config), seed=0)
    with tempfile.TemporaryDirectory() as directory:
        theirs, info = load_hf_reference(ours, directory)  # HF checkpoint via grounding.keymap, from_pretrained
    if info["missing_keys"] or info["unexpected_keys"]:
        raise SystemExit(f"weight mapping incomplete: {len(info['missing_keys'])} missing, "
                         f"{len(info['unexpected_keys'])} unexpected keys")

    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, height, width, generator=generator)
    pixel_mask = torch.ones(1, height, width, dtype=torch.bool)
    input_ids = torch.tensor([CAT_REMOTE])
    attention_mask = torch.ones_like(input_ids)

    def run_ours():
        return ours(input_ids, attention_mask, pixel_values=pixel_values, pixel_mask=pixel_mask)

    def run_theirs():
        return theirs(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                      pixel_mask=pixel_mask.long())

    times: dict[str, list[float]] = {"ours": [], "transformers": []}
    with torch.inference_mode():
        out_ours, out_theirs = run_ours(), run_theirs()  # warm-up
        for _ in range(args.repeats):
            for name, fn in (("ours", run_ours), ("transformers", run_theirs)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        ours.encode_image(pixel_values, pixel_mask)
        image_time = time.perf_counter() - start
        start = time.perf_counter()
        theirs.model.backbone(pixel_values, pixel_mask.long())
        their_backbone_time = time.perf_counter() - start

    finite = torch.isfinite(out_theirs.logits)
    logit_diff = (out_ours.pred_logits[finite] - out_theirs.logits[finite]).abs().max().item()
    box_diff = (out_ours.pred_boxes - out_theirs.pred_boxes).abs().max().item()
    ours_median = statistics.median(times["ours"])
    theirs_median = statistics.median(times["transformers"])
    print(f"Swin-T {height}x{width}, {len(CAT_REMOTE)} tokens, fp32, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats")
    print(f"ours          median {ours_median:7.2f} s  runs {[round(t, 2) for t in times['ours']]}"
          f"  (image encoder alone {image_time:.2f} s)")
    print(f"transformers  median {theirs_median:7.2f} s  runs {[round(t, 2) for t in times['transformers']]}"
          f"  (Swin backbone alone {their_backbone_time:.2f} s)")
    print(f"ratio ours / transformers = {ours_median / theirs_median:.3f}")
    print(f"max abs diff: logits {logit_diff:.2e}, boxes {box_diff:.2e} (see docstring on selection ties)")


if __name__ == "__main__":
    main()
