"""GroundingDetector: image + text prompt -> boxes with phrases, in three cacheable stages.

    encode_image(image)            -> ImageEncoding   Swin + input projections, once per image (the slow part)
    run_text(encoding, prompt)     -> RawDetections   BERT + feature enhancer + decoder, once per prompt chunk;
                                                      every query's token probabilities and box, thresholds not
                                                      applied yet
    filter(raw, box_thr, text_thr) -> Detections      thresholds, phrases, pixel boxes (milliseconds)

`detect(image, prompt, ...)` runs all three. Prompts longer than the model's 256 tokens are split at phrase
boundaries (`grounding.text.tokenize_caption`); the image is encoded once and the text part runs per chunk,
then the detections of all chunks are merged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BertTokenizer

from grounding.checkpoint import LoadReport, display_name, load_model
from grounding.images import load_image
from grounding.model import GroundingDINO, ImageFeatures
from grounding.model.preprocess import preprocess_image
from grounding.postprocess import best_phrase_scores, check_threshold, detections_from_probs, merge_detections
from grounding.results import Detections
from grounding.text import TokenizedCaption, load_tokenizer, tokenize_caption


@dataclass(frozen=True)
class ImageEncoding:
    """The text-independent part of one image: multi-scale features after the input projections."""

    features: ImageFeatures  # per level [1, d, H_l, W_l], on the detector's device
    image_size: tuple[int, int]  # (W, H) of the original image: boxes are returned in this frame
    input_size: tuple[int, int]  # (W, H) of the resized image the backbone saw

    @property
    def nbytes(self) -> int:
        return self.features.nbytes


@dataclass(frozen=True)
class RawDetections:
    """Every query of every prompt chunk before thresholds (on the CPU).

    chunk c: `chunks[c]` (token ids, phrase spans, words), `probs[c]` [Q, T_c] sigmoid token scores,
    `boxes[c]` [Q, 4] cxcywh in [0, 1] of the image.
    """

    chunks: tuple[TokenizedCaption, ...]
    probs: tuple[torch.Tensor, ...]  # per chunk [Q, T_c] float32
    boxes: tuple[torch.Tensor, ...]  # per chunk [Q, 4] float32
    image_size: tuple[int, int]  # (W, H) of the original image

    @property
    def nbytes(self) -> int:
        tensors = [*self.probs, *self.boxes]
        token_bytes = sum(8 * len(chunk) for chunk in self.chunks)
        return sum(t.numel() * t.element_size() for t in tensors) + token_bytes

    @property
    def phrases(self) -> list[str]:
        return [phrase for chunk in self.chunks for phrase in chunk.phrases]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class GroundingDetector:
    """Grounding DINO with its tokenizer, pre- and post-processing."""

    def __init__(
        self,
        model: GroundingDINO,
        tokenizer: BertTokenizer | None = None,
        device: str | torch.device | None = None,
        model_id: str | None = None,
        shortest_side: int | None = None,
        longest_side: int | None = None,
        chunk_batch_size: int = 1,
    ) -> None:
        """`shortest_side` / `longest_side`: the resize before the backbone; None = the model's
        `config.input_size` (the official 800 / 1333; a checkpoint trained here records its own). Smaller is
        faster on CPU and less accurate. `chunk_batch_size`: prompt chunks run together in one padded batch
        (worth it on a GPU; on a CPU the work grows with the batch, so 1 keeps peak memory low)."""
        shortest_side = shortest_side or model.config.input_size[0]
        longest_side = longest_side or model.config.input_size[1]
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
        # Key of the pipeline's caches: the weights and everything else that changes the outputs.
        self.model_id = f"{model_id or f'GroundingDINO@{id(model):x}'}|resize {shortest_side}/{longest_side}"
        self.name = "Grounding DINO"  # what users see; `from_pretrained` names the weights
        self.load_report: LoadReport | None = None
        self.shortest_side, self.longest_side = shortest_side, longest_side
        self.chunk_batch_size = max(1, int(chunk_batch_size))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        download: bool = True,
        cache_dir: str | os.PathLike | None = None,
        shortest_side: int | None = None,
        longest_side: int | None = None,
        chunk_batch_size: int = 1,
    ) -> "GroundingDetector":
        """"swint_ogc" | "swinb_cogcoor" | "IDEA-Research/grounding-dino-tiny" | "IDEA-Research/grounding-dino-base"
        | a local .pth / .safetensors / HF folder. $GROUNDING_DINO_CHECKPOINT overrides a name with a local file.
        Raises WeightsUnavailableError (with how to pass a local file) or CheckpointMismatchError."""
        device = torch.device(device) if device is not None else default_device()
        model, report = load_model(name_or_path, device=device, download=download, cache_dir=cache_dir)
        detector = cls(
            model, load_tokenizer(), device, f"{name_or_path}|{report.source}", shortest_side, longest_side,
            chunk_batch_size,
        )
        detector.load_report = report
        detector.name = display_name(name_or_path)
        return detector

    @torch.inference_mode()
    def encode_image(self, image: Any) -> ImageEncoding:
        """PIL image, numpy array, path or bytes (any mode; EXIF orientation applied) -> ImageEncoding.
        Raises InvalidImageError for what cannot be read."""
        loaded = load_image(image)
        pixel_values, pixel_mask = preprocess_image(  # [1, 3, H, W], [1, H, W] bool True = valid
            loaded.to_pil(), self.shortest_side, self.longest_side
        )
        features = self.model.encode_image(pixel_values.to(self.device), pixel_mask.to(self.device))
        # fp32 whatever the image encoder ran in: the text side may run in another precision (grounding.precision)
        features = features.to(self.device, torch.float32)
        return ImageEncoding(
            features=features,
            image_size=loaded.original_size,
            input_size=(pixel_values.shape[-1], pixel_values.shape[-2]),
        )

    @torch.inference_mode()
    def run_text(self, encoding: ImageEncoding, prompt: str | list[str]) -> RawDetections:
        """Run the text side for each chunk of `prompt` on the cached image features.
        Raises InvalidPromptError for prompts without words, too long phrases or too large prompts."""
        chunks = tokenize_caption(prompt, self.tokenizer, max_tokens=self.model.config.max_text_len)
        probs, boxes = [], []
        for first in range(0, len(chunks), self.chunk_batch_size):
            batch = chunks[first : first + self.chunk_batch_size]
            length = max(len(chunk) for chunk in batch)
            input_ids = torch.zeros((len(batch), length), dtype=torch.long)  # [B, T], 0 = [PAD]
            attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
            for row, chunk in enumerate(batch):
                input_ids[row, : len(chunk)] = torch.tensor(chunk.input_ids)
                attention_mask[row, : len(chunk)] = 1
            output = self.model(  # image batch 1 is shared by every caption of the batch
                input_ids.to(self.device), attention_mask.to(self.device), image_features=encoding.features
            )
            for row, chunk in enumerate(batch):
                probs.append(output.pred_logits[row, :, : len(chunk)].float().sigmoid().cpu())  # [Q, T]
                boxes.append(output.pred_boxes[row].float().cpu())  # [Q, 4]
        return RawDetections(tuple(chunks), tuple(probs), tuple(boxes), encoding.image_size)

    def filter(self, raw: RawDetections, box_threshold: float = 0.35, text_threshold: float = 0.25) -> Detections:
        """Thresholds -> Detections of all chunks, highest score first. Thresholds outside [0, 1] raise
        InvalidThresholdError."""
        check_threshold(box_threshold, "box_threshold")
        check_threshold(text_threshold, "text_threshold")
        return merge_detections([
            detections_from_probs(probs, boxes, chunk, raw.image_size, box_threshold, text_threshold)
            for chunk, probs, boxes in zip(raw.chunks, raw.probs, raw.boxes)
        ])

    def phrase_scores(self, raw: RawDetections) -> dict[str, float]:
        """Best box score per prompt phrase (see `best_phrase_scores`): what the box threshold must be under for
        a phrase without a box to get one."""
        scores: dict[str, float] = {}
        for chunk, probs in zip(raw.chunks, raw.probs):
            for phrase, score in zip(chunk.phrases, best_phrase_scores(probs, chunk)):
                scores[phrase] = max(score, scores.get(phrase, 0.0))
        return scores

    def detect(
        self, image: Any, prompt: str | list[str], box_threshold: float = 0.35, text_threshold: float = 0.25
    ) -> Detections:
        """All three stages. Checks the prompt and thresholds before the image is encoded."""
        check_threshold(box_threshold, "box_threshold")
        check_threshold(text_threshold, "text_threshold")
        tokenize_caption(prompt, self.tokenizer, max_tokens=self.model.config.max_text_len)
        return self.filter(self.run_text(self.encode_image(image), prompt), box_threshold, text_threshold)
