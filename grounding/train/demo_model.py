"""One command that retrains the shipped "shapes" demo models from scratch with a fixed seed: generate the shapes
data, train the detector (`shapes` preset) and the small SAM (`shapes` variant) on it, and score both on freshly
generated held-out scenes.

    python -m grounding.train.demo_model --out runs/shapes [--minutes 30 --device cuda]
    python -m grounding.train.demo_model --out runs/shapes --part detector   # one part: data|detector|sam|eval

Writes OUT/data/{train,heldout}/ (COCO JSON + PNG), OUT/model/ (checkpoints, logs, model.pth, sam.pth) and
OUT/results.json (held-out AP50 with single-phrase prompts, absent-phrase rate, mask IoU, the prompt families of
`grounding.train.prompt_eval`, steps trained).
Scenes are drawn at `image_size` (SAM's input); the detector reads them resized to `detector_size` (recorded
as the input size in its checkpoint).
Parts run in order and each skips what is already there; --minutes caps each training part (resumable).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from grounding.detector import GroundingDetector
from grounding.pipeline import GroundedSAM
from grounding.segmenters.sam import SAM_VARIANTS, build_sam, load_sam_checkpoint
from grounding.text import load_tokenizer
from grounding.train.data import CaptionSampling, CocoGroundingDataset, ImageSizes
from grounding.train.eval import evaluate
from grounding.train.prompt_eval import evaluate_prompts
from grounding.train.sam_trainer import (
    SAM_FINAL_WEIGHTS, SamBoxDataset, SamTrainConfig, SamTrainer, evaluate_sam, evaluate_sam_clicks,
)
from grounding.train.shapes import ShapesConfig, generate_dataset
from grounding.train.trainer import FINAL_WEIGHTS, TrainConfig, Trainer, TrainingLoop, build_model

HELD_OUT_SEED_OFFSET = 1000  # held-out scenes come from another seed, so none is seen in training
PARTS = ("data", "detector", "sam", "eval")
GPU_BATCH_SIZE = 128


@dataclass
class DemoRecipe:
    seed: int = 0
    image_size: int = 256  # scenes, and SAM's input
    detector_size: int = 128  # the detector's input: as the shipped one reads (4x fewer pixels than the scenes)
    train_images: int = 12000
    heldout_images: int = 200
    preset: str = "shapes"
    epochs: int = 40
    batch_size: int = 8  # main() uses GPU_BATCH_SIZE on a GPU, where a step's cost hardly grows with the batch
    lr: float = 2e-4
    warmup_steps: int = 100
    # Caption sampling, as the shipped detector's last stage. Measured side by side (92 CPU minutes each from the
    # same weights): up to 12 negatives, 90% of them sharing a word gave held-out AP50 0.918 and 92.1% absent
    # phrases without a box; up to 8, 80% gave 0.912 and 91.9% (earlier, up to 4, 60%, 40% word captions: worse).
    max_absent: int = 12
    keep_present: float = 0.7  # present phrases left out of a caption teach "unnamed object -> no box"
    related_absent: float = 0.9  # negatives sharing a colour or shape with a present object
    word_phrases: float = 0.3  # captions of single words ("circle . red ."): shape must be learnt, not only colour
    natural: float = 0.0  # captions written as people write ("a red circle", "red circles", "find the red star")
    max_unrelated: int = 0  # common object words ("dog", "a car") as negatives
    # The training scenes (the held-out scenes keep ShapesConfig's defaults, so AP50 stays comparable):
    scene_min_radius: float = 0.06
    scene_max_radius: float = 0.2
    scene_max_objects: int = 6
    scene_shade: float = 0.0
    scene_log_radius: bool = False
    scene_mix: bool = False  # every other training scene keeps the held-out layout, so the wide ones add, not replace
    prompt_eval_scenes: int = 100  # fresh scenes per family of `grounding.train.prompt_eval` in the eval part
    sam_variant: str = "shapes"
    sam_epochs: int = 20
    sam_batch_size: int = 16
    sam_lr: float = 4e-4
    sam_point_fraction: float = 0.5  # objects prompted with box + clicks (the studio's refinement); see sam_trainer
    sam_train_encoder: bool = True  # False for a decoder-only fine-tune (--sam-freeze-encoder)
    sam_merged_fraction: float = 0.5  # of the clicked objects, prompted with a box over a neighbour too
    workers: int = 0  # data generation processes and DataLoader workers
    anneal_to_time_limit: bool = False
    init_detector: str | None = None  # continue from these weights instead of random ones
    init_sam: str | None = None


def _data(out: Path, recipe: DemoRecipe) -> None:
    heldout = ShapesConfig(image_size=(recipe.image_size, recipe.image_size))
    train = replace(heldout, min_radius=recipe.scene_min_radius, max_radius=recipe.scene_max_radius,
                    max_objects=recipe.scene_max_objects, shade=recipe.scene_shade, log_radius=recipe.scene_log_radius,
                    min_pixels=16 if recipe.scene_min_radius < 0.06 else heldout.min_pixels)
    splits = {"train": (recipe.train_images, recipe.seed, (train, heldout) if recipe.scene_mix else train),
              "heldout": (recipe.heldout_images, recipe.seed + HELD_OUT_SEED_OFFSET, heldout)}
    for split, (count, seed, shapes) in splits.items():
        if not (out / "data" / split / "annotations.json").is_file():
            generate_dataset(out / "data" / split, count, seed, shapes, workers=max(1, recipe.workers))


def _fit(trainer: TrainingLoop, minutes: float | None, progress: bool) -> dict:
    """Resume from the trainer's last checkpoint if there is one, train (at most `minutes`), report steps."""
    last = trainer.out_dir / trainer.last_checkpoint
    if last.is_file():
        trainer.resume(last)
    started = time.monotonic()
    trainer.fit(progress=progress, time_limit_s=minutes * 60 if minutes is not None else None)
    return {"steps": trainer.step, "total_steps": trainer.total_steps, "seconds": round(time.monotonic() - started, 1)}


