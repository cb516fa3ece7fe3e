"""Training of Grounding DINO as the paper describes it: Hungarian matching on token-level classification +
L1 + GIoU, contrastive focal loss against phrase token spans, auxiliary losses on every decoder layer and on the
encoder proposals; COCO-format data with sampled captions; a procedural shapes dataset; train and eval CLIs.
"""
from grounding.train.data import CaptionSampling, CocoGroundingDataset, GroundingBatch, ImageSizes, collate
from grounding.train.losses import GroundingCriterion, box_losses, token_focal_loss
from grounding.train.matcher import HungarianMatcher

__all__ = [
    "CaptionSampling",
    "CocoGroundingDataset",
    "GroundingBatch",
    "GroundingCriterion",
    "HungarianMatcher",
    "ImageSizes",
    "box_losses",
    "collate",
    "token_focal_loss",
]
