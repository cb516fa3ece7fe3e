"""One command that retrains the small "shapes" demo detector from scratch with a fixed seed:
generate the shapes data, train the `tiny` preset on it, and score it on freshly generated held-out scenes.

    python -m grounding.train.demo_model --out runs/shapes [--minutes 30 --device cpu]

Writes OUT/data/{train,heldout}/ (COCO JSON + PNG), OUT/model/ (checkpoints, log.jsonl, model.pth) and
OUT/results.json (held-out AP with single-phrase prompts, absent-phrase rate, steps trained). The model reads
images resized to `image_size` (pass it as the detector's shortest_side).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from grounding.text import load_tokenizer
from grounding.train.data import CaptionSampling, CocoGroundingDataset, ImageSizes
from grounding.train.eval import evaluate
from grounding.train.shapes import ShapesConfig, generate_dataset
from grounding.train.trainer import FINAL_WEIGHTS, LAST_CHECKPOINT, TrainConfig, Trainer, build_model

HELD_OUT_SEED_OFFSET = 1000  # held-out scenes come from another seed, so none is seen in training


@dataclass
class DemoRecipe:
    seed: int = 0
    image_size: int = 128
    train_images: int = 2000
    heldout_images: int = 200
    epochs: int = 2
    batch_size: int = 4
    lr: float = 2e-4
    warmup_steps: int = 50
    max_absent: int = 4


def run(out: Path, recipe: DemoRecipe, minutes: float | None, device: str, progress: bool = True) -> dict:
    shapes = ShapesConfig(image_size=(recipe.image_size, recipe.image_size))
    splits = {"train": (recipe.train_images, recipe.seed), "heldout": (recipe.heldout_images, recipe.seed + HELD_OUT_SEED_OFFSET)}
    for split, (count, seed) in splits.items():
        if not (out / "data" / split / "annotations.json").is_file():
            generate_dataset(out / "data" / split, count, seed, shapes)

    tokenizer = load_tokenizer()
    sizes = ImageSizes((recipe.image_size,), recipe.image_size)
    train_set = CocoGroundingDataset(
        out / "data/train/annotations.json", out / "data/train/images", tokenizer, sizes=sizes,
        caption_sampling=CaptionSampling(max_absent=recipe.max_absent), seed=recipe.seed,
    )  # fmt: skip
    torch.manual_seed(recipe.seed)
    config = TrainConfig(
        epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, warmup_steps=recipe.warmup_steps, seed=recipe.seed
    )
    trainer = Trainer(build_model("tiny"), train_set, out / "model", config, device=device)
    if (out / "model" / LAST_CHECKPOINT).is_file():
        trainer.resume(out / "model" / LAST_CHECKPOINT)
    started = time.monotonic()
    trainer.fit(progress=progress, time_limit_s=minutes * 60 if minutes is not None else None)
    train_seconds = time.monotonic() - started

    heldout = CocoGroundingDataset(
        out / "data/heldout/annotations.json", out / "data/heldout/images", tokenizer, sizes=sizes, train=False
    )
    model = build_model(out / "model" / FINAL_WEIGHTS)
    result = evaluate(model, heldout, prompt_mode="single", device=device, progress=progress)
    summary = {
        "recipe": asdict(recipe),
        "steps": trainer.step,
        "total_steps": trainer.total_steps,
        "train_seconds_this_call": round(train_seconds, 1),
        "heldout": asdict(result),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m grounding.train.demo_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--minutes", type=float, default=None, help="training time limit (rerun to resume)")
    parser.add_argument("--seed", type=int, default=DemoRecipe.seed)
    parser.add_argument("--train-images", type=int, default=DemoRecipe.train_images)
    parser.add_argument("--heldout-images", type=int, default=DemoRecipe.heldout_images)
    parser.add_argument("--image-size", type=int, default=DemoRecipe.image_size)
    parser.add_argument("--epochs", type=int, default=DemoRecipe.epochs)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = DemoRecipe(
        seed=args.seed, image_size=args.image_size, train_images=args.train_images,
        heldout_images=args.heldout_images, epochs=args.epochs,
    )  # fmt: skip
    print(json.dumps(run(args.out, recipe, args.minutes, args.device), indent=2))


if __name__ == "__main__":
    main()
