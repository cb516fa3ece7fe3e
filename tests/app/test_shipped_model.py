"""The "shapes" demo models shipped in assets/shapes/, for real: on freshly generated scenes (a seed that neither
training nor the README's held-out set used) "red circle" finds the red circle, box and mask, through the
pipeline and through `python app.py` started offline with no other weights; a phrase absent from the scene
finds nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from grounding.shipped import (
    DETECTOR_FILE, MAX_FILE_BYTES, SAM_FILE, load_shapes_pipeline, shapes_available, shapes_dir,
)
from grounding.train.sam_trainer import mask_iou as masks_iou
from grounding.train.shapes import COLOURS, SHAPES, ShapeInstance, ShapesConfig, category_names, render_scene

TEST_SEED = 2000  # training used seed 0, the held-out scenes seed 1000
SCENE_SIZE = (256, 256)  # the size the demo models were trained on
MIN_IOU = 0.7


def scenes_with(category: str, count: int, seed: int = TEST_SEED) -> list[tuple[Image.Image, ShapeInstance, set[str]]]:
    """The first `count` scenes of `seed` holding exactly one `category` object: (image, that object, present names)."""
    scenes = []
    for index in range(500):
        image, instances = render_scene(np.random.default_rng([seed, index]), ShapesConfig(image_size=SCENE_SIZE))
        found = [instance for instance in instances if instance.category == category]
        if len(found) == 1:
            scenes.append((image, found[0], {instance.category for instance in instances}))
            if len(scenes) == count:
                return scenes
    raise AssertionError(f"fewer than {count} scenes of seed {seed} hold one {category}")


def unrelated_absent_phrase(present: set[str]) -> str | None:
    """The first category sharing neither colour nor shape with anything present (None if every colour or
    every shape is present)."""
    words = {word for name in present for word in name.split()}
    return next((name for name in category_names() if not words & set(name.split())), None)


def box_of(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Two xyxy boxes [4] -> their IoU."""
    return float(torchvision.ops.box_iou(torch.as_tensor(a, dtype=torch.float32)[None], torch.as_tensor(b, dtype=torch.float32)[None]))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Two boolean masks [H, W] -> their IoU, as the SAM evaluation measures it."""
    return float(masks_iou(torch.from_numpy(a)[None], torch.from_numpy(b)[None]))


@pytest.fixture(scope="module")
def red_circle_scenes() -> list[tuple[Image.Image, ShapeInstance, set[str]]]:
    return scenes_with("red circle", 5)


@pytest.fixture(scope="module")
def pipeline():
    assert shapes_available(), f"the shipped demo models are missing from {shapes_dir()}"
    return load_shapes_pipeline("cpu")


def test_shipped_files_are_small():
    """Both together within the issue's 25 MB; each within what a Hugging Face Space takes without Git LFS."""
    sizes = {path.name: path.stat().st_size for path in shapes_dir().glob("*.pth")}
    assert set(sizes) == {DETECTOR_FILE, SAM_FILE} and sum(sizes.values()) <= 25 * 2**20
    assert max(sizes.values()) <= MAX_FILE_BYTES


def test_red_circle_is_found_boxed_and_cut_out(pipeline, red_circle_scenes):
    """On the first 5 scenes with a red circle, the best "red circle" box and its mask match it in at least 4
    (the shipped model scored 19 of the first 20)."""
    found = []
    for image, circle, _ in red_circle_scenes:
        result = pipeline.segment(np.asarray(image), "red circle")
        assert set(result.phrases) <= {"red circle"}
        if len(result):
            best = int(np.argmax(result.scores))
            ious = box_iou(result.boxes[best], box_of(circle.mask)), mask_iou(result.masks[best], circle.mask)
            found.append(min(ious) >= MIN_IOU)
            assert result.masks.shape == (len(result), *SCENE_SIZE[::-1])
    assert sum(found) >= 4, found


def test_absent_phrases_find_nothing(pipeline, red_circle_scenes):
    """A phrase sharing neither colour nor shape with anything in the scene gives no box (5 scenes; the shipped
    model gave none in 19 of the first 19)."""
    checked = 0
    for image, _, present in red_circle_scenes:
        absent = unrelated_absent_phrase(present)
        if absent is not None:
            assert absent not in present and absent.split()[0] in COLOURS and absent.split()[1] in SHAPES
            assert len(pipeline.detect(np.asarray(image), absent)) == 0, (absent, present)
            checked += 1
    assert checked >= 3


