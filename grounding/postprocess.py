"""From one image's query scores and boxes to `Detections` (boxes in original-image pixels + phrases).

Rules (reference `groundingdino/util/inference.py` and transformers'
`GroundingDinoProcessor.post_process_grounded_object_detection`, which agree with each other):
- score of a query = max token probability over the caption's tokens; keep the query iff score > box_threshold;
- boxes: cxcywh in [0, 1] of the unpadded image -> xyxy pixels of the original image.

Where we deliberately differ (checked against transformers in tests/text/test_postprocess.py and, for the
whole detector, tests/detector/test_against_transformers.py):
- the label comes from ONE phrase: the phrase holding the query's best phrase token (the reference's
  `remove_combined=True` mode); transformers decodes every token above text_threshold, so two phrases
  merge into "glass oil" and separators leak into the label;
- inside that phrase, the words with a token above text_threshold form the label, taken from the prompt's own
  words (never "##" wordpieces, accents kept); if no token passes, the label is the whole phrase (never empty);
- boxes are clipped to the image; detections are sorted by score, highest first.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from grounding.errors import InvalidThresholdError
from grounding.results import Detections
from grounding.text import TokenizedCaption


def check_threshold(value: float, name: str) -> float:
    """A threshold as float in [0, 1], else InvalidThresholdError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or not 0 <= value <= 1:
        raise InvalidThresholdError(f"{name} must be a number between 0 and 1, got {value!r}")
    return float(value)


def boxes_to_pixels(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """[N, 4] cxcywh in [0, 1] -> [N, 4] xyxy pixels of an image of `image_size` (W, H), clipped to it."""
    width, height = image_size
    cx, cy, w, h = boxes.float().unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)  # [N, 4] in [0, 1]
    scale = boxes.new_tensor([width, height, width, height], dtype=torch.float32)
    return (xyxy * scale).clamp(min=torch.zeros_like(scale), max=scale)


def phrase_labels(probs: torch.Tensor, tokens: TokenizedCaption, text_threshold: float) -> list[str]:
    """Labels of N queries from their token probabilities [N, T].

    A query's phrase is the one holding its best phrase token ([CLS], "." and [SEP] do not vote). The words of
    that phrase with a token above `text_threshold` make the label, in prompt order; with none, the whole phrase.
    """
    token_phrase = torch.as_tensor(tokens.token_phrase)  # [T], -1 for separators
    best_token = probs.masked_fill(token_phrase < 0, -1.0).argmax(dim=-1)  # [N]
    best_phrase = token_phrase[best_token]  # [N]
    selected = (probs > text_threshold) & (token_phrase[None, :] == best_phrase[:, None])  # [N, T]
    rows, columns = selected.nonzero(as_tuple=True)
    words_of_row: list[set[int]] = [set() for _ in range(probs.shape[0])]
    for row, column in zip(rows.tolist(), columns.tolist()):
        words_of_row[row].add(tokens.token_word[column])
    labels = []
    for phrase_index, words in zip(best_phrase.tolist(), words_of_row):
        phrase_words = tokens.phrase_words[phrase_index]
        labels.append(" ".join(phrase_words[i] for i in sorted(words)) if words else tokens.phrases[phrase_index])
    return labels


def detections_from_probs(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    tokens: TokenizedCaption,
    image_size: tuple[int, int],
    box_threshold: float,
    text_threshold: float,
) -> Detections:
    """probs [Q, T] sigmoid token scores over the caption's T tokens, boxes [Q, 4] cxcywh in [0, 1],
    image_size (W, H) of the original image -> Detections sorted by score."""
    box_threshold = check_threshold(box_threshold, "box_threshold")
    text_threshold = check_threshold(text_threshold, "text_threshold")
    if probs.shape[-1] != len(tokens):
        raise ValueError(f"probs cover {probs.shape[-1]} tokens but the caption has {len(tokens)}")
    probs = probs.float().cpu()
    scores = probs.max(dim=-1).values  # [Q]
    keep = (scores > box_threshold).nonzero().flatten()
    keep = keep[scores[keep].argsort(descending=True, stable=True)]
    if keep.numel() == 0:
        return Detections.empty()
    pixel_boxes = boxes_to_pixels(boxes.float().cpu()[keep], image_size)
    phrases = phrase_labels(probs[keep], tokens, text_threshold)
    return Detections(
        boxes=pixel_boxes.numpy().astype(np.float32),
        scores=scores[keep].numpy().astype(np.float32),
        phrases=phrases,
    )


def detections_from_logits(
    pred_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    tokens: TokenizedCaption,
    image_size: tuple[int, int],
    box_threshold: float,
    text_threshold: float,
) -> Detections:
    """Same as `detections_from_probs` from raw model outputs of one image: pred_logits [Q, 256] (-inf past
    the caption), pred_boxes [Q, 4]."""
    probs = pred_logits[:, : len(tokens)].float().sigmoid()  # [Q, T]
    return detections_from_probs(probs, pred_boxes, tokens, image_size, box_threshold, text_threshold)


def best_phrase_scores(probs: torch.Tensor, tokens: TokenizedCaption) -> list[float]:
    """For each phrase of the caption, the best score of a query labelled with it ([Q, T] probs): the box
    threshold under which that phrase would get its first box (0 when no query is labelled with it)."""
    token_phrase = torch.as_tensor(tokens.token_phrase)  # [T], -1 for separators
    probs = probs.float().cpu()
    scores = probs.max(dim=-1).values  # [Q]
    best_phrase = token_phrase[probs.masked_fill(token_phrase < 0, -1.0).argmax(dim=-1)]  # [Q]
    best = torch.zeros(len(tokens.phrases)).scatter_reduce(0, best_phrase.clamp(min=0), scores, "amax")
    return best.tolist()


def merge_detections(parts: list[Detections]) -> Detections:
    """Concatenate detections (e.g. of several prompt chunks), highest score first."""
    parts = [part for part in parts if len(part)]
    if not parts:
        return Detections.empty()
    scores = np.concatenate([part.scores for part in parts])
    order = np.argsort(-scores, kind="stable")
    boxes = np.concatenate([part.boxes for part in parts])
    phrases = [phrase for part in parts for phrase in part.phrases]
    return Detections(boxes=boxes[order], scores=scores[order], phrases=[phrases[i] for i in order])