def _train_detector(out: Path, recipe: DemoRecipe, minutes: float | None, device: str, progress: bool) -> dict:
    sizes = ImageSizes((recipe.detector_size,), recipe.detector_size)
    train_set = CocoGroundingDataset(
        out / "data/train/annotations.json", out / "data/train/images", load_tokenizer(), sizes=sizes,
        caption_sampling=CaptionSampling(
            max_absent=recipe.max_absent, keep_present=recipe.keep_present, related_absent=recipe.related_absent,
            word_phrases=recipe.word_phrases, natural=recipe.natural, max_unrelated=recipe.max_unrelated,
        ), seed=recipe.seed,
    )  # fmt: skip
    torch.manual_seed(recipe.seed)
    config = TrainConfig(
        epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, warmup_steps=recipe.warmup_steps,
        seed=recipe.seed, num_workers=recipe.workers, anneal_to_time_limit=recipe.anneal_to_time_limit,
    )  # fmt: skip
    model = build_model(recipe.init_detector or recipe.preset)
    model.config.input_size = (recipe.detector_size, recipe.detector_size)
    return _fit(Trainer(model, train_set, out / "model", config, device=device), minutes, progress)


def _sam_dataset(out: Path, split: str, recipe: DemoRecipe) -> SamBoxDataset:
    return SamBoxDataset(out / f"data/{split}/annotations.json", out / f"data/{split}/images", SAM_VARIANTS[recipe.sam_variant].img_size)


def _train_sam(out: Path, recipe: DemoRecipe, minutes: float | None, device: str, progress: bool) -> dict:
    torch.manual_seed(recipe.seed)
    config = SamTrainConfig(
        epochs=recipe.sam_epochs, batch_size=recipe.sam_batch_size, lr=recipe.sam_lr, seed=recipe.seed,
        num_workers=recipe.workers, anneal_to_time_limit=recipe.anneal_to_time_limit,
        point_fraction=recipe.sam_point_fraction, train_image_encoder=recipe.sam_train_encoder,
        merged_fraction=recipe.sam_merged_fraction,
    )  # fmt: skip
    sam = build_sam(SAM_VARIANTS[recipe.sam_variant])
    if recipe.init_sam:
        load_sam_checkpoint(sam, recipe.init_sam)
    trainer = SamTrainer(sam, _sam_dataset(out, "train", recipe), out / "model", config, device)
    return _fit(trainer, minutes, progress)


