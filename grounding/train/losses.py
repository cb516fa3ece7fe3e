"""Set-prediction losses of Grounding DINO: token-level contrastive focal loss, L1 and GIoU on boxes,
applied to the final decoder layer, every earlier decoder layer and the encoder's query-selection proposals."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from grounding.train.matcher import HungarianMatcher, Target


def token_focal_loss(
    logits: Tensor, targets: Tensor, valid: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sigmoid focal loss over query-token pairs, summed over valid pairs and divided by the number of boxes.

    logits: [B, Q, T] (may hold -inf where `valid` is False); targets: [B, Q, T] in {0, 1};
    valid: [B, Q, T] bool, False on padding tokens. Returns a scalar.
    """
    pairs = sigmoid_focal_loss(logits[valid].float(), targets[valid].float(), alpha=alpha, gamma=gamma, reduction="sum")
    return pairs / num_boxes


def box_losses(pred_boxes: Tensor, target_boxes: Tensor, num_boxes: float) -> tuple[Tensor, Tensor]:
    """L1 on normalised cxcywh and 1 - GIoU, each summed over matched pairs and divided by the number of boxes.

    pred_boxes, target_boxes: [M, 4] cxcywh in [0, 1]. Returns (l1, giou) scalars.
    """
    l1 = F.l1_loss(pred_boxes.float(), target_boxes.float(), reduction="sum") / num_boxes
    giou = torch.diag(
        generalized_box_iou(
            box_convert(pred_boxes.float(), "cxcywh", "xyxy"), box_convert(target_boxes.float(), "cxcywh", "xyxy")
        )
    )
    return l1, (1 - giou).sum() / num_boxes


def _read(outputs: Any, name: str) -> Any:
    return outputs[name] if isinstance(outputs, dict) else getattr(outputs, name)


class GroundingCriterion(nn.Module):
    """Matches predictions to targets and sums the weighted losses over all prediction stages.

    Stages: the final decoder layer (keys "loss_cls", "loss_bbox", "loss_giou"), each earlier decoder layer i
    (suffix "_{i}") and the encoder proposals (suffix "_enc"). Each stage is matched on its own. "loss" is the
    weighted total used for backprop. Weights default to Grounding DINO's: class 2.0, L1 5.0, GIoU 2.0.
    """

    def __init__(
        self,
        matcher: HungarianMatcher | None = None,
        class_weight: float = 2.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.matcher = matcher or HungarianMatcher()
        self.weights = {"loss_cls": class_weight, "loss_bbox": bbox_weight, "loss_giou": giou_weight}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def stage_losses(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[Target], num_boxes: float
    ) -> dict[str, Tensor]:
        """Unweighted losses of one prediction stage: pred_logits [B, Q, T], pred_boxes [B, Q, 4] cxcywh."""
        matches = self.matcher(pred_logits, pred_boxes, targets)
        device = pred_logits.device
        # Matches as indices into the batch's concatenated targets: one small host->device copy per stage
        # instead of an indexing op per image.
        offsets = torch.tensor([0] + [len(t["boxes"]) for t in targets]).cumsum(0)[:-1].tolist()
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)])
        query_idx = torch.cat([q for q, _ in matches])
        target_idx = torch.cat([i + offset for (_, i), offset in zip(matches, offsets)])
        batch_idx, query_idx, target_idx = torch.stack([batch_idx, query_idx, target_idx]).to(device)
        all_maps = torch.cat([t["positive_map"] for t in targets]).to(device)  # [sum N, T]
        all_boxes = torch.cat([t["boxes"] for t in targets]).to(pred_boxes)  # [sum N, 4]

        token_targets = torch.zeros_like(pred_logits, dtype=torch.float32)  # [B, Q, T]; unmatched queries: zeros
        if query_idx.numel():
            token_targets[batch_idx, query_idx] = all_maps[target_idx].float()
        valid = torch.isfinite(pred_logits)
        loss_cls = token_focal_loss(pred_logits, token_targets, valid, num_boxes, self.focal_alpha, self.focal_gamma)

        loss_bbox, loss_giou = box_losses(pred_boxes[batch_idx, query_idx], all_boxes[target_idx], num_boxes)
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(self, outputs: Any, targets: list[Target]) -> dict[str, Tensor]:
        """outputs: GroundingOutput (or a dict with the same fields); targets: one dict per image with
        "boxes" [N, 4] cxcywh in [0, 1] and "positive_map" [N, T] bool. Returns named losses and "loss"."""
        num_boxes = float(max(sum(len(t["boxes"]) for t in targets), 1))
        stages: list[tuple[str, Any]] = [("", outputs)]
        stages += [(f"_{i}", aux) for i, aux in enumerate(_read(outputs, "aux_outputs") or [])]
        encoder_outputs = _read(outputs, "enc_outputs")
        if encoder_outputs:
            stages.append(("_enc", encoder_outputs))

        losses: dict[str, Tensor] = {}
        total = torch.zeros((), device=_read(outputs, "pred_logits").device)
        for suffix, stage in stages:
            for name, value in self.stage_losses(
                _read(stage, "pred_logits"), _read(stage, "pred_boxes"), targets, num_boxes
            ).items():
                losses[name + suffix] = value
                total = total + self.weights[name] * value
        losses["loss"] = total
        return losses
