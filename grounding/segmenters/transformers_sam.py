"""SAM 2.1 (Ravi et al. 2024) and SAM-HQ (Ke et al. 2023) as box -> mask stages, through transformers' maintained
implementations (`Sam2Model`, `SamHQModel`) and their processors: nothing of either model is written here.

Why transformers for both: it is already a dependency; it loads the released weights by hub id (config.json +
model.safetensors, progress bars, HF cache, HF_HUB_OFFLINE), and both models expose the split the pipeline
caches between (`get_image_embeddings`, then the prompt encoder + mask decoder from those embeddings). The
official `sam2` package would add Hydra and a CUDA build; `segment-anything-hq` a second copy of SAM 1's code.

`encode_image` runs the processor (resize, normalise) and the image encoder once; `decode_boxes` feeds all boxes
of an image to the mask decoder from the cached embeddings, in calls bounded by `DECODE_MEMORY_BUDGET`, and
upsamples with the processor's `post_process_masks`: the masks equal the library's own processor + model path
for the same image and boxes (tests/pipeline/test_segmenters.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grounding.errors import CheckpointMismatchError, WeightsUnavailableError
from grounding.segmenters.base import DECODE_MEMORY_BUDGET, SamMasks, best_of, boxes_per_call, no_masks


@dataclass(frozen=True)
class TransformersFamily:
    """One model family: its transformers classes and the hub repos of its released sizes."""

    name: str  # "sam2" | "sam_hq"
    model_type: str  # config.json's model_type
    repos: dict[str, str]  # short name -> hub repo id


FAMILIES = {
    "sam2": TransformersFamily("sam2", "sam2", {
        f"sam2.1_hiera_{size}": f"facebook/sam2.1-hiera-{size.replace('_', '-')}"
        for size in ("tiny", "small", "base_plus", "large")
    }),
    "sam_hq": TransformersFamily("sam_hq", "sam_hq", {
        f"sam_hq_vit_{letter}": f"syscv-community/sam-hq-vit-{size}"
        for letter, size in (("b", "base"), ("l", "large"), ("h", "huge"))
    }),
}


@dataclass(frozen=True)
class TransformersEmbedding:
    """The image encoder's output for one image (the cacheable half)."""

    features: tuple[torch.Tensor, ...]  # SAM 2: the FPN levels; SAM-HQ: (embedding, *intermediate ViT layers)
    original_size: tuple[int, int]  # (H, W) of the image the masks are returned at
    reshaped_size: tuple[int, int]  # (h, w) of the image inside the model's input

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.features)


