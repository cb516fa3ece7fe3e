"""Training a small SAM on box prompts and clicks (the shipped "shapes" segmenter), and its mask-IoU evaluations.

The model is `segment-anything`'s own `Sam` (built by `grounding.segmenters.sam.build_sam`, official state-dict keys), so
the result loads through `SamSegmenter.from_pretrained(variant, checkpoint)` like a released checkpoint.
Each step encodes a batch of images once and decodes every object of each image from its (jittered) box, with
the SAM paper's losses on the single-mask output: 20 x focal + 1 x dice on the mask, MSE between the predicted
and the actual IoU. Images go through the same `ResizeLongestSide` + `Sam.preprocess` as `SamPredictor`.

Clicks (`point_fraction` of the objects): the box comes with 1-3 points, as the studio's refinement sends them.
Half of those objects get a box that also covers a neighbour, with a "not this" click on the neighbour (and maybe
a "this" click on the object): what fixes a mask that spilled onto a touching object. The others get clicks on
the object and on the box's background. Objects without clicks decode from the box alone (no padding point, as
`SamPredictor` decodes a box).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import sigmoid_focal_loss
from tqdm import tqdm

from grounding.checkpoint import state_dict_on_cpu
from grounding.train.data import decode_segmentation
from grounding.train.trainer import TrainingLoop

SAM_LAST_CHECKPOINT = "sam_checkpoint_last.pth"
SAM_FINAL_WEIGHTS = "sam.pth"


@dataclass
class SamTrainConfig:
    epochs: int = 20
    batch_size: int = 16  # images per step; every object of an image is a prompt
    lr: float = 4e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    box_jitter: float = 0.1  # std of each box coordinate's noise, as a fraction of the box side (SAM paper)
    max_jitter_px: float = 20.0
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    checkpoint_every: int = 500
    log_every: int = 20
    num_workers: int = 0
    seed: int = 0
    anneal_to_time_limit: bool = False  # as TrainConfig's
    point_fraction: float = 0.0  # objects prompted with box + clicks (0: boxes only, the first shipped recipe)
    merged_fraction: float = 0.5  # of those, a box over the object and a neighbour, with a click on the neighbour
    max_points: int = 3
    train_image_encoder: bool = True  # False: only the prompt encoder and mask decoder learn (a fine-tune ~3x faster)


@dataclass
class SamSample:
    image: Tensor  # [3, h, w] uint8, resized so the long side is img_size (SamPredictor's input)
    boxes: Tensor  # [N, 4] xyxy px in the resized image
    masks: Tensor  # [N, img_size, img_size] bool, resized and zero-padded bottom/right like the image


class SamBoxDataset(Dataset):
    """Images with instance masks from a COCO JSON, prepared for SAM's input frame (`img_size` square)."""

    def __init__(self, annotation_file: str | Path, image_dir: str | Path, img_size: int) -> None:
        coco = json.loads(Path(annotation_file).read_text())
        self.image_dir = Path(image_dir)
        self.img_size = img_size
        self.transform = ResizeLongestSide(img_size)
        self.images = sorted(coco["images"], key=lambda im: im["id"])
        self.annotations: dict[int, list[dict]] = {}
        for annotation in coco["annotations"]:
            if not annotation.get("iscrowd", 0):
                self.annotations.setdefault(annotation["image_id"], []).append(annotation)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> SamSample:
        info = self.images[index]
        image = np.asarray(Image.open(self.image_dir / info["file_name"]).convert("RGB"))  # [H0, W0, 3]
        height0, width0 = image.shape[:2]
        resized = self.transform.apply_image(image)  # [h, w, 3]
        height, width = resized.shape[:2]
        annotations = self.annotations.get(info["id"], [])
        masks0 = np.stack([decode_segmentation(a["segmentation"], height0, width0) for a in annotations]) if annotations \
            else np.zeros((0, height0, width0), bool)  # fmt: skip
        masks = F.interpolate(torch.from_numpy(masks0)[:, None].float(), (height, width), mode="nearest-exact")[:, 0] > 0.5
        padded = torch.zeros(len(annotations), self.img_size, self.img_size, dtype=torch.bool)
        padded[:, :height, :width] = masks
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)  # xywh px
        boxes[:, 2:] += boxes[:, :2]
        boxes = torch.as_tensor(self.transform.apply_boxes(boxes.numpy(), (height0, width0)), dtype=torch.float32)
        return SamSample(torch.from_numpy(resized).permute(2, 0, 1).contiguous(), boxes, padded)


