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
