"""COCO-format detection data for grounded training.

Each sample's caption is built from category names as in grounded pre-training: the categories present in the
image (a random subset when there are many), some absent categories as negatives, shuffled, e.g.
"blue star . red circle . green ring .". Each box's target is the positive map of its category's phrase: the
caption tokens of that phrase (from `grounding.text.tokenize_caption`'s token spans).
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import supervision as sv
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import box_convert
from torchvision.transforms.functional import normalize, pil_to_tensor

from grounding.text import split_phrases, tokenize_caption
from grounding.train.wording import natural_phrase, unrelated_phrase

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class CaptionSampling:
    """How a training caption is drawn from an image's categories."""

    max_phrases: int = 20  # present + absent phrases per caption
    max_absent: int = 5  # absent categories added as negatives (0..max_absent, uniformly)
    shuffle: bool = True
    keep_present: float = 1.0  # chance that each present category is named; unnamed objects are not targets
    related_absent: float = 0.0  # chance that a negative shares a word with a present phrase ("red star" by a red circle)
    # Chance that a caption is made of single words of the category names instead ("circle . red . star ."):
    # every object whose name holds a named word is a target of it. For attribute + noun names, it makes the
    # model learn each attribute on its own, which name-level captions rarely force (colour alone often suffices).
    word_phrases: float = 0.0
    # Chance that a caption's phrases are written as people write them (`grounding.train.wording`: "a red circle",
    # "red circles", "find the red circle", ...); the targets are then the tokens of the "colour shape" core.
    natural: float = 0.0
    max_unrelated: int = 0  # common object words ("dog", "a car") added as negatives (0..max_unrelated)


@dataclass
class ImageSizes:
    """Resize policy: shorter side to one of `short_sides` (random in training), longer side capped."""

    short_sides: tuple[int, ...] = (800,)
    max_long_side: int = 1333


@dataclass
class GroundingSample:
    """One image, its caption and its targets (boxes relative to the resized, unpadded image)."""

    pixel_values: Tensor  # [3, H, W] ImageNet-normalised
    input_ids: list[int]  # [T] [CLS] ... [SEP]
    caption: str
    phrases: tuple[str, ...]
    target: dict[str, Tensor]  # boxes [N,4] cxcywh in [0,1], positive_map [N,max_text_len] bool, labels [N] category ids,
    #                            optionally masks [N,H0,W0] bool at the original resolution
    image_id: int
    original_size: tuple[int, int]  # (H0, W0)


def resize_to(image: Image.Image, short_side: int, max_long_side: int) -> Image.Image:
    """Bilinear resize keeping aspect: shorter side -> short_side unless the longer side would pass max_long_side."""
    width, height = image.size
    scale = short_side / min(width, height)
    if max(width, height) * scale > max_long_side:
        scale = max_long_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.BILINEAR)


