"""Image side of Grounding DINO: Swin -> input projections (+ extra stride-2 level) -> masks and sine positions.

This is the text-independent, cacheable part of the model. Its output, `ImageFeatures`, is what the
transformer (encoder/decoder, grounding_dino.py) consumes.

Official module layout, kept for the checkpoint keys: `backbone.0.*` is the Swin (the official `Joiner`
is `Sequential(swin, position_embedding)`; the position embedding has no parameters, so a one-element
`nn.ModuleList` gives the same keys), `input_proj.{i}.0` conv and `input_proj.{i}.1` GroupNorm(32).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grounding.config import GroundingDINOConfig
from grounding.model.position_encoding import sine_position_embedding
from grounding.model.swin import SwinTransformer


@dataclass
class ImageFeatures:
    """Multi-scale image features for one batch, after input_proj; level 0 is the finest (stride 8).

    features: per level [B, d_model, H_l, W_l]
    masks:    per level [B, H_l, W_l] bool, True = padding
    pos:      per level [B, d_model, H_l, W_l] sine position embedding (without the level embedding)
    """

    features: list[torch.Tensor]
    masks: list[torch.Tensor]
    pos: list[torch.Tensor]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "ImageFeatures":
        """On `device`; the features and position embeddings (not the masks) in `dtype` if given."""
        return ImageFeatures(
            features=[t.to(device, dtype) for t in self.features],
            masks=[t.to(device) for t in self.masks],
            pos=[t.to(device, dtype) for t in self.pos],
        )

    @property
    def nbytes(self) -> int:
        tensors = [*self.features, *self.masks, *self.pos]
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def spatial_shapes(self) -> list[tuple[int, int]]:
        return [(f.shape[-2], f.shape[-1]) for f in self.features]


def build_backbone(config: GroundingDINOConfig) -> nn.ModuleList:
    """The Swin at index 0, so its keys read `0.patch_embed...` (`backbone.0.*` inside GroundingDINO)."""
    return nn.ModuleList([SwinTransformer(config.swin)])


def build_input_proj(config: GroundingDINOConfig) -> nn.ModuleList:
    """1x1 conv + GN(32) per Swin output, then 3x3 stride-2 conv + GN(32) for each extra level."""
    d = config.d_model
    channels = config.swin.out_channels
    projections = [nn.Sequential(nn.Conv2d(c, d, kernel_size=1), nn.GroupNorm(32, d)) for c in channels]
    in_channels = channels[-1]
    for _ in range(config.num_feature_levels - len(channels)):
        projections.append(
            nn.Sequential(nn.Conv2d(in_channels, d, kernel_size=3, stride=2, padding=1), nn.GroupNorm(32, d))
        )
        in_channels = d
    return nn.ModuleList(projections)


def _resize_mask(padding_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of [B, H, W] bool -> [B, *size] bool (as the official NestedTensor masks)."""
    return F.interpolate(padding_mask[None].float(), size=size).to(torch.bool)[0]


def encode_image_features(
    backbone: nn.ModuleList,
    input_proj: nn.ModuleList,
    pixel_values: torch.Tensor,
    pixel_mask: torch.Tensor,
    config: GroundingDINOConfig,
) -> ImageFeatures:
    """pixel_values [B, 3, H, W] normalised, pixel_mask [B, H, W] bool True=valid -> ImageFeatures.

    The extra level is the stride-2 conv of the raw (projected-before) last Swin map; further extra levels,
    if a config asks for them, chain on the previous projected level.
    """
    padding = ~pixel_mask.bool()
    num_feats = config.d_model // 2
    temperature = config.image_pos_temperature
    swin_maps = backbone[0](pixel_values)  # per stage [B, C_i, H_i, W_i]

    features, masks, pos = [], [], []
    for level in range(config.num_feature_levels):
        if level < len(swin_maps):
            feature = input_proj[level](swin_maps[level])
        elif level == len(swin_maps):
            feature = input_proj[level](swin_maps[-1])
        else:
            feature = input_proj[level](features[-1])
        mask = _resize_mask(padding, feature.shape[-2:])
        features.append(feature)  # [B, d_model, H_l, W_l]
        masks.append(mask)
        pos.append(sine_position_embedding(mask, num_feats, temperature).to(feature.dtype))
    return ImageFeatures(features=features, masks=masks, pos=pos)
