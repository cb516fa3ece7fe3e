"""CPU time and size of every detector and segmenter the studio loads by name, with random weights (nothing is
downloaded): the README's "Detectors" and "Segmenters" tables.

    python bench/bench_models_cpu.py [--threads 2] [--only detectors|segmenters]

Detectors: the image encoder (Swin + input projections) and the text side (BERT + transformer, 9 tokens) at
800x1200, one run each after a warm-up run. Segmenters: the image encoder on a 1200x800 picture and 8 box decodes
from its embedding, one run each (the larger ones take minutes). Prints a markdown table per family.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

CAT_REMOTE = [101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 102]


def timed(fn, repeat: int = 1, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return float(np.median(times))


def params(model: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M"


def detectors() -> None:
    from grounding.config import mm_grounding_dino, swinb_cogcoor, swint_ogc
    from grounding.model import GroundingDINO

    rows = [("Grounding DINO-T (swint_ogc)", swint_ogc()), ("Grounding DINO-B (swinb_cogcoor)", swinb_cogcoor()),
            ("MM-Grounding-DINO-T / LLMDet-T", mm_grounding_dino("tiny")),
            ("MM-Grounding-DINO-B / LLMDet-B", mm_grounding_dino("base")),
            ("MM-Grounding-DINO-L / LLMDet-L", mm_grounding_dino("large"))]
    print("| detector | params | image encoder | text side | total |\n|---|---|---|---|---|")
    pixels = torch.randn(1, 3, 800, 1200)
    input_ids = torch.tensor([CAT_REMOTE])
    for name, config in rows:
        torch.manual_seed(0)
        model = GroundingDINO(config).eval()
        with torch.inference_mode():
            image_s = timed(lambda: model.encode_image(pixels))
            features = model.encode_image(pixels)
            text_s = timed(lambda: model(input_ids, torch.ones_like(input_ids), image_features=features))
        print(f"| {name} | {params(model)} | {image_s:.1f} s | {text_s:.1f} s | {image_s + text_s:.1f} s |", flush=True)
        del model, features


def sam2_config(size: str):
    from transformers import Sam2Config
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    hiera = {  # the released SAM 2.1 Hiera sizes
        "tiny": {},
        "small": dict(blocks_per_stage=[1, 2, 11, 2], global_attention_blocks=[7, 10, 13]),
        "base_plus": dict(hidden_size=112, num_attention_heads=2, blocks_per_stage=[2, 3, 16, 3],
                          embed_dim_per_stage=[112, 224, 448, 896], num_attention_heads_per_stage=[2, 4, 8, 16],
                          global_attention_blocks=[12, 16, 20], window_positional_embedding_background_size=[14, 14]),
        "large": dict(hidden_size=144, num_attention_heads=2, blocks_per_stage=[2, 6, 36, 4],
                      embed_dim_per_stage=[144, 288, 576, 1152], num_attention_heads_per_stage=[2, 4, 8, 16],
                      window_size_per_stage=[8, 4, 16, 8], global_attention_blocks=[23, 33, 43]),
    }[size]
    backbone = Sam2HieraDetConfig(**hiera)
    return Sam2Config(vision_config=Sam2VisionConfig(backbone_config=backbone,
                                                     backbone_channel_list=backbone.embed_dim_per_stage[::-1]))


def sam_hq_config(letter: str):
    from transformers import SamHQConfig
    from transformers.models.sam_hq.configuration_sam_hq import SamHQMaskDecoderConfig, SamHQVisionConfig

    width, depth, heads, globals_ = {"b": (768, 12, 12, [2, 5, 8, 11]), "l": (1024, 24, 16, [5, 11, 17, 23]),
                                     "h": (1280, 32, 16, [7, 15, 23, 31])}[letter]
    return SamHQConfig(vision_config=SamHQVisionConfig(hidden_size=width, num_hidden_layers=depth,
                                                       num_attention_heads=heads, global_attn_indexes=globals_),
                       mask_decoder_config=SamHQMaskDecoderConfig(vit_dim=width))


def segmenters() -> None:
    from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor, SamHQModel, SamHQProcessor, SamImageProcessor

    from grounding.segmenters.sam import SAM_VARIANTS, SamSegmenter, build_sam
    from grounding.segmenters.transformers_sam import FAMILIES, TransformersSegmenter

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (800, 1200, 3), dtype=np.uint8)
    boxes = np.array([[100 + 100 * i, 100, 300 + 100 * i, 500] for i in range(8)], np.float32)
    print("| segmenter | params | image encoder (1200x800) | 8 box decodes |\n|---|---|---|---|")
    entries = [(f"SAM {v}", lambda v=v: SamSegmenter(build_sam(SAM_VARIANTS[v]), f"sam-{v}")) for v in ("vit_b", "vit_l", "vit_h")]
    for size in ("tiny", "small", "base_plus", "large"):
        entries.append((f"SAM 2.1 hiera_{size}", lambda size=size: TransformersSegmenter(
            FAMILIES["sam2"], Sam2Model(sam2_config(size)).eval(), Sam2Processor(image_processor=Sam2ImageProcessor()),
            f"sam2-{size}", f"sam2.1_hiera_{size}")))
    for letter in ("b", "l", "h"):
        entries.append((f"SAM-HQ vit_{letter}", lambda letter=letter: TransformersSegmenter(
            FAMILIES["sam_hq"], SamHQModel(sam_hq_config(letter)).eval(),
            SamHQProcessor(image_processor=SamImageProcessor()), f"sam_hq-{letter}", f"sam_hq_vit_{letter}")))
    for name, build in entries:
        torch.manual_seed(0)
        segmenter = build()
        with torch.inference_mode():
            encode_s = timed(lambda: segmenter.encode_image(image), warmup=False)
            embedding = segmenter.encode_image(image)
            decode_s = timed(lambda: segmenter.decode_boxes(embedding, boxes))
        print(f"| {name} | {params(segmenter.model)} | {encode_s:.1f} s | {decode_s:.2f} s |", flush=True)
        del segmenter, embedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["detectors", "segmenters"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only in (None, "detectors"):
        detectors()
    if args.only in (None, "segmenters"):
        segmenters()


if __name__ == "__main__":
    main()
