"""Image preprocessing: resize (short side 800, long side at most 1333), ImageNet normalisation, batch padding.

Numerically the same as transformers' `GroundingDinoImageProcessor` (transformers 5, torchvision backend):
the RGB image as a uint8 tensor, `torchvision resize(bilinear, antialias=True)` (uint8 out), then
(x - 255 * mean) / (255 * std). The output size follows transformers' `get_size_with_aspect_ratio`; when the
long side caps the size, it computes the long side from the unrounded short side, so it can differ by
one pixel from the official `RandomResize([800], max_size=1333)` (which also resizes in PIL).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_size(height: int, width: int, shortest: int = 800, longest: int = 1333) -> tuple[int, int]:
    """(height, width) after resizing the short side to `shortest` unless the long side would pass `longest`."""
    short, long = float(min(height, width)), float(max(height, width))
    raw = None
    if long / short * shortest > longest:
        raw = longest * short / long
        shortest = int(round(raw))
    if (height <= width and height == shortest) or (width <= height and width == shortest):
        return height, width
    scale = raw if raw is not None else shortest
    if width < height:
        return int(scale * height / width), shortest
    return shortest, int(scale * width / height)


def preprocess_image(
    image: Image.Image, shortest: int = 800, longest: int = 1333
) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL image -> (pixel_values [1, 3, H, W] float32 normalised, pixel_mask [1, H, W] bool True=valid)."""
    rgb = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()  # [3, h, w] uint8
    size = resized_size(rgb.shape[1], rgb.shape[2], shortest, longest)
    if size != tuple(rgb.shape[1:]):
        rgb = TF.resize(rgb, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN) * 255.0
    std = torch.tensor(IMAGENET_STD) * 255.0
    pixels = TF.normalize(rgb.to(torch.float32), mean.tolist(), std.tolist())
    return pixels[None], torch.ones((1, *size), dtype=torch.bool)


def pad_batch(
    images: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack preprocessed images of different sizes: zero-pad bottom/right to the largest H and W.

    images: list of (pixel_values [1, 3, H_i, W_i], pixel_mask [1, H_i, W_i]) -> ([B, 3, H, W], [B, H, W] bool).
    """
    height = max(p.shape[-2] for p, _ in images)
    width = max(p.shape[-1] for p, _ in images)
    pixels = torch.zeros((len(images), 3, height, width), dtype=images[0][0].dtype)
    mask = torch.zeros((len(images), height, width), dtype=torch.bool)
    for i, (p, m) in enumerate(images):
        h, w = p.shape[-2:]
        pixels[i, :, :h, :w] = p[0]
        mask[i, :h, :w] = m[0]
    return pixels, mask
