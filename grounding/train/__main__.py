"""Train Grounding DINO on a COCO-format detection dataset.

    python -m grounding.train --data ann.json --images DIR --init tiny --out runs/x [--epochs 12 --lr 1e-4
        --batch-size 4 --device cpu --resume]

--init takes a checkpoint (a local .pth / .safetensors / HF folder, or a released name such as swint_ogc,
fetched like the studio does) or random weights of a preset: "tiny" or "scratch:<preset>".
--resume continues from OUT/checkpoint_last.pth (or the given path).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from grounding.config import PRESETS
from grounding.text import load_tokenizer
from grounding.train.data import CaptionSampling, CocoGroundingDataset, ImageSizes
from grounding.train.trainer import LAST_CHECKPOINT, TrainConfig, Trainer, build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m grounding.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="COCO detection JSON")
    parser.add_argument("--images", required=True, help="folder holding the JSON's file_name entries")
    parser.add_argument("--init", required=True, help=f"checkpoint path or name, or random weights: tiny / scratch:<{'|'.join(PRESETS)}>")
    parser.add_argument("--out", required=True, help="output folder for checkpoints and log.jsonl")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--lr-backbone", type=float, default=None, help="Swin + BERT learning rate (default: --lr)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps)
    parser.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every, help="steps")
    parser.add_argument("--log-every", type=int, default=TrainConfig.log_every, help="steps between log.jsonl lines")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--short-sides", type=int, nargs="+", default=[800], help="training resize choices")
    parser.add_argument("--max-long-side", type=int, default=1333)
    parser.add_argument("--max-phrases", type=int, default=CaptionSampling.max_phrases)
    parser.add_argument("--max-absent", type=int, default=CaptionSampling.max_absent)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, help="checkpoint (default OUT/checkpoint_last.pth)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--time-limit", type=float, default=None, help="stop (resumable) after this many minutes")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads); 1 is "
                        "fastest for small models on a busy machine")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(args.init)
    dataset = CocoGroundingDataset(
        args.data,
        args.images,
        load_tokenizer(),
        sizes=ImageSizes(tuple(args.short_sides), args.max_long_side),
        caption_sampling=CaptionSampling(max_phrases=args.max_phrases, max_absent=args.max_absent),
        max_text_len=model.config.max_text_len,
        seed=args.seed,
    )
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_backbone=args.lr_backbone,
        warmup_steps=args.warmup_steps,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        num_workers=args.num_workers,
        seed=args.seed,
    )
    trainer = Trainer(model, dataset, args.out, config, device=args.device)
    if args.resume:
        resume_path = Path(args.out) / LAST_CHECKPOINT if args.resume == "auto" else Path(args.resume)
        trainer.resume(resume_path)
        print(f"resumed from {resume_path} at step {trainer.step}/{trainer.total_steps}")
    time_limit_s = args.time_limit * 60 if args.time_limit is not None else None
    losses = trainer.fit(progress=not args.no_progress, time_limit_s=time_limit_s)
    print(f"done: step {trainer.step}, last loss {losses.get('loss', float('nan')):.4f}, weights {Path(args.out) / 'model.pth'}")


if __name__ == "__main__":
    main()
