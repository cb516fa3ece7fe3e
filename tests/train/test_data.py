"""COCO grounding dataset: sampled captions, positive maps on the phrase's tokens, normalised boxes, batching."""
import json

import pytest
import torch
from PIL import Image

from grounding.text import load_tokenizer
from grounding.train.data import CaptionSampling, CocoGroundingDataset, ImageSizes, collate
from grounding.train.shapes import ShapesConfig, generate_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_data")
    annotation_file = generate_dataset(out, num_images=4, seed=1, config=ShapesConfig(image_size=(160, 120)))
    return annotation_file, out / "images"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_positive_map_covers_exactly_the_category_tokens(shapes, tokenizer):
    dataset = CocoGroundingDataset(*shapes, tokenizer, sizes=ImageSizes((120,), 400))
    coco = json.loads(shapes[0].read_text())
    for index in range(len(dataset)):
        sample = dataset[index]
        present = {dataset.categories[a["category_id"]] for a in coco["annotations"] if a["image_id"] == sample.image_id}
        assert present <= set(sample.phrases)
        assert sample.input_ids == tokenizer(sample.caption)["input_ids"]
        for row, label in enumerate(sample.target["labels"].tolist()):
            tokens = [sample.input_ids[i] for i in sample.target["positive_map"][row].nonzero().flatten().tolist()]
            assert tokenizer.decode(tokens) == dataset.categories[label]
        assert sample.target["positive_map"].shape[1] == 256


def test_boxes_normalised_to_the_image(shapes, tokenizer):
    dataset = CocoGroundingDataset(*shapes, tokenizer, sizes=ImageSizes((240,), 400), train=False)
    coco = json.loads(shapes[0].read_text())
    sample = dataset[0]
    assert sample.pixel_values.shape == (3, 240, 320)
    first = sorted((a for a in coco["annotations"] if a["image_id"] == sample.image_id), key=lambda a: a["category_id"])
    expected = torch.tensor([[(x + w / 2) / 160, (y + h / 2) / 120, w / 160, h / 120] for x, y, w, h in (a["bbox"] for a in first)])
    order = sample.target["labels"].argsort(stable=True)
    assert torch.allclose(sample.target["boxes"][order], expected, atol=1e-6)


def test_captions_resampled_per_epoch_with_absent_negatives(shapes, tokenizer):
    dataset = CocoGroundingDataset(*shapes, tokenizer, caption_sampling=CaptionSampling(max_absent=5), sizes=ImageSizes((120,), 400))
    captions = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        captions.append(dataset[0].caption)
    dataset.set_epoch(0)
    assert dataset[0].caption == captions[0]  # deterministic per (seed, epoch, index)
    assert len(set(captions)) > 1
    present = set(dataset[0].target["labels"].tolist())
    assert any(len(c.split(" . ")) > len(present) for c in captions)  # some captions carry absent phrases


def test_unnamed_present_objects_are_not_targets(shapes, tokenizer):
    sampling = CaptionSampling(max_absent=2, keep_present=0.5)
    dataset = CocoGroundingDataset(*shapes, tokenizer, caption_sampling=sampling, sizes=ImageSizes((120,), 400))
    coco = json.loads(shapes[0].read_text())
    dropped = 0
    for epoch in range(8):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            present = {a["category_id"] for a in coco["annotations"] if a["image_id"] == sample.image_id}
            named = {c for c in present if dataset.categories[c] in sample.phrases}
            assert sample.phrases  # never an empty caption
            assert set(sample.target["labels"].tolist()) == named  # exactly the named objects are targets
            assert sum(a["category_id"] in named for a in coco["annotations"] if a["image_id"] == sample.image_id) == len(sample.target["labels"])
            dropped += len(present - named)
    assert dropped > 0


def test_related_negatives_share_a_word_with_a_present_phrase(shapes, tokenizer):
    coco = json.loads(shapes[0].read_text())

    def related_share(related_absent: float) -> float:
        sampling = CaptionSampling(max_absent=3, related_absent=related_absent)
        dataset = CocoGroundingDataset(*shapes, tokenizer, caption_sampling=sampling, sizes=ImageSizes((120,), 400))
        related = total = 0
        for epoch in range(10):
            dataset.set_epoch(epoch)
            for index in range(len(dataset)):
                sample = dataset[index]
                present = {dataset.categories[a["category_id"]] for a in coco["annotations"] if a["image_id"] == sample.image_id}
                words = {w for phrase in present for w in phrase.split()}
                absent = [p for p in sample.phrases if p not in present]
                assert len(set(absent)) == len(absent)  # negatives are distinct
                related += sum(bool(words & set(p.split())) for p in absent)
                total += len(absent)
        return related / total

    always, never = related_share(1.0), related_share(0.0)
    assert always == 1.0  # each image has fewer present objects than phrases sharing their words
    assert never < 0.8  # uniform negatives: about 9 in 29 share a colour or shape with one object