def collate_sam(samples: list[SamSample]) -> list[SamSample]:
    return samples


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """logits, targets [N, H, W] -> mean over N of 1 - soft dice."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).mean()


def mask_iou(predicted: Tensor, targets: Tensor) -> Tensor:
    """Boolean masks [N, H, W] -> IoU per mask [N] (1 where both are empty)."""
    intersection = (predicted & targets).flatten(1).sum(-1).float()
    union = (predicted | targets).flatten(1).sum(-1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def jitter_boxes(boxes: Tensor, config: SamTrainConfig, generator: torch.Generator, size: tuple[int, int]) -> Tensor:
    """boxes [N, 4] xyxy px -> noisy boxes: each coordinate moved by N(0, jitter * side), capped, kept inside
    the image of `size` (width, height)."""
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # [N, 4] (w, h, w, h)
    noise = torch.randn(boxes.shape, generator=generator) * config.box_jitter * sides
    noisy = boxes + noise.clamp(-config.max_jitter_px, config.max_jitter_px)
    width, height = size
    upper = torch.tensor([width, height, width, height], dtype=noisy.dtype)
    return torch.minimum(noisy.clamp(min=0), upper)


def random_pixel(region: Tensor, generator: torch.Generator) -> Tensor | None:
    """A uniformly drawn (x, y) of a bool mask [H, W] (float32 [2], pixel centre), or None if it is empty."""
    where = region.nonzero()  # [K, 2] (y, x)
    if len(where) == 0:
        return None
    y, x = where[int(torch.randint(len(where), (1,), generator=generator))].tolist()
    return torch.tensor([x + 0.5, y + 0.5])


def box_of(mask: Tensor) -> Tensor:
    """The tight xyxy box [4] of a non-empty bool mask [H, W] (pixel edges)."""
    ys, xs = mask.nonzero(as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def nearest_neighbour(boxes: Tensor, index: int) -> int | None:
    """The other box whose centre is nearest box `index`'s (boxes [N, 4]), or None when there is no other."""
    if len(boxes) < 2:
        return None
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    distances = (centres - centres[index]).norm(dim=1)
    distances[index] = float("inf")
    return int(distances.argmin())


def click_prompts(sample: SamSample, boxes: Tensor, chosen: list[int], count: int, config: SamTrainConfig,
                  generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, list[int]]:  # fmt: skip
    """Boxes [n, 4], points [n, count, 2], labels [n, count] (1 = object, 0 = not) and the objects they prompt (of
    `chosen`; one whose mask is empty gets none). See the module docstring; `boxes` are the sample's jittered boxes."""
    out_boxes, points, labels, kept = [], [], [], []
    for i in chosen:
        target = sample.masks[i]
        neighbour = nearest_neighbour(sample.boxes, i)
        merged = neighbour is not None and float(torch.rand(1, generator=generator)) < config.merged_fraction
        box = torch.cat([torch.minimum(boxes[i, :2], boxes[neighbour, :2]), torch.maximum(boxes[i, 2:], boxes[neighbour, 2:])]) \
            if merged else boxes[i]  # fmt: skip
        inside_box = torch.zeros_like(target)
        x1, y1, x2, y2 = (int(v) for v in box.round())
        inside_box[y1:y2, x1:x2] = True
        clicks: list[tuple[Tensor | None, int]] = []
        if merged:
            clicks.append((random_pixel(sample.masks[neighbour] & ~target, generator), 0))
        while len(clicks) < count:
            keep = not clicks or float(torch.rand(1, generator=generator)) < 0.6
            region = target if keep else inside_box & ~target
            clicks.append((random_pixel(region, generator), int(keep)))
        clicks = [(xy, label) if xy is not None else (random_pixel(target, generator), 1) for xy, label in clicks]
        if any(xy is None for xy, _ in clicks):  # an empty target mask (fully covered): no clicks to give
            continue
        out_boxes.append(box)
        kept.append(i)
        points.append(torch.stack([xy for xy, _ in clicks]))
        labels.append(torch.tensor([label for _, label in clicks]))
    if not out_boxes:
        return torch.zeros(0, 4), torch.zeros(0, count, 2), torch.zeros(0, count, dtype=torch.long), []
    return torch.stack(out_boxes), torch.stack(points), torch.stack(labels), kept