def _evaluate(out: Path, recipe: DemoRecipe, device: str, progress: bool) -> dict:
    result: dict = {}
    if (out / "model" / FINAL_WEIGHTS).is_file():
        heldout = CocoGroundingDataset(
            out / "data/heldout/annotations.json", out / "data/heldout/images", load_tokenizer(),
            sizes=ImageSizes((recipe.detector_size,), recipe.detector_size), train=False,
        )  # fmt: skip
        model = build_model(out / "model" / FINAL_WEIGHTS)
        result["detector"] = asdict(evaluate(model, heldout, prompt_mode="single", device=device, progress=progress))
        detector = GroundingDetector(model, heldout.tokenizer, "cpu")  # the same weights, read once
        result["prompts"] = [asdict(r) for r in evaluate_prompts(GroundedSAM(detector), recipe.prompt_eval_scenes)]
    if (out / "model" / SAM_FINAL_WEIGHTS).is_file():
        sam = load_sam_checkpoint(build_sam(SAM_VARIANTS[recipe.sam_variant]), out / "model" / SAM_FINAL_WEIGHTS)
        result["sam_mask_iou"] = evaluate_sam(sam, _sam_dataset(out, "heldout", recipe), device, progress)
        result["sam_clicks"] = evaluate_sam_clicks(sam, _sam_dataset(out, "heldout", recipe), device, progress)
    return result


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An advisory lock between processes (POSIX); on systems without fcntl, none."""
    with lock_path.open("w") as lock:
        try:
            import fcntl
        except ImportError:  # Windows: parts there run one after another
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run(out: Path, recipe: DemoRecipe, minutes: float | None, device: str, progress: bool = True,
        parts: tuple[str, ...] = PARTS) -> dict:  # fmt: skip
    """Run `parts` in order; returns (and merges into OUT/results.json) what they measured."""
    out = Path(out)
    summary: dict = {"recipe": asdict(recipe)}
    if "data" in parts:
        _data(out, recipe)
    if "detector" in parts:
        summary["detector_training"] = _train_detector(out, recipe, minutes, device, progress)
    if "sam" in parts:
        summary["sam_training"] = _train_sam(out, recipe, minutes, device, progress)
    if "eval" in parts:
        summary["heldout"] = _evaluate(out, recipe, device, progress)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"  # merged with what other parts, maybe in other processes, wrote
    with _exclusive(out / "results.lock"):
        earlier = json.loads(results_path.read_text()) if results_path.is_file() else {}
        temporary = results_path.with_suffix(".tmp")
        temporary.write_text(json.dumps({**earlier, **summary}, indent=2))
        temporary.replace(results_path)
    return summary


def main(argv: list[str] | None = None) -> None:
    defaults = DemoRecipe()
    parser = argparse.ArgumentParser(prog="python -m grounding.train.demo_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--part", choices=PARTS, action="append", help="run only these parts (repeatable)")
    parser.add_argument("--minutes", type=float, default=None, help="time limit of each training part (rerun to resume)")
    parser.add_argument("--anneal-to-time-limit", action="store_true", help="cosine schedules end at --minutes")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-images", type=int, default=defaults.train_images)
    parser.add_argument("--heldout-images", type=int, default=defaults.heldout_images)
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="scene size (SAM's input)")
    parser.add_argument("--detector-size", type=int, default=defaults.detector_size, help="the detector's input size")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"detector batch (default {GPU_BATCH_SIZE} on a GPU, {defaults.batch_size} on CPU)")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--keep-present", type=float, default=defaults.keep_present,
                        help="chance that each present object kind is named in a caption")
    parser.add_argument("--related-absent", type=float, default=defaults.related_absent,
                        help="share of negatives that share a word with a present phrase")
    parser.add_argument("--word-phrases", type=float, default=defaults.word_phrases,
                        help="share of captions made of single words (colour or shape alone)")
    parser.add_argument("--natural", type=float, default=defaults.natural,
                        help="share of captions written as people write (articles, plurals, sentences, ...)")
    parser.add_argument("--max-unrelated", type=int, default=defaults.max_unrelated,
                        help="common object words per caption as negatives (0..N)")
    parser.add_argument("--scene-radius", type=float, nargs=2, default=(defaults.scene_min_radius, defaults.scene_max_radius),
                        metavar=("MIN", "MAX"), help="training objects' radius, as a fraction of the image")
    parser.add_argument("--scene-max-objects", type=int, default=defaults.scene_max_objects)
    parser.add_argument("--scene-shade", type=float, default=defaults.scene_shade,
                        help="up to this much white or black mixed into an object's colour")
    parser.add_argument("--scene-log-radius", action="store_true", help="radii uniform in log scale")
    parser.add_argument("--scene-mix", action="store_true",
                        help="every other training scene in the default layout (as the held-out scenes)")
    parser.add_argument("--sam-epochs", type=int, default=defaults.sam_epochs)
    parser.add_argument("--init-detector", default=None, help="continue from these detector weights (model.pth)")
    parser.add_argument("--init-sam", default=None, help="continue from these SAM weights (sam.pth)")
    parser.add_argument("--sam-lr", type=float, default=defaults.sam_lr)
    parser.add_argument("--sam-point-fraction", type=float, default=defaults.sam_point_fraction,
                        help="objects prompted with box + clicks in SAM training (0: boxes only)")
    parser.add_argument("--sam-merged-fraction", type=float, default=defaults.sam_merged_fraction,
                        help="of the clicked objects, those prompted with a box over a neighbour and a 'not this' click")
    parser.add_argument("--sam-freeze-encoder", action="store_true",
                        help="train only SAM's prompt encoder and mask decoder (a fine-tune from --init-sam)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1) - 1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    recipe = replace(
        defaults, seed=args.seed, image_size=args.image_size, detector_size=args.detector_size,
        train_images=args.train_images, heldout_images=args.heldout_images, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size or (GPU_BATCH_SIZE if args.device.startswith("cuda") else defaults.batch_size),
        sam_epochs=args.sam_epochs, workers=args.workers, anneal_to_time_limit=args.anneal_to_time_limit,
        init_detector=args.init_detector, init_sam=args.init_sam, sam_lr=args.sam_lr,
        sam_point_fraction=args.sam_point_fraction, sam_train_encoder=not args.sam_freeze_encoder,
        sam_merged_fraction=args.sam_merged_fraction, natural=args.natural, max_unrelated=args.max_unrelated,
        scene_min_radius=args.scene_radius[0], scene_max_radius=args.scene_radius[1],
        scene_max_objects=args.scene_max_objects, scene_shade=args.scene_shade, scene_log_radius=args.scene_log_radius,
        scene_mix=args.scene_mix, keep_present=args.keep_present, related_absent=args.related_absent,
        word_phrases=args.word_phrases,
    )  # fmt: skip
    summary = run(args.out, recipe, args.minutes, args.device, progress=not args.no_progress, parts=tuple(args.part or PARTS))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
