"""COCO-style evaluation of a Grounding DINO checkpoint on a COCO-format dataset (supervision's COCO evaluator).

    python -m grounding.train.eval --data ann.json --images DIR --checkpoint runs/x/model.pth [--prompts single]

Prompt modes: "all" puts every category into one caption per image (chunked past 256 tokens); "single" asks
each category on its own (one text batch per image over the cached image features), which also measures how
often a phrase absent from the image still yields a box above `box_threshold`.
A query's score for a phrase is its highest token probability inside the phrase; each query keeps its best
phrase, and the image's 100 best queries are scored.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import numpy as np
import supervision as sv
import torch
from supervision.metrics import MeanAveragePrecision
from tqdm import tqdm

from grounding.model import GroundingDINO
from grounding.text import TokenizedCaption, load_tokenizer, tokenize_caption
from grounding.train.data import CocoGroundingDataset, ImageSizes, image_to_tensor, resize_to
from grounding.train.trainer import build_model

MAX_DETECTIONS = 100


@dataclass
class EvalResult:
    map50_95: float
    map50: float
    map75: float
    absent_without_box: float | None  # fraction of (image, absent phrase) prompts with no box > box_threshold
    # the same over absent phrases sharing a word with a present one ("red star" by a red circle): the hard ones
    absent_related_without_box: float | None
    num_images: int
    prompt_mode: str


def _phrase_scores(probs: torch.Tensor, chunk: TokenizedCaption) -> torch.Tensor:
    """probs [Q, T] -> [Q, P]: per query, the best token probability inside each phrase of the chunk."""
    return torch.stack([probs[:, start:end].max(-1).values for start, end in chunk.phrase_spans], -1)


def _token_batch(chunks: list[TokenizedCaption], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(c) for c in chunks)
    input_ids = torch.zeros(len(chunks), length, dtype=torch.int64)
    attention_mask = torch.zeros(len(chunks), length, dtype=torch.bool)
    for row, chunk in enumerate(chunks):
        input_ids[row, : len(chunk)] = torch.tensor(chunk.input_ids)
        attention_mask[row, : len(chunk)] = True
    return input_ids.to(device), attention_mask.to(device)


@torch.no_grad()
def predict_phrases(
    model: GroundingDINO, pixel_values: torch.Tensor, chunks: list[TokenizedCaption]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run every caption chunk on one image [1, 3, H, W] (image features computed once).

    Returns boxes [C, Q, 4] cxcywh in [0, 1], phrase scores [C, Q, P_max] (0 beyond a chunk's phrases) and
    each query's best probability over all its chunk's tokens [C, Q] (the box score the detector thresholds).
    """
    device = pixel_values.device
    features = model.encode_image(pixel_values)
    input_ids, attention_mask = _token_batch(chunks, device)
    output = model(input_ids, attention_mask, image_features=features)
    probs = output.pred_logits.sigmoid()  # [C, Q, 256]; 0 on padding
    max_phrases = max(len(c.phrases) for c in chunks)
    scores = torch.zeros(len(chunks), probs.shape[1], max_phrases, device=device)
    for row, chunk in enumerate(chunks):
        scores[row, :, : len(chunk.phrases)] = _phrase_scores(probs[row], chunk)
    return output.pred_boxes, scores, probs.max(-1).values


def _to_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]) -> sv.Detections:
    """boxes [N, 4] cxcywh in [0, 1]; size (W, H) -> sv.Detections in pixels."""
    width, height = size
    cx, cy, w, h = boxes.float().cpu().unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * torch.tensor([width, height, width, height])
    return sv.Detections(xyxy=xyxy.numpy(), confidence=scores.float().cpu().numpy(), class_id=labels.cpu().numpy().astype(int))