def decode_prompts(sam: Sam, embedding: Tensor, boxes: Tensor, points: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """One image's embedding [1, C, E, E], boxes [N, 4] and optional clicks (points [N, P, 2], labels [N, P]),
    input frame -> mask logits [N, S, S] (S = img_size, upsampled from SAM's low-res output as
    `Sam.postprocess_masks` does) and predicted IoU [N]."""
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    low_res, iou = sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )  # [N, 1, 4E, 4E], [N, 1]
    size = sam.image_encoder.img_size
    logits = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)[:, 0]
    return logits, iou[:, 0]


def _images_to_input(sam: Sam, samples: list[SamSample], device: torch.device) -> Tensor:
    """uint8 images of several sizes -> [B, 3, S, S] normalised and padded (`Sam.preprocess`)."""
    return torch.cat([sam.preprocess(s.image.to(device)[None].float()) for s in samples])


class SamTrainer(TrainingLoop):
    """Trains `sam` on `dataset`; writes sam_checkpoint_last.pth (resumable), log_sam.jsonl and sam.pth."""

    log_name = "log_sam.jsonl"
    last_checkpoint = SAM_LAST_CHECKPOINT
    progress_label = "train sam"

    def __init__(self, sam: Sam, dataset: SamBoxDataset, out_dir: str | Path, config: SamTrainConfig | None = None,
                 device: str | torch.device = "cpu") -> None:  # fmt: skip
        config = config or SamTrainConfig()
        sam.image_encoder.requires_grad_(config.train_image_encoder)
        trained = [p for p in sam.parameters() if p.requires_grad]
        super().__init__(sam, dataset, out_dir, config, device, trained, collate_sam)

    @property
    def sam(self) -> Sam:
        return self.model

    def train_step(self, samples: list[SamSample]) -> dict[str, float]:
        self.sam.train()
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
        with torch.set_grad_enabled(self.config.train_image_encoder):
            embeddings = self.sam.image_encoder(_images_to_input(self.sam, samples, self.device))  # [B, C, E, E]
        focal, dice, iou_error, count = [], [], [], 0
        for b, sample in enumerate(samples):
            if len(sample.boxes) == 0:
                continue
            image_size = (sample.image.shape[-1], sample.image.shape[-2])  # (w, h) of the resized image
            boxes = jitter_boxes(sample.boxes, self.config, generator, image_size)
            with_clicks = torch.rand(len(boxes), generator=generator) < self.config.point_fraction
            clicked = with_clicks.nonzero()[:, 0].tolist()
            groups = [(boxes[~with_clicks], None, sample.masks[~with_clicks])]
            if clicked:
                count_clicks = int(torch.randint(1, self.config.max_points + 1, (1,), generator=generator))
                click_boxes, points, labels, kept = click_prompts(sample, boxes, clicked, count_clicks, self.config, generator)
                groups.append((click_boxes, (points, labels), sample.masks[kept]))
            for group_boxes, clicks, group_targets in groups:
                if len(group_boxes) == 0:
                    continue
                targets = group_targets.to(self.device)  # [n, S, S]
                clicks = None if clicks is None else (clicks[0].to(self.device), clicks[1].to(self.device))
                logits, predicted_iou = decode_prompts(self.sam, embeddings[b : b + 1], group_boxes.to(self.device), clicks)
                focal.append(sigmoid_focal_loss(logits, targets.float(), reduction="none").flatten(1).mean(-1))
                dice.append(dice_loss(logits, targets.float()) * len(group_boxes))
                actual = mask_iou(logits.detach() > 0, targets)
                iou_error.append((predicted_iou - actual) ** 2)
                count += len(group_boxes)
        if count == 0:  # no object in any image of the batch: nothing to learn from
            self.step += 1
            return {"focal": 0.0, "dice": 0.0, "iou": 0.0, "loss": 0.0}
        losses = {
            "focal": torch.cat(focal).sum() / count,
            "dice": torch.stack(dice).sum() / count,
            "iou": torch.cat(iou_error).sum() / count,
        }
        config = self.config
        losses["loss"] = config.focal_weight * losses["focal"] + config.dice_weight * losses["dice"] + config.iou_weight * losses["iou"]
        self.optimizer_step(losses["loss"])
        return {name: float(value.detach()) for name, value in losses.items()}

    def write_final_weights(self) -> None:
        """`sam.pth`: the state dict alone, as the official SAM releases are stored."""
        torch.save(state_dict_on_cpu(self.sam), self.out_dir / SAM_FINAL_WEIGHTS)