@dataclass
class TransformersSegmenter:
    """A transformers SAM-family model behind the segmenter contract (`grounding.segmenters.base`). Thread-safe:
    every call works on its own tensors."""

    family: TransformersFamily
    model: Any  # Sam2Model | SamHQModel, eval mode
    processor: Any  # Sam2Processor | SamHQProcessor
    model_id: str
    name: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | torch.device | None = None, download: bool = True,
        cache_dir: str | Path | None = None,
    ) -> "TransformersSegmenter":
        """A short name (`FAMILIES[...].repos`), a hub repo id or a local folder (config.json + model.safetensors;
        preprocessor_config.json optional) -> the loaded segmenter. WeightsUnavailableError says what to do."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        name = str(name_or_path)
        local = Path(name_or_path).expanduser()
        family = family_of(name, local)
        source = str(local) if local.exists() else family.repos.get(name, name)
        model_class, processor_class = _classes(family)
        local_only = local.exists() or not download
        try:
            model = model_class.from_pretrained(source, cache_dir=cache_dir, local_files_only=local_only)
        except OSError as error:
            raise WeightsUnavailableError(
                f"could not get {family.name} weights {source!r} ({type(error).__name__}: "
                f"{(str(error).strip().splitlines() or [''])[0]}). Download the repo's config.json and model.safetensors "
                f"on a machine with internet access (https://huggingface.co/{source}) and pass the folder: "
                f"--sam /path/to/folder."
            ) from error
        except (ValueError, RuntimeError) as error:
            raise CheckpointMismatchError(f"{source} is not a {family.name} checkpoint transformers can load ({error})") from error
        return cls(
            family=family,
            model=model.to(device).eval(),
            processor=_processor(processor_class, source, model.config, cache_dir, local_only),
            model_id=f"{family.name}:{local.resolve() if local.exists() else source}",
            name=local.name if local.exists() else name,
            device=device,
        )

    @torch.inference_mode()
    def encode_image(self, image: np.ndarray) -> TransformersEmbedding:
        """image [H, W, 3] uint8 RGB -> the image encoder's features (resized and normalised by the processor)."""
        inputs = self.processor(images=image, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        if self.family.name == "sam2":
            features = tuple(self.model.get_image_embeddings(pixel_values))  # FPN levels, fine to coarse
            reshaped = tuple(pixel_values.shape[-2:])
        else:
            embedding, intermediate = self.model.get_image_embeddings(pixel_values)
            features = (embedding, *intermediate)
            reshaped = tuple(int(v) for v in inputs["reshaped_input_sizes"][0])
        # the decoder's dtype, whatever precision the encoder ran in (grounding.precision: decoding stays fp32)
        features = tuple(feature.to(self.model.dtype) for feature in features)
        return TransformersEmbedding(features, tuple(int(v) for v in inputs["original_sizes"][0]), reshaped)

    @torch.inference_mode()
    def decode_boxes(
        self, embedding: TransformersEmbedding, boxes: np.ndarray, multimask: bool = False,
        memory_budget: int = DECODE_MEMORY_BUDGET,
    ) -> SamMasks:
        """boxes [N, 4] xyxy pixels of the original image -> N masks (the best of three with `multimask`)."""
        height, width = embedding.original_size
        if len(boxes) == 0:
            return no_masks(height, width)
        masks, scores = [], []
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        per_call = boxes_per_call(height, width, 3 if multimask else 1, memory_budget)
        for start in range(0, len(boxes), per_call):
            chunk_masks, iou = self._decode(embedding, boxes[start : start + per_call], multimask)
            kept, kept_iou = best_of(chunk_masks, iou)
            masks.append(kept)
            scores.append(kept_iou)
        return SamMasks(np.concatenate(masks), np.concatenate(scores))

    @torch.inference_mode()
    def decode_points(
        self, embedding: TransformersEmbedding, box: np.ndarray, points: np.ndarray, labels: np.ndarray,
        multimask: bool = False,
    ) -> SamMasks:
        """box [4] xyxy px + points [P, 2] xy px, labels [P] (1 keep, 0 remove) -> SamMasks with one mask
        (multimask=False) or the model's three candidates in its order (True); P may be 0 (the box alone)."""
        points = np.asarray(points, np.float32).reshape(-1, 2)
        clicks = (points, np.asarray(labels, np.int64).reshape(-1)) if len(points) else None
        masks, iou = self._decode(embedding, np.asarray(box, np.float32).reshape(1, 4), multimask, clicks)
        return SamMasks(masks[0].numpy(), iou[0].numpy())

    def _decode(
        self, embedding: TransformersEmbedding, boxes: np.ndarray, multimask: bool,
        clicks: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder call: (masks [n, K, H, W] bool at the original size, predicted IoU [n, K]). `clicks`: points
        [P, 2] xy px and labels [P] for a single box (n = 1)."""
        features = [f.to(self.device) for f in embedding.features]
        sizes = [list(embedding.original_size)]
        if self.family.name == "sam2":
            extra = {} if clicks is None else {"input_points": [[clicks[0].tolist()]], "input_labels": [[clicks[1].tolist()]]}
            prompts = self.processor(images=None, input_boxes=[boxes.tolist()], original_sizes=sizes, return_tensors="pt", **extra)
            outputs = self.model(image_embeddings=features, multimask_output=multimask,
                                 **{k: prompts[k].to(self.device) for k in ("input_boxes", "input_points", "input_labels") if k in prompts})
            masks = self.processor.post_process_masks(outputs.pred_masks.cpu(), sizes)[0]
        else:
            # The processor scales prompts to the resized image as it reports it (reshaped / original, per axis).
            (rh, rw), (oh, ow) = embedding.reshaped_size, embedding.original_size
            scale = np.array([rw / ow, rh / oh], np.float32)
            prompts = {"input_boxes": torch.as_tensor(boxes * np.tile(scale, 2))[None]}  # [1, n, 4]
            if clicks is not None:
                prompts["input_points"] = torch.as_tensor(clicks[0] * scale)[None, None]  # [1, 1, P, 2]
                prompts["input_labels"] = torch.as_tensor(clicks[1])[None, None]  # [1, 1, P]
            outputs = self.model(image_embeddings=features[0], intermediate_embeddings=features[1:], multimask_output=multimask,
                                 **{k: v.to(self.device) for k, v in prompts.items()})
            masks = self.processor.post_process_masks(outputs.pred_masks.cpu(), sizes, [list(embedding.reshaped_size)])[0]
        return masks.bool(), outputs.iou_scores[0].float().cpu()  # [n, K, H, W], [n, K]


def family_of(name: str, local: Path) -> TransformersFamily:
    """The family of a short name, a hub repo id of a known size, or a local folder (its config.json's
    model_type); WeightsUnavailableError for anything else."""
    import json

    for family in FAMILIES.values():
        if name in family.repos or name in family.repos.values():
            return family
    config = local / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type")
        for family in FAMILIES.values():
            if model_type == family.model_type:
                return family
        raise CheckpointMismatchError(f"{local} holds a {model_type!r} model, not SAM 2 or SAM-HQ")
    raise WeightsUnavailableError(f"{name!r} is no SAM 2.1 or SAM-HQ name, repo or folder")


def _classes(family: TransformersFamily) -> tuple[type, type]:
    from transformers import Sam2Model, Sam2Processor, SamHQModel, SamHQProcessor

    return (Sam2Model, Sam2Processor) if family.name == "sam2" else (SamHQModel, SamHQProcessor)


def _processor(processor_class: type, source: str, config: Any, cache_dir: str | Path | None, local_only: bool) -> Any:
    """The repo's processor, or the family's defaults at the model's input size when the folder has none."""
    from transformers import Sam2ImageProcessor, SamImageProcessor

    try:
        return processor_class.from_pretrained(source, cache_dir=cache_dir, local_files_only=local_only)
    except (OSError, ValueError, TypeError):
        pass
    if processor_class.__name__.startswith("Sam2"):
        size = config.vision_config.backbone_config.image_size
        side = size[0] if isinstance(size, (list, tuple)) else size
        return processor_class(image_processor=Sam2ImageProcessor(size={"height": side, "width": side}))
    side = config.vision_config.image_size
    return processor_class(image_processor=SamImageProcessor(size={"longest_edge": side},
                                                             pad_size={"height": side, "width": side}))
