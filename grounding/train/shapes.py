"""Procedural "shapes" dataset: coloured circles, squares, triangles, stars and rings on textured backgrounds,
with boxes, instance masks and captions, written as COCO JSON. Deterministic for a given seed.

    python -m grounding.train.shapes --out data/shapes/train --num-images 2000 --seed 0
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import supervision as sv
from PIL import Image, ImageDraw, ImageFilter

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 35),
    "purple": (135, 55, 185),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")


def category_names() -> list[str]:
    """All "colour shape" phrases, in category-id order (id = index + 1)."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


@dataclass
class ShapesConfig:
    """Scene layout. Sizes are fractions of the image's shorter side (the radius of the shape's circumcircle)."""

    image_size: tuple[int, int] = (384, 384)  # (width, height)
    min_objects: int = 1
    max_objects: int = 6
    min_radius: float = 0.06
    max_radius: float = 0.2
    min_visible_fraction: float = 0.6  # an object may be covered by later ones, but not beyond this
    max_absent_phrases: int = 3  # absent phrases added to each image's caption
    colour_jitter: int = 18
    shade: float = 0.0  # up to this fraction of white (pastel) or black (darker) mixed into an object's colour
    log_radius: bool = False  # radii uniform in log scale (as many small as large objects over a wide range)
    min_pixels: int = 64  # an object smaller than this is not drawn


@dataclass
class ShapeInstance:
    category: str
    mask: np.ndarray = field(repr=False)  # [H, W] bool, visible pixels only


def _shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners, radii = 4, [radius]
    elif shape == "triangle":
        corners, radii = 3, [radius]
    else:  # star
        corners, radii = 10, [radius, radius * 0.45]
    points = []
    for k in range(corners):
        r = radii[k % len(radii)]
        theta = angle + 2 * math.pi * k / corners
        points.append((cx + r * math.cos(theta), cy + r * math.sin(theta)))
    return points


def shape_mask(shape: str, size: tuple[int, int], cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    if shape in ("circle", "ring"):
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
        if shape == "ring":
            inner = radius * 0.55
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, radius, angle), fill=255)
    return np.asarray(canvas) > 127


def textured_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A muted textured background [H, W, 3] uint8: noise plus stripes, checks, a gradient or soft blobs."""
    width, height = size
    base = rng.uniform(70, 190, size=3)
    base = base.mean() + (base - base.mean()) * 0.35  # low saturation so object colours stay distinct
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:
        period = rng.uniform(8, 40)
        theta = rng.uniform(0, math.pi)
        pattern = np.sin((xs * math.cos(theta) + ys * math.sin(theta)) * 2 * math.pi / period)
    elif kind == 1:
        cell = int(rng.integers(8, 48))
        pattern = (((xs // cell) + (ys // cell)) % 2) * 2 - 1
    elif kind == 2:
        theta = rng.uniform(0, 2 * math.pi)
        pattern = (xs * math.cos(theta) + ys * math.sin(theta)) / max(width, height) * 2 - 1
    else:
        pattern = rng.normal(size=(height // 16 + 1, width // 16 + 1))
        pattern = np.asarray(
            Image.fromarray(((pattern - pattern.min()) / np.ptp(pattern) * 255).astype(np.uint8)).resize(
                size, Image.BICUBIC
            ),
            dtype=np.float32,
        ) / 127.5 - 1
    amplitude = rng.uniform(10, 35)
    noise = rng.normal(scale=rng.uniform(3, 12), size=(height, width, 1))
    image = base[None, None, :] + amplitude * pattern[..., None] + noise
    return np.clip(image, 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, config: ShapesConfig) -> tuple[Image.Image, list[ShapeInstance]]:
    """One scene: an RGB image and its objects (visible masks), drawn back to front."""
    width, height = config.image_size
    image = textured_background(rng, config.image_size).astype(np.float32)
    short_side = min(width, height)
    names = category_names()
    full_masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    categories: list[str] = []
    target_count = int(rng.integers(config.min_objects, config.max_objects + 1))
    for _ in range(target_count * 20):
        if len(full_masks) == target_count:
            break
        if config.log_radius:
            radius = math.exp(rng.uniform(math.log(config.min_radius), math.log(config.max_radius))) * short_side
        else:
            radius = rng.uniform(config.min_radius, config.max_radius) * short_side
        cx, cy = rng.uniform(radius * 0.7, width - radius * 0.7), rng.uniform(radius * 0.7, height - radius * 0.7)
        category = names[int(rng.integers(len(names)))]
        mask = shape_mask(category.split()[1], config.image_size, cx, cy, radius, rng.uniform(0, 2 * math.pi))
        if mask.sum() < config.min_pixels:
            continue
        candidate_visible = [v & ~mask for v in visible]
        if any(c.sum() < config.min_visible_fraction * f.sum() for c, f in zip(candidate_visible, full_masks)):
            continue
        visible = candidate_visible + [mask]
        full_masks.append(mask)
        categories.append(category)
        colour = np.array(COLOURS[category.split()[0]], dtype=np.float32)
        colour = colour + rng.integers(-config.colour_jitter, config.colour_jitter + 1, size=3)
        if config.shade > 0:  # a shade of the same colour: towards white or towards black
            towards = 255.0 if rng.random() < 0.5 else 0.0
            colour = colour + (towards - colour) * rng.uniform(0, config.shade)
        shading = rng.normal(scale=4.0, size=(height, width, 1))
        image = np.where(mask[..., None], np.clip(colour[None, None, :] + shading, 0, 255), image)
    rendered = Image.fromarray(image.astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return rendered, [ShapeInstance(c, v) for c, v in zip(categories, visible)]


def scene_caption(rng: np.random.Generator, present: list[str], max_absent: int) -> str:
    """Caption of the scene's categories plus up to `max_absent` absent ones, shuffled: "red circle . blue star ."."""
    absent = [name for name in category_names() if name not in present]
    chosen = list(dict.fromkeys(present)) + list(rng.choice(absent, size=int(rng.integers(0, max_absent + 1)), replace=False))
    rng.shuffle(chosen)
    return " . ".join(chosen) + " ."


