"""Hungarian matching between predicted queries and target phrases-with-boxes.

The classification cost is token-level: a query's focal cost is averaged over the tokens of the target's phrase
(its positive map), as in grounded pre-training, where a "class" is a span of caption tokens rather than an index.
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou

Target = dict[str, Tensor]


def focal_token_cost(
    pred_logits: Tensor, positive_map: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Focal classification cost of assigning each query to each target phrase.

    pred_logits: [Q, T] query-token logits (-inf on padding tokens).
    positive_map: [N, T] bool or float, the tokens of each target's phrase.
    Returns [Q, N]: mean over the phrase's tokens of (focal loss if positive - focal loss if negative), so a
    query that is confident on the phrase's tokens gets a low (negative) cost.
    """
    prob = pred_logits.float().sigmoid()  # [Q, T]; 0 where the logit is -inf
    eps = 1e-8
    positive_cost = alpha * (1 - prob) ** gamma * -(prob + eps).log()
    negative_cost = (1 - alpha) * prob**gamma * -(1 - prob + eps).log()
    token_weights = positive_map.float()
    token_weights = token_weights / token_weights.sum(-1, keepdim=True).clamp(min=1.0)  # [N, T] rows sum to 1
    return (positive_cost - negative_cost) @ token_weights.T  # [Q, N]


class HungarianMatcher:
    """One-to-one assignment of queries to targets minimising class + L1 + GIoU cost (DETR / Grounding DINO).

    Defaults are the Grounding DINO / DINO matcher weights: class 2.0, L1 5.0, GIoU 2.0, focal alpha 0.25, gamma 2.
    """

    def __init__(
        self,
        class_weight: float = 2.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        self.class_weight = class_weight
        self.bbox_weight = bbox_weight
        self.giou_weight = giou_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def cost_matrix(self, pred_logits: Tensor, pred_boxes: Tensor, target: Target) -> Tensor:
        """pred_logits [Q, T], pred_boxes [Q, 4] cxcywh, target boxes [N, 4] cxcywh -> cost [Q, N]."""
        target_boxes = target["boxes"].to(pred_boxes)
        cost_class = focal_token_cost(
            pred_logits, target["positive_map"].to(pred_logits.device), self.focal_alpha, self.focal_gamma
        )
        cost_bbox = torch.cdist(pred_boxes.float(), target_boxes.float(), p=1)
        cost_giou = -generalized_box_iou(
            box_convert(pred_boxes.float(), "cxcywh", "xyxy"), box_convert(target_boxes.float(), "cxcywh", "xyxy")
        )
        return self.class_weight * cost_class + self.bbox_weight * cost_bbox + self.giou_weight * cost_giou

    @torch.no_grad()
    def __call__(self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[Target]) -> list[tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets.

        pred_logits: [B, Q, T]; pred_boxes: [B, Q, 4] cxcywh in [0, 1];
        targets[b]: "boxes" [N_b, 4] cxcywh in [0, 1], "positive_map" [N_b, T] (bool).
        Returns per image (query_indices [K], target_indices [K]) int64 with K = min(Q, N_b), sorted by query.
        """
        sizes = [len(target["boxes"]) for target in targets]
        empty = torch.zeros(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in targets]
        # One cost matrix of every query against every target of the batch, one device->host copy, then one
        # assignment per image on its own block (the GPU waits once per stage, not once per image).
        batch, queries = pred_logits.shape[:2]
        combined = {key: torch.cat([target[key] for target in targets]) for key in ("boxes", "positive_map")}
        cost = self.cost_matrix(pred_logits.flatten(0, 1), pred_boxes.flatten(0, 1), combined)  # [B*Q, sum N]
        # Keep each target's column only for its own image's queries before copying: [Q, sum N].
        image_of_target = torch.repeat_interleave(torch.arange(batch), torch.tensor(sizes)).to(cost.device)
        own = cost.view(batch, queries, -1).gather(0, image_of_target.view(1, 1, -1).expand(1, queries, -1))[0]
        blocks = own.cpu().split(sizes, dim=-1)  # per image [Q, N_b]
        matches = []
        for b, block in enumerate(blocks):
            if sizes[b] == 0:
                matches.append((empty, empty))
                continue
            query_idx, target_idx = linear_sum_assignment(block.numpy())
            matches.append((torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(target_idx, dtype=torch.int64)))
        return matches