@torch.no_grad()
def evaluate_sam(sam: Sam, dataset: SamBoxDataset, device: str | torch.device = "cpu", progress: bool = False) -> float:
    """Mean mask IoU over every object of `dataset`, prompted with its exact box (thresholded at logit 0).
    Runs `sam` on `device` in eval mode and gives it back in the mode it came in."""
    was_training = sam.training
    sam = sam.to(device).eval()
    ious = []
    for index in tqdm(range(len(dataset)), disable=not progress, desc="eval sam"):
        sample = dataset[index]
        if len(sample.boxes) == 0:
            continue
        embedding = sam.image_encoder(_images_to_input(sam, [sample], torch.device(device)))
        logits, _ = decode_prompts(sam, embedding, sample.boxes.to(device))
        ious.append(mask_iou(logits > 0, sample.masks.to(device)).cpu())
    sam.train(was_training)
    return float(torch.cat(ious).mean()) if ious else float("nan")


def central_pixel(region: Tensor) -> Tensor:
    """The (x, y) pixel centre of a non-empty bool mask [H, W] nearest its centroid (always inside it)."""
    where = region.nonzero().float()  # [K, 2] (y, x)
    nearest = where[(where - where.mean(0)).norm(dim=1).argmin()]
    return torch.stack([nearest[1], nearest[0]]) + 0.5


@torch.no_grad()
def evaluate_sam_clicks(sam: Sam, dataset: SamBoxDataset, device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """The click that fixes a spilled mask: each object of `dataset` with a neighbour is prompted with the box over
    both (exact boxes), then with that box plus one "not this" click at the centre of the neighbour's visible
    part. Returns the object's mean mask IoU either way, and how many objects were scored."""
    was_training = sam.training
    sam = sam.to(device).eval()
    before, after = [], []
    for index in tqdm(range(len(dataset)), disable=not progress, desc="eval sam clicks"):
        sample = dataset[index]
        if len(sample.boxes) < 2:
            continue
        embedding = sam.image_encoder(_images_to_input(sam, [sample], torch.device(device)))
        for i in range(len(sample.boxes)):
            j = nearest_neighbour(sample.boxes, i)
            other = sample.masks[j] & ~sample.masks[i]
            if not sample.masks[i].any() or not other.any():
                continue
            box = torch.cat([torch.minimum(sample.boxes[i, :2], sample.boxes[j, :2]),
                             torch.maximum(sample.boxes[i, 2:], sample.boxes[j, 2:])])[None].to(device)
            target = sample.masks[i : i + 1].to(device)
            logits, _ = decode_prompts(sam, embedding, box)
            before.append(mask_iou(logits > 0, target).cpu())
            click = (central_pixel(other)[None, None].to(device), torch.zeros(1, 1, dtype=torch.long, device=device))
            logits, _ = decode_prompts(sam, embedding, box, click)
            after.append(mask_iou(logits > 0, target).cpu())
    sam.train(was_training)
    if not before:
        return {"objects": 0}
    return {"objects": len(before), "merged_box_iou": float(torch.cat(before).mean()),
            "with_not_click_iou": float(torch.cat(after).mean())}