def _render_one(index: int, out_dir: Path, seed: int, layouts: tuple[ShapesConfig, ...]) -> tuple[dict, list[dict]]:
    """Scene `index` of `seed` (in layout `index` mod their number): writes its PNG, returns its COCO image entry and
    annotations (without ids)."""
    rng = np.random.default_rng([seed, index])
    config = layouts[index % len(layouts)]
    image, instances = render_scene(rng, config)
    file_name = f"{index:06d}.png"
    image.save(out_dir / "images" / file_name, compress_level=1)  # fast to write; pixels are what count
    width, height = image.size
    names = category_names()
    image_entry = {
        "id": index + 1,
        "file_name": file_name,
        "width": width,
        "height": height,
        "caption": scene_caption(rng, [i.category for i in instances], config.max_absent_phrases),
    }
    annotations = []
    for instance in instances:
        ys, xs = np.nonzero(instance.mask)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        annotations.append(
            {
                "image_id": index + 1,
                "category_id": names.index(instance.category) + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": int(instance.mask.sum()),
                "segmentation": {"size": [height, width], "counts": [int(c) for c in sv.mask_to_rle(instance.mask)]},
                "iscrowd": 0,
            }
        )
    return image_entry, annotations


def generate_dataset(
    out_dir: str | Path, num_images: int, seed: int = 0, config: ShapesConfig | Sequence[ShapesConfig] | None = None,
    workers: int = 1,
) -> Path:
    """Write `num_images` scenes to out_dir/images/*.png and COCO JSON to out_dir/annotations.json (returned).

    Image i depends only on (seed, i), so a larger set extends a smaller one with the same seed, and the
    result does not depend on `workers` (processes rendering in parallel). Given several configs (layouts),
    scene i is drawn in layout i mod their number.
    Annotations carry "bbox" (xywh px of the visible mask), "area", "segmentation" (uncompressed COCO RLE) and
    "iscrowd"; images carry a "caption" with present and absent phrases.
    """
    layouts = tuple(config) if isinstance(config, Sequence) else (config or ShapesConfig(),)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    names = category_names()
    coco: dict = {
        "info": {"description": "grounding shapes", "seed": seed, "config": [asdict(c) for c in layouts] if len(layouts) > 1 else asdict(layouts[0])},
        "categories": [{"id": i + 1, "name": name, "supercategory": name.split()[1]} for i, name in enumerate(names)],
        "images": [],
        "annotations": [],
    }
    render = partial(_render_one, out_dir=out_dir, seed=seed, layouts=layouts)
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            scenes = pool.map(render, range(num_images), chunksize=16)
    else:
        scenes = [render(index) for index in range(num_images)]
    for image_entry, entries in scenes:
        coco["images"].append(image_entry)
        for annotation in entries:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, **annotation})
    annotation_path = out_dir / "annotations.json"
    annotation_path.write_text(json.dumps(coco))
    return annotation_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the procedural shapes dataset (COCO JSON + PNG).")
    parser.add_argument("--out", required=True, help="output folder (images/ and annotations.json)")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(384, 384), metavar=("W", "H"))
    parser.add_argument("--workers", type=int, default=1, help="processes rendering scenes in parallel")
    args = parser.parse_args(argv)
    path = generate_dataset(args.out, args.num_images, args.seed, ShapesConfig(image_size=tuple(args.size)), args.workers)
    print(path)


if __name__ == "__main__":
    main()
