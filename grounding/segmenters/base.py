"""The contract every segmenter family meets, so the pipeline talks to one interface:

    embedding = segmenter.encode_image(pixels)            # [H, W, 3] uint8 RGB -> the heavy image encoder, once
    masks = segmenter.decode_boxes(embedding, boxes)      # [N, 4] xyxy px -> SamMasks, all boxes batched
    masks = segmenter.decode_points(embedding, box, points, labels)  # one box + clicked points -> SamMasks
    segmenter.model_id (cache key), segmenter.name (what users see), segmenter.device

The embedding is a plain value (the pipeline caches it, sized by its `nbytes`); decoding never mutates shared
state, so concurrent requests can decode from one cached embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

# Largest float mask tensor one decoder call may produce (full-resolution upsampled logits), in bytes.
DECODE_MEMORY_BUDGET = 512 * 2**20


@dataclass(frozen=True)
class SamMasks:
    """Masks for N boxes of one image."""

    masks: np.ndarray  # [N, H, W] bool at the original resolution
    iou_scores: np.ndarray  # [N] float32, the model's predicted IoU of the kept mask


class Segmenter(Protocol):
    model_id: str
    name: str
    device: torch.device

    def encode_image(self, image: np.ndarray) -> Any: ...
    def decode_boxes(self, embedding: Any, boxes: np.ndarray, multimask: bool = False) -> SamMasks: ...
    def decode_points(
        self, embedding: Any, box: np.ndarray, points: np.ndarray, labels: np.ndarray, multimask: bool = False
    ) -> SamMasks:
        """One object: box [4] xyxy px plus points [P, 2] xy px with labels [P] (1 = keep, 0 = remove) -> SamMasks of
        SAM's single mask (multimask=False) or of its three candidates in the model's order (multimask=True)."""
        ...


def boxes_per_call(height: int, width: int, candidates: int, memory_budget: int = DECODE_MEMORY_BUDGET) -> int:
    """How many boxes one decoder call may take so its full-resolution float masks stay within the budget."""
    return max(1, memory_budget // (height * width * candidates * 4))


def best_of(masks: torch.Tensor, iou: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """masks [n, K, H, W] bool, iou [n, K] -> the mask with the best predicted IoU per box: [n, H, W], [n]."""
    best = iou.argmax(dim=1)  # [n]
    rows = torch.arange(len(best), device=best.device)
    return masks[rows, best].cpu().numpy(), iou[rows, best].float().cpu().numpy()


def no_masks(height: int, width: int) -> SamMasks:
    return SamMasks(np.zeros((0, height, width), bool), np.zeros((0,), np.float32))