# Prompts as people write them (grounding/train/prompt_eval.py), on 30 fresh scenes a family: the bars less
# a margin for the smaller sample (the README's table has 100 scenes a family). The detector shipped before it read
# "a X" at 0.32, plurals at 0.47, tiny and huge objects at 0.26 and 0.18, and unrelated words boxed 19% of scenes.
WORDING_FLOOR = {
    "article (a X)": ("recall", 0.75), "the X .": ("recall", 0.75), "plural (Xs)": ("recall", 0.75),
    "adjectives (small bright X)": ("recall", 0.6), "sentence (find the X)": ("recall", 0.6),
    "radius 0.02-0.05": ("recall", 0.55), "radius 0.25-0.4": ("recall", 0.55),
    "shades (pastel / darker)": ("recall", 0.75), "unrelated words (no box)": ("no_box", 0.9),
    "absent phrases (no box)": ("no_box", 0.8),
}  # fmt: skip


@pytest.mark.parametrize("family", list(WORDING_FLOOR))
def test_shipped_detector_reads_prompts_as_people_write_them(pipeline, family):
    from grounding.train.prompt_eval import evaluate_family

    measure, floor = WORDING_FLOOR[family]
    result = evaluate_family(pipeline, family, scenes=30, seed=TEST_SEED + 2)
    assert getattr(result, measure) >= floor, result


def scene_with_a_phrase_found_twice(pipeline) -> tuple[np.ndarray, str, str]:
    """The first fresh scene where, without same-phrase NMS, one phrase boxes one object twice (IoU >= 0.9):
    (pixels, its prompt of every present phrase plus one absent phrase, the phrase found twice)."""
    for index in range(300):
        image, instances = render_scene(np.random.default_rng([TEST_SEED + 1, index]), ShapesConfig(image_size=SCENE_SIZE))
        present = sorted({instance.category for instance in instances})
        absent = unrelated_absent_phrase(set(present))
        if absent is None:
            continue
        pixels, prompt = np.asarray(image), " . ".join([*present, absent])
        result = pipeline.detect(pixels, prompt, same_phrase_nms_iou=None)
        for phrase in present:
            boxes = torch.as_tensor(np.asarray(result.boxes)[[p == phrase for p in result.phrases]])
            if len(boxes) > 1 and (torchvision.ops.box_iou(boxes, boxes).fill_diagonal_(0) >= 0.9).any():
                return pixels, prompt, phrase
    raise AssertionError("no scene with one object boxed twice under one phrase in 300")


def test_one_object_found_twice_under_one_phrase_is_one_box(pipeline):
    """Two queries may land on one object with one phrase (the shapes example once gave two "yellow square" boxes,
    0.70 and 0.46, at IoU 0.98): the default same-phrase NMS keeps the better one."""
    pixels, prompt, twice = scene_with_a_phrase_found_twice(pipeline)
    both = pipeline.detect(pixels, prompt, same_phrase_nms_iou=None)
    result = pipeline.detect(pixels, prompt)
    assert result.phrases.count(twice) == both.phrases.count(twice) - 1
    assert result.scores[result.phrases.index(twice)] == max(s for p, s in zip(both.phrases, both.scores) if p == twice)
    # The absent phrase gets no box; its best score says how low the box threshold would have to go.
    absent = prompt.rsplit(" . ", 1)[1]
    assert absent not in result.phrases and 0 < result.phrase_scores[absent] < 0.35
    for phrase in set(result.phrases):
        assert result.phrase_scores[phrase] == pytest.approx(max(s for p, s in zip(result.phrases, result.scores) if p == phrase))


def test_offline_studio_falls_back_to_the_shipped_models(demo_server, red_circle_scenes, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(demo_server.url, verbose=False)
    assert "**Demo mode**" in client.predict(api_name="/status")
    image, circle, present = red_circle_scenes[0]
    path = tmp_path / "scene.png"
    image.save(path)
    *_, summary, _ = client.predict(handle_file(str(path)), "red circle", 0.35, 0.25, 1.0, True, api_name="/segment")
    found = [d for d in summary["detections"] if d["phrase"] == "red circle"]
    assert found, summary
    best = max(found, key=lambda d: d["score"])
    assert box_iou(np.array(best["box_xyxy"], dtype=np.float32), box_of(circle.mask)) >= MIN_IOU
    assert abs(best["mask_area"] - int(circle.mask.sum())) <= 0.3 * circle.mask.sum()
    absent = unrelated_absent_phrase(present)
    assert absent is not None
    *_, summary, _ = client.predict(handle_file(str(path)), absent, 0.35, 0.25, 1.0, True, api_name="/segment")
    assert summary["detections"] == []