def evaluate(
    model: GroundingDINO,
    dataset: CocoGroundingDataset,
    prompt_mode: str = "all",
    box_threshold: float = 0.35,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> EvalResult:
    """COCO mAP (0.5:0.95, 0.5, 0.75) of `model` on `dataset` (its resize policy, eval mode), and for
    prompt_mode="single" the share of absent phrases that give no box above `box_threshold`."""
    if prompt_mode not in ("all", "single"):
        raise ValueError(f"prompt_mode must be 'all' or 'single', got {prompt_mode!r}")
    device = torch.device(device)
    model = model.to(device).eval()
    category_ids = sorted(dataset.categories)
    names = [dataset.categories[c] for c in category_ids]
    tokenizer = dataset.tokenizer
    if prompt_mode == "all":
        chunks = tokenize_caption(names, tokenizer, model.config.max_text_len)
    else:
        chunks = [tokenize_caption([name], tokenizer, model.config.max_text_len)[0] for name in names]
    phrase_category = {phrase: c for phrase, c in zip(names, category_ids)}

    metric = MeanAveragePrecision()
    absent_total = absent_clean = related_total = related_clean = 0
    for index in tqdm(range(len(dataset)), disable=not progress, desc="eval", unit="image"):
        image = dataset.load_image(index)
        info = dataset.images[index]
        resized = resize_to(image, max(dataset.sizes.short_sides), dataset.sizes.max_long_side)
        boxes, scores, box_scores = predict_phrases(model, image_to_tensor(resized)[None].to(device), chunks)
        # every (chunk, query, phrase) candidate; each query keeps its best phrase within its chunk
        best_score, best_phrase = scores.max(-1)  # [C, Q]
        labels = torch.tensor([[phrase_category[c.phrases[p]] for p in row] for c, row in zip(chunks, best_phrase.tolist())])
        order = best_score.flatten().argsort(descending=True)[:MAX_DETECTIONS]
        predictions = _to_detections(boxes.flatten(0, 1)[order], best_score.flatten()[order], labels.flatten()[order.cpu()], image.size)

        annotations = dataset.annotations.get(info["id"], [])
        xywh = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        targets = sv.Detections(
            xyxy=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
            class_id=np.array([a["category_id"] for a in annotations], dtype=int),
        )
        metric.update(predictions, targets)
        if prompt_mode == "single":
            present = {a["category_id"] for a in annotations}
            present_words = set(dataset.category_words(present))
            for row, category in enumerate(category_ids):
                if category not in present:
                    clean = int(box_scores[row].max() <= box_threshold)
                    absent_total += 1
                    absent_clean += clean
                    if present_words & set(dataset.categories[category].split()):
                        related_total += 1
                        related_clean += clean
    result = metric.compute()
    return EvalResult(
        map50_95=float(result.map50_95),
        map50=float(result.map50),
        map75=float(result.map75),
        absent_without_box=absent_clean / absent_total if absent_total else None,
        absent_related_without_box=related_clean / related_total if related_total else None,
        num_images=len(dataset),
        prompt_mode=prompt_mode,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m grounding.train.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="COCO detection JSON")
    parser.add_argument("--images", required=True)
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by python -m grounding.train")
    parser.add_argument("--prompts", choices=("all", "single"), default="all")
    parser.add_argument("--short-side", type=int, default=800)
    parser.add_argument("--max-long-side", type=int, default=1333)
    parser.add_argument("--box-threshold", type=float, default=0.35)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.checkpoint)
    dataset = CocoGroundingDataset(
        args.data, args.images, load_tokenizer(), sizes=ImageSizes((args.short_side,), args.max_long_side), train=False
    )
    result = evaluate(model, dataset, args.prompts, args.box_threshold, args.device, progress=not args.json)
    if args.json:
        print(json.dumps(asdict(result)))
        return
    print(f"images {result.num_images}, prompts {result.prompt_mode}")
    print(f"AP@[.50:.95] {result.map50_95:.4f}  AP50 {result.map50:.4f}  AP75 {result.map75:.4f}")
    if result.absent_without_box is not None:
        print(f"absent phrases without a box (> {args.box_threshold}): {result.absent_without_box:.3f}")
    if result.absent_related_without_box is not None:
        print(f"  of those sharing a word with a present phrase: {result.absent_related_without_box:.3f}")


if __name__ == "__main__":
    main()
