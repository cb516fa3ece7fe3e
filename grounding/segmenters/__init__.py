"""Box -> mask stages, one file per model family behind one contract (`base.Segmenter`), and the table of names:

    SAM (segment-anything):  vit_b, vit_l, vit_h                       (`sam.py`; plus the test/demo variants)
    SAM 2.1 (transformers):  sam2.1_hiera_tiny, _small, _base_plus, _large   (`transformers_sam.py`)
    SAM-HQ (transformers):   sam_hq_vit_b, sam_hq_vit_l, sam_hq_vit_h

`load_segmenter(name)` takes any of these, "auto" (vit_h on a GPU, vit_b on a CPU), a SAM .pth file, or a
transformers folder of SAM 2 / SAM-HQ weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

from grounding.errors import WeightsUnavailableError
from grounding.segmenters.base import DECODE_MEMORY_BUDGET, SamMasks, Segmenter
from grounding.segmenters.sam import SAM_VARIANTS, SamSegmenter, default_sam_variant
from grounding.segmenters.transformers_sam import FAMILIES, TransformersSegmenter

RELEASED_SAM = [name for name, variant in SAM_VARIANTS.items() if variant.file_name]
SEGMENTER_NAMES = [*RELEASED_SAM, *(name for family in FAMILIES.values() for name in family.repos)]

__all__ = ["DECODE_MEMORY_BUDGET", "SEGMENTER_NAMES", "SamMasks", "Segmenter", "load_segmenter"]


def load_segmenter(
    name: str | None = "auto",
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    download: bool = True,
) -> Segmenter:
    """The segmenter called `name` (see the module docstring); `checkpoint` is a local SAM .pth for a SAM variant.
    Raises WeightsUnavailableError (unknown name: with the valid ones; weights missing: with what to do) or
    CheckpointMismatchError."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = default_sam_variant(device) if name in (None, "auto") else str(name)
    if name in SAM_VARIANTS:
        return SamSegmenter.from_pretrained(name, checkpoint=checkpoint, device=device, download=download)
    local = Path(name).expanduser()
    if local.is_file():  # an official-format SAM state dict; its variant from the image encoder's width
        return SamSegmenter.from_pretrained(sam_variant_of(local), checkpoint=local, device=device, download=False)
    if local.is_dir() or any(name in family.repos or name in family.repos.values() for family in FAMILIES.values()):
        return TransformersSegmenter.from_pretrained(name, device=device, download=download)
    raise WeightsUnavailableError(
        f"Unknown segmenter {name!r}; choose one of {', '.join(SEGMENTER_NAMES)}, 'none' (boxes only), a SAM .pth "
        f"file or a folder of SAM 2 / SAM-HQ weights."
    )


def sam_variant_of(path: Path) -> str:
    """The SAM variant of an official-format checkpoint, read from its image encoder's width
    (`image_encoder.patch_embed.proj.weight` is [width, 3, 16, 16])."""
    from grounding.errors import CheckpointMismatchError

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        width = int(state_dict["image_encoder.patch_embed.proj.weight"].shape[0])
    except Exception as error:  # not a torch file, or not a SAM state dict
        raise CheckpointMismatchError(f"{path.name} is not an official-format SAM checkpoint ({error}).") from error
    variants = [name for name, variant in SAM_VARIANTS.items() if variant.encoder_embed_dim == width]
    if not variants:
        raise CheckpointMismatchError(f"{path.name} has an image encoder of width {width}, which no SAM variant has.")
    return variants[0]