def image_to_tensor(image: Image.Image) -> Tensor:
    """PIL RGB -> [3, H, W] float, ImageNet-normalised."""
    return normalize(pil_to_tensor(image).float() / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO segmentation (uncompressed or compressed RLE, or polygons) -> [H, W] bool."""
    if isinstance(segmentation, dict):
        return sv.rle_to_mask(segmentation["counts"], resolution_wh=(width, height)).astype(bool)
    mask = np.zeros((height, width), dtype=bool)
    for polygon in segmentation:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2).round().astype(np.int32)
        mask |= sv.polygon_to_mask(points, resolution_wh=(width, height)).astype(bool)
    return mask


def category_phrase(name: str) -> str:
    """A category name as the caption phrase the tokenizer will see ("traffic_light" -> "traffic light")."""
    phrases = split_phrases([name.replace("_", " ")])
    if not phrases:
        raise ValueError(f"category name {name!r} has no words to put in a caption")
    return phrases[0]


class CocoGroundingDataset(Dataset):
    """Images and grounding targets from a COCO detection JSON.

    Training samples draw a fresh caption per (seed, epoch, index) (see `set_epoch`), so runs are reproducible
    and resumable. With `train=False` the caption holds all present categories in category order.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        tokenizer: Any,
        sizes: ImageSizes | None = None,
        caption_sampling: CaptionSampling | None = None,
        train: bool = True,
        with_masks: bool = False,
        max_text_len: int = 256,
        seed: int = 0,
    ) -> None:
        coco = json.loads(Path(annotation_file).read_text())
        self.image_dir = Path(image_dir)
        self.tokenizer = tokenizer
        self.sizes = sizes or ImageSizes()
        self.caption_sampling = caption_sampling or CaptionSampling()
        self.train = train
        self.with_masks = with_masks
        self.max_text_len = max_text_len
        self.seed = seed
        self.epoch = 0
        self.categories: dict[int, str] = {c["id"]: category_phrase(c["name"]) for c in coco["categories"]}
        self.images: list[dict[str, Any]] = sorted(coco["images"], key=lambda im: im["id"])
        self.annotations: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for annotation in coco["annotations"]:
            if not annotation.get("iscrowd", 0) and annotation["bbox"][2] > 0 and annotation["bbox"][3] > 0:
                self.annotations[annotation["image_id"]].append(annotation)

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load_image(self, index: int) -> Image.Image:
        return Image.open(self.image_dir / self.images[index]["file_name"]).convert("RGB")

    def _caption_phrases(
        self, rng: np.random.Generator, present: list[int]
    ) -> tuple[list[str], dict[int, list[tuple[str, str]]]]:
        """The caption's phrases, and for each named present category the (phrase, core) pairs its objects are
        targets of: the target tokens are the core's, inside the phrase."""
        sampling = self.caption_sampling
        if self.train and sampling.word_phrases > 0 and rng.random() < sampling.word_phrases:
            return self._choose_words(rng, present)
        chosen = self._choose_categories(rng, present)
        natural = self.train and sampling.natural > 0 and rng.random() < sampling.natural
        written = {c: natural_phrase(self.categories[c], rng) if natural else (self.categories[c],) * 2 for c in chosen}
        phrases = [written[c][0] for c in chosen]
        if self.train and sampling.max_unrelated > 0:
            extra = [unrelated_phrase(rng) for _ in range(int(rng.integers(0, sampling.max_unrelated + 1)))]
            for phrase in extra:
                phrases.insert(int(rng.integers(len(phrases) + 1)), phrase)
        return phrases, {c: [written[c]] for c in chosen if c in present}

    def category_words(self, categories: Iterable[int]) -> list[str]:
        """The distinct words of these categories' phrases, in order of first appearance."""
        return list(dict.fromkeys(w for c in categories for w in self.categories[c].split()))

    def _absent_count(self, rng: np.random.Generator, named: int, available: int) -> int:
        """How many negatives join `named` phrases: 0..max_absent, within max_phrases, at least one if none is named."""
        sampling = self.caption_sampling
        count = min(int(rng.integers(0, sampling.max_absent + 1)), available, sampling.max_phrases - named)
        return max(count, min(1, available)) if not named else count

    def _choose_words(
        self, rng: np.random.Generator, present: list[int]
    ) -> tuple[list[str], dict[int, list[tuple[str, str]]]]:
        sampling = self.caption_sampling
        present_words = self.category_words(present)
        named = [str(w) for w in rng.permutation(present_words) if rng.random() < sampling.keep_present]
        named = named[: sampling.max_phrases]
        absent = sorted(set(self.category_words(self.categories)) - set(present_words))
        count = self._absent_count(rng, len(named), len(absent))
        words = named + [str(w) for w in rng.choice(absent, size=count, replace=False)] if count else named
        rng.shuffle(words)
        targets = {c: [(w, w) for w in self.categories[c].split() if w in named] for c in present}
        return words, {c: ws for c, ws in targets.items() if ws}

    def _choose_categories(self, rng: np.random.Generator, present: list[int]) -> list[int]:
        sampling = self.caption_sampling
        if not self.train:
            return sorted(present)
        chosen = [int(c) for c in rng.permutation(present)[: sampling.max_phrases]]
        if sampling.keep_present < 1.0:
            chosen = [c for c in chosen if rng.random() < sampling.keep_present]
        absent = [c for c in self.categories if c not in present]
        chosen += self._choose_absent(rng, present, absent, self._absent_count(rng, len(chosen), len(absent)))
        if sampling.shuffle:
            rng.shuffle(chosen)
        else:
            chosen.sort()
        return chosen

    def _choose_absent(self, rng: np.random.Generator, present: list[int], absent: list[int], count: int) -> list[int]:
        """`count` distinct absent categories; each is drawn from those sharing a word with a present phrase
        with probability `related_absent` (while there are any), else from all absent ones."""
        present_words = set(self.category_words(present))
        related = [c for c in absent if present_words & set(self.categories[c].split())]
        chosen: list[int] = []
        for _ in range(count):
            pool = related if related and rng.random() < self.caption_sampling.related_absent else absent
            pick = int(pool[int(rng.integers(len(pool)))])
            chosen.append(pick)
            absent = [c for c in absent if c != pick]
            related = [c for c in related if c != pick]
        return chosen

    def _core_span(self, phrase: str, core: str, phrase_span: dict[str, tuple[int, int]]) -> tuple[int, int] | None:
        """Token span of `core` inside `phrase`'s span in the chunk (None if the phrase did not fit in it). Words
        are tokenised one by one (whitespace ends a word piece run), so the core's tokens follow the prefix's."""
        cleaned = split_phrases([phrase])
        if not cleaned or cleaned[0] not in phrase_span:
            return None
        start, end = phrase_span[cleaned[0]]
        core_clean = split_phrases([core])[0]
        found = re.search(rf"(?:^|(?<=\s)){re.escape(core_clean)}(?!\w)", cleaned[0])  # whole words; "star:" counts
        if found is None:
            return start, end
        offset = len(self.tokenizer.tokenize(cleaned[0][: found.start()]))
        return start + offset, min(end, start + offset + len(self.tokenizer.tokenize(core_clean)))

    def __getitem__(self, index: int) -> GroundingSample:
        info = self.images[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        annotations = self.annotations.get(info["id"], [])
        present = sorted({a["category_id"] for a in annotations})
        phrases, target_phrases = self._caption_phrases(rng, present)

        # The first chunk holds as many phrases as fit in max_text_len tokens; the others' boxes are dropped.
        chunk = tokenize_caption(phrases, self.tokenizer, self.max_text_len)[0]
        phrase_span = dict(zip(chunk.phrases, chunk.phrase_spans))
        category_spans = {
            c: [span for phrase, core in pairs if (span := self._core_span(phrase, core, phrase_span)) is not None]
            for c, pairs in target_phrases.items()
        }
        category_spans = {c: spans for c, spans in category_spans.items() if spans}
        kept = [a for a in annotations if a["category_id"] in category_spans]

        image = self.load_image(index)
        width0, height0 = image.size
        short_side = int(rng.choice(self.sizes.short_sides)) if self.train else max(self.sizes.short_sides)
        resized = resize_to(image, short_side, self.sizes.max_long_side)

        boxes = torch.tensor([a["bbox"] for a in kept], dtype=torch.float32).reshape(-1, 4)  # [N, 4] xywh px
        scale = torch.tensor([width0, height0, width0, height0], dtype=torch.float32)
        boxes = (box_convert(boxes, "xywh", "cxcywh") / scale).clamp(0, 1)  # [N, 4] cxcywh in [0, 1]
        positive_map = torch.zeros(len(kept), self.max_text_len, dtype=torch.bool)
        for row, annotation in enumerate(kept):
            for start, end in category_spans[annotation["category_id"]]:
                positive_map[row, start:end] = True
        target = {
            "boxes": boxes,
            "positive_map": positive_map,
            "labels": torch.tensor([a["category_id"] for a in kept], dtype=torch.int64),
        }
        if self.with_masks:
            target["masks"] = torch.from_numpy(
                np.stack([decode_segmentation(a["segmentation"], height0, width0) for a in kept])
                if kept
                else np.zeros((0, height0, width0), dtype=bool)
            )
        return GroundingSample(
            pixel_values=image_to_tensor(resized),
            input_ids=list(chunk.input_ids),
            caption=chunk.caption,
            phrases=chunk.phrases,
            target=target,
            image_id=int(info["id"]),
            original_size=(height0, width0),
        )


@dataclass
class GroundingBatch:
    """Padded model inputs for a list of samples."""

    pixel_values: Tensor  # [B, 3, H, W] zero-padded bottom/right
    pixel_mask: Tensor  # [B, H, W] bool, True = valid pixel
    input_ids: Tensor  # [B, T] padded with 0
    attention_mask: Tensor  # [B, T] bool, True = real token
    targets: list[dict[str, Tensor]]
    samples: list[GroundingSample]

    def to(self, device: torch.device | str) -> "GroundingBatch":
        return GroundingBatch(
            self.pixel_values.to(device),
            self.pixel_mask.to(device),
            self.input_ids.to(device),
            self.attention_mask.to(device),
            [{k: v.to(device) for k, v in t.items()} for t in self.targets],
            self.samples,
        )


def single_thread_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: one intra-op thread per worker (N workers x all cores oversubscribes)."""
    torch.set_num_threads(1)


def collate(samples: list[GroundingSample]) -> GroundingBatch:
    """Pad images to the largest in the batch and captions to the longest."""
    height = max(s.pixel_values.shape[1] for s in samples)
    width = max(s.pixel_values.shape[2] for s in samples)
    length = max(len(s.input_ids) for s in samples)
    pixel_values = torch.zeros(len(samples), 3, height, width)
    pixel_mask = torch.zeros(len(samples), height, width, dtype=torch.bool)
    input_ids = torch.zeros(len(samples), length, dtype=torch.int64)
    attention_mask = torch.zeros(len(samples), length, dtype=torch.bool)
    for i, sample in enumerate(samples):
        _, h, w = sample.pixel_values.shape
        pixel_values[i, :, :h, :w] = sample.pixel_values
        pixel_mask[i, :h, :w] = True
        input_ids[i, : len(sample.input_ids)] = torch.tensor(sample.input_ids)
        attention_mask[i, : len(sample.input_ids)] = True
    return GroundingBatch(pixel_values, pixel_mask, input_ids, attention_mask, [s.target for s in samples], samples)
