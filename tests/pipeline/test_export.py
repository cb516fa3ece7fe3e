"""Export: RLE round trip, COCO fields, PNG masks, supervision Detections, zip bundle."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from grounding.drawing import annotate
from grounding.export import (
    class_names,
    coco_dataset,
    coco_rle_to_mask,
    mask_to_coco_rle,
    to_coco,
    to_supervision,
    write_bundle,
    write_mask_pngs,
)
from grounding.pipeline import GroundedResult


def _ellipse(height: int, width: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


@pytest.fixture
def result() -> GroundedResult:
    h, w = 60, 90
    masks = np.stack([_ellipse(h, w, 20, 20, 10, 15), _ellipse(h, w, 40, 60, 15, 20), _ellipse(h, w, 30, 45, 5, 5)])
    return GroundedResult(
        boxes=np.array([[5, 10, 35, 30], [40, 25, 80, 55], [40, 25, 50, 35]], np.float32),
        scores=np.array([0.9, 0.8, 0.4], np.float32),
        phrases=["dog", "cat", "black cat"],
        masks=masks,
        image_size=(w, h),
        original_size=(w, h),
        prompt_phrases=["cat", "dog"],
    )


def test_rle_decodes_back_to_the_mask(result):
    for mask in result.masks:
        rle = mask_to_coco_rle(mask)
        assert rle["size"] == [60, 90] and isinstance(rle["counts"], str)
        np.testing.assert_array_equal(coco_rle_to_mask(rle), mask)
    # Column-major like pycocotools: a mask with only pixel (row 1, col 0) set starts with 1 background pixel.
    single = np.zeros((3, 4), bool)
    single[1, 0] = True
    assert [int(c) for c in sv.mask_to_rle(single)] == [1, 1, 10]
    np.testing.assert_array_equal(coco_rle_to_mask(mask_to_coco_rle(single)), single)


def test_coco_json(result):
    coco = json.loads(json.dumps(to_coco(result, "photo.jpg")))  # JSON-serialisable
    assert coco["images"] == [{"id": 1, "file_name": "photo.jpg", "width": 90, "height": 60}]
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "black cat"]  # prompt order, then extras
    first = coco["annotations"][0]
    assert first["bbox"] == [5.0, 10.0, 30.0, 20.0]  # xywh
    assert first["category_id"] == 2 and first["score"] == pytest.approx(0.9)
    assert first["area"] == int(result.masks[0].sum())
    for annotation, mask in zip(coco["annotations"], result.masks):
        np.testing.assert_array_equal(coco_rle_to_mask(annotation["segmentation"]), mask)


def test_coco_dataset_shares_categories_across_images(result):
    other = GroundedResult(
        boxes=np.array([[1, 1, 9, 9]], np.float32), scores=np.array([0.5], np.float32), phrases=["bird"],
        masks=None, image_size=(10, 10), prompt_phrases=["bird"],
    )
    coco = coco_dataset([("a.png", result), ("b.png", other)])
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "bird", "black cat"]
    assert [a["image_id"] for a in coco["annotations"]] == [1, 1, 1, 2]
    assert "segmentation" not in coco["annotations"][3]
    assert len({a["id"] for a in coco["annotations"]}) == 4


def test_supervision_detections_have_stable_class_ids(result):
    detections = to_supervision(result)
    assert detections.xyxy.shape == (3, 4) and detections.mask.shape == (3, 60, 90)
    assert detections.class_id.tolist() == [1, 0, 2]  # dog, cat, black cat by prompt order
    assert detections.data["class_name"].tolist() == ["dog", "cat", "black cat"]
    assert class_names([result]) == ["cat", "dog", "black cat"]
    # The same phrase keeps its id when other detections disappear (a slider move).
    fewer = GroundedResult(
        boxes=result.boxes[1:2], scores=result.scores[1:2], phrases=["cat"], masks=result.masks[1:2],
        image_size=result.image_size, prompt_phrases=result.prompt_phrases,
    )
    assert to_supervision(fewer).class_id.tolist() == [0]


def test_mask_pngs(result, tmp_path):
    paths = write_mask_pngs(result, tmp_path / "masks")
    assert [p.name for p in paths] == ["000_dog.png", "001_cat.png", "002_black_cat.png"]
    for path, mask in zip(paths, result.masks):
        png = np.asarray(Image.open(path))
        assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
        np.testing.assert_array_equal(png == 255, mask)


def test_bundle_and_annotate(result, tmp_path):
    image = np.full((60, 90, 3), 100, np.uint8)
    drawn = annotate(image, result)
    assert drawn.shape == image.shape and (drawn != image).any() and (image == 100).all()
    path = write_bundle(result, tmp_path / "out.zip", "photo.jpg", annotated=drawn)
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        assert {"coco.json", "detections.json", "annotated.png", "masks/000_dog.png"} <= names
        coco = json.loads(archive.read("coco.json"))
        np.testing.assert_array_equal(coco_rle_to_mask(coco["annotations"][1]["segmentation"]), result.masks[1])
        assert np.asarray(Image.open(io.BytesIO(archive.read("annotated.png")))).shape == (60, 90, 3)
        assert json.loads(archive.read("meta.json"))["image"]["original_size"] == [90, 60]


def test_bundle_is_in_the_original_frame(result, tmp_path):
    """A result worked on at 90x60 for a 270x180 original: boxes x3, masks resized so that each original pixel
    takes the working mask's value at its centre."""
    from dataclasses import replace

    scaled = replace(result, original_size=(270, 180))
    path = write_bundle(scaled, tmp_path / "big.zip", "photo.jpg", meta={"prompt": "cat . dog"})
    with zipfile.ZipFile(path) as archive:
        coco = json.loads(archive.read("coco.json"))
        meta = json.loads(archive.read("meta.json"))
        first = np.asarray(Image.open(io.BytesIO(archive.read("masks/000_dog.png")))) == 255
    assert coco["images"][0] == {"id": 1, "file_name": "photo.jpg", "width": 270, "height": 180}
    assert coco["annotations"][0]["bbox"] == [15.0, 30.0, 90.0, 60.0]  # [5, 10, 35, 30] x 3
    np.testing.assert_array_equal(first, result.masks[0].repeat(3, axis=0).repeat(3, axis=1))
    assert coco["annotations"][0]["area"] == 9 * int(result.masks[0].sum())
    np.testing.assert_array_equal(coco_rle_to_mask(coco["annotations"][0]["segmentation"]), first)
    assert meta["prompt"] == "cat . dog" and meta["image"]["working_size"] == [90, 60]
