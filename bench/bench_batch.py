"""Images per second of `python -m grounding.batch` on this machine, local engine against Ray: the README's table.

    python bench/bench_batch.py [--scenes 80] [--big 6]

1. The shipped shapes models on generated 256x256 scenes (masks and annotated pictures on).
2. The real detector architecture with random weights (Grounding DINO Swin-T, saved as a local checkpoint, nothing
   downloaded) on `--big` scenes scaled to 512 px, boxes only: random weights box hundreds of "objects" a scene, so
   SAM's time on them would mean nothing (SAM's cost per image is in the README's Performance section).
Each run is the whole job into a fresh folder: model loading (per actor on Ray), Ray's start, reading, the models,
RLE, shards and the merged COCO. "first image" is when the first record reached the driver (Ray's start and model loading). Ratios are against the local
engine in the same process.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from grounding.batch import BatchConfig, RayConfig, label_dataset
from grounding.batch.store import RunFolder
from grounding.train.shapes import ShapesConfig, render_scene

PROMPT = "red circle . blue square . green star . yellow triangle"


def scenes(folder: Path, count: int, side: int) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        image, _ = render_scene(np.random.default_rng([5, index]), ShapesConfig(image_size=(256, 256)))
        image.resize((side, side), Image.BILINEAR).save(folder / f"{index:04d}.png")
    return folder


def timed(images: Path, config: BatchConfig, engine: str, ray_config: RayConfig | None = None) -> tuple[float, float]:
    """(images/s over the whole run, seconds to the first record reaching the driver)."""
    arrivals: list[float] = []
    add = RunFolder.add

    def add_and_time(self, encoded, item):  # when each record reaches the driver, without touching the engine
        arrivals.append(time.perf_counter())
        return add(self, encoded, item)

    RunFolder.add = add_and_time
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            summary = label_dataset(images, out, config, engine=engine, ray_config=ray_config, progress=False)
            total = time.perf_counter() - start
    finally:
        RunFolder.add = add
    return summary.images / total, arrivals[0] - start


def table(images: Path, config: BatchConfig, runs: list[tuple[str, str, RayConfig | None]]) -> None:
    print("| engine | images/s, whole run | vs local | first image after |\n|---|---|---|---|")
    base = None
    for name, engine, ray_config in runs:
        rate, first = timed(images, config, engine, ray_config)
        base = base or rate
        print(f"| {name} | {rate:.2f} | {rate / base:.2f}x | {first:.1f} s |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=80)
    parser.add_argument("--big", type=int, default=6)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    runs = [
        (f"local ({threads} threads)", "local", None),
        ("ray, 1 actor x 1 CPU (+1 CPU reading, encoding)", "ray", RayConfig(num_cpus=2, actors=1)),
        ("ray, 2 actors x 1 CPU (CPUs oversubscribed: 3 on 2 cores)", "ray", RayConfig(num_cpus=3, actors=2)),
    ]
    with tempfile.TemporaryDirectory() as work:
        print(f"shapes models, {args.scenes} scenes of 256x256, masks and pictures on")
        table(scenes(Path(work) / "shapes", args.scenes, 256), BatchConfig(prompt=PROMPT, detector="shapes", device="cpu"), runs)

        from grounding.checkpoint import save_checkpoint
        from grounding.config import swint_ogc
        from grounding.model import GroundingDINO

        torch.manual_seed(0)
        detector = save_checkpoint(GroundingDINO(swint_ogc()).eval(), Path(work) / "swint_random.pth")
        config = BatchConfig(prompt=PROMPT, detector=str(detector), sam=None, device="cpu")
        print(f"\nrandom Swin-T, boxes only, {args.big} scenes of 512x512")
        table(scenes(Path(work) / "big", args.big, 512), config, runs[:2])


if __name__ == "__main__":
    main()
