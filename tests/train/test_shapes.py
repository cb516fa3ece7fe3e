"""The procedural shapes dataset: deterministic, boxes and masks agree, captions name present and absent shapes."""
import json

import numpy as np
import pytest
from PIL import Image

from grounding.train.data import decode_segmentation
from grounding.train.shapes import ShapesConfig, category_names, generate_dataset

SMALL = ShapesConfig(image_size=(128, 96))


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    generate_dataset(out, num_images=6, seed=3, config=SMALL)
    return out


def test_same_seed_same_data_and_prefix_stable(shapes_dir, tmp_path):
    generate_dataset(tmp_path, num_images=2, seed=3, config=SMALL)
    first = json.loads((shapes_dir / "annotations.json").read_text())
    second = json.loads((tmp_path / "annotations.json").read_text())
    assert second["images"] == first["images"][:2]
    assert second["annotations"] == [a for a in first["annotations"] if a["image_id"] <= 2]
    for name in ("000000.png", "000001.png"):
        assert np.array_equal(np.asarray(Image.open(shapes_dir / "images" / name)), np.asarray(Image.open(tmp_path / "images" / name)))


def test_other_seed_other_scenes(shapes_dir, tmp_path):
    generate_dataset(tmp_path, num_images=1, seed=4, config=SMALL)
    assert not np.array_equal(
        np.asarray(Image.open(shapes_dir / "images" / "000000.png")), np.asarray(Image.open(tmp_path / "images" / "000000.png"))
    )


def test_boxes_are_mask_extents_and_objects_have_the_named_colour(shapes_dir):
    coco = json.loads((shapes_dir / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == category_names()
    assert len(category_names()) == 30
    names = {c["id"]: c["name"] for c in coco["categories"]}
    reference = {"red": (215, 35, 35), "green": (35, 165, 60), "blue": (40, 80, 225)}
    checked = 0
    for annotation in coco["annotations"]:
        info = coco["images"][annotation["image_id"] - 1]
        mask = decode_segmentation(annotation["segmentation"], info["height"], info["width"])
        assert mask.shape == (96, 128) and mask.sum() == annotation["area"] > 0
        ys, xs = np.nonzero(mask)
        x, y, w, h = annotation["bbox"]
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        colour = names[annotation["category_id"]].split()[0]
        if colour in reference:
            pixels = np.asarray(Image.open(shapes_dir / "images" / info["file_name"]))[mask]
            assert np.abs(np.median(pixels, axis=0) - reference[colour]).max() < 40
            checked += 1
    assert checked > 0


def test_caption_holds_every_present_phrase(shapes_dir):
    coco = json.loads((shapes_dir / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for info in coco["images"]:
        phrases = info["caption"].removesuffix(" .").split(" . ")
        present = {names[a["category_id"]] for a in coco["annotations"] if a["image_id"] == info["id"]}
        assert present and present <= set(phrases)
        assert len(phrases) - len(present) <= SMALL.max_absent_phrases


def test_wide_scenes_span_tiny_to_huge_objects_and_shades_stay_in_their_colour():
    """The natural-prompt training scenes: radii from 0.02 to 0.4 of the image (log-uniform), up to 12 objects,
    colours mixed towards white or black but still nearest their own named colour."""
    from grounding.train.shapes import COLOURS, render_scene

    config = ShapesConfig(image_size=(256, 256), min_radius=0.02, max_radius=0.4, max_objects=12, shade=0.45,
                          log_radius=True, min_pixels=16)
    extents, counts, nearest = [], [], []
    palette = np.array(list(COLOURS.values()), np.float32)
    for index in range(40):
        image, instances = render_scene(np.random.default_rng([9, index]), config)
        pixels = np.asarray(image, np.float32)
        counts.append(len(instances))
        for instance in instances:
            ys, xs = np.nonzero(instance.mask)
            extents.append(max(np.ptp(xs), np.ptp(ys)) + 1)
            colour = np.median(pixels[instance.mask], axis=0)
            direction = colour - colour.mean()  # hue, not lightness: a pastel or dark shade keeps its direction
            cosine = palette - palette.mean(1, keepdims=True)
            cosine = cosine @ direction / (np.linalg.norm(cosine, axis=1) * np.linalg.norm(direction) + 1e-6)
            nearest.append(list(COLOURS)[int(cosine.argmax())] == instance.category.split()[0])
    assert min(extents) <= 16 and max(extents) >= 150  # tiny (radius ~0.02 of 256 px) and huge objects both occur
    assert max(counts) >= 10
    assert np.mean(nearest) >= 0.9


def test_two_layouts_alternate_scene_by_scene(shapes_dir, tmp_path):
    """Scene i of a two-layout set is scene i of the set drawn in layout i mod 2 alone: the even scenes here are
    the SMALL set's, the odd ones hold only the other layout's large objects."""
    large = ShapesConfig(image_size=(128, 96), min_radius=0.3, max_radius=0.4, max_objects=2)
    coco = json.loads(generate_dataset(tmp_path, num_images=6, seed=3, config=(SMALL, large)).read_text())
    plain = json.loads((shapes_dir / "annotations.json").read_text())
    assert [c["max_radius"] for c in coco["info"]["config"]] == [0.2, 0.4]
    for index in range(6):
        boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == index + 1]
        if index % 2 == 0:
            assert boxes == [a["bbox"] for a in plain["annotations"] if a["image_id"] == index + 1]
            assert np.array_equal(np.asarray(Image.open(tmp_path / "images" / f"{index:06d}.png")),
                                  np.asarray(Image.open(shapes_dir / "images" / f"{index:06d}.png")))
        else:
            assert 1 <= len(boxes) <= 2 and all(max(w, h) >= 0.4 * 96 for _, _, w, h in boxes)