def test_word_captions_target_every_object_holding_a_named_word(shapes, tokenizer):
    sampling = CaptionSampling(max_absent=3, word_phrases=1.0, keep_present=0.6)
    dataset = CocoGroundingDataset(*shapes, tokenizer, caption_sampling=sampling, sizes=ImageSizes((120,), 400))
    coco = json.loads(shapes[0].read_text())
    all_words = {w for name in dataset.categories.values() for w in name.split()}
    shared = 0
    for epoch in range(6):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            assert sample.phrases and all(len(p.split()) == 1 and p in all_words for p in sample.phrases)
            objects = [a for a in coco["annotations"] if a["image_id"] == sample.image_id]
            expected = [a for a in objects if set(dataset.categories[a["category_id"]].split()) & set(sample.phrases)]
            assert sorted(sample.target["labels"].tolist()) == sorted(a["category_id"] for a in expected)
            for row, label in enumerate(sample.target["labels"].tolist()):
                tokens = [sample.input_ids[i] for i in sample.target["positive_map"][row].nonzero().flatten().tolist()]
                named = [w for w in dataset.categories[label].split() if w in sample.phrases]
                assert sorted(tokenizer.decode([t]) for t in tokens) == sorted(named)
                shared += len(named) == 2
    assert shared > 0  # an object named by both of its words is a target of both


def test_masks_and_collate(shapes, tokenizer):
    dataset = CocoGroundingDataset(*shapes, tokenizer, sizes=ImageSizes((60, 120), 400), with_masks=True)
    samples = [dataset[i] for i in range(3)]
    assert all(s.target["masks"].shape[1:] == (120, 160) for s in samples)
    batch = collate(samples)
    height = max(s.pixel_values.shape[1] for s in samples)
    assert batch.pixel_values.shape[0] == 3 and batch.pixel_values.shape[2] == height
    for i, sample in enumerate(samples):
        assert batch.pixel_mask[i].sum() == sample.pixel_values.shape[1] * sample.pixel_values.shape[2]
        assert batch.attention_mask[i].sum() == len(sample.input_ids)
        assert batch.input_ids[i, : len(sample.input_ids)].tolist() == sample.input_ids


def test_category_names_become_the_phrases_the_tokenizer_sees(tmp_path, tokenizer):
    coco = {
        "categories": [{"id": 1, "name": "Traffic_Light"}, {"id": 2, "name": "t.v."}],
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [4, 4, 8, 8], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 5], "iscrowd": 0},  # empty box: ignored
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    dataset = CocoGroundingDataset(tmp_path / "ann.json", tmp_path, tokenizer, sizes=ImageSizes((32,), 32), train=False)
    assert dataset.categories == {1: "traffic light", 2: "t v"}
    sample = dataset[0]
    assert sample.caption == "t v ." and sample.target["labels"].tolist() == [2]
    assert sample.target["positive_map"][0].nonzero().flatten().tolist() == [1, 2]


def test_natural_captions_target_the_colour_and_shape_words(shapes, tokenizer):
    """Captions written as people write ("a red circle", "find the blue stars!", unrelated "dog" negatives): each
    object's positive tokens are exactly its colour and shape words (plural where written), never the article,
    adjective, verb or punctuation around them."""
    sampling = CaptionSampling(natural=1.0, max_unrelated=3, max_absent=3)
    dataset = CocoGroundingDataset(*shapes, tokenizer, sizes=ImageSizes((120,), 400), caption_sampling=sampling)
    seen_extra_words = False
    for epoch in range(6):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            seen_extra_words |= any(len(phrase.split()) > 2 for phrase in sample.phrases)
            assert len(sample.target["labels"]) > 0
            for row, label in enumerate(sample.target["labels"].tolist()):
                tokens = [sample.input_ids[i] for i in sample.target["positive_map"][row].nonzero().flatten().tolist()]
                colour, shape = dataset.categories[label].split()
                assert tokenizer.decode(tokens) in (f"{colour} {shape}", f"{colour} {shape}s")
    assert seen_extra_words
