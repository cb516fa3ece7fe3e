"""SAM box-prompt training: the data frame, the losses on known cases, the click prompts, the loss falling, a
decoder-only fine-tune, and the result loading through the studio's SAM path."""
import numpy as np
import pytest
import torch
from PIL import Image

from grounding.segmenters.sam import SAM_VARIANTS, SamSegmenter, build_sam
from grounding.train.sam_trainer import (
    SAM_FINAL_WEIGHTS,
    SAM_LAST_CHECKPOINT,
    SamBoxDataset,
    SamSample,
    SamTrainConfig,
    SamTrainer,
    click_prompts,
    dice_loss,
    evaluate_sam,
    evaluate_sam_clicks,
    jitter_boxes,
    mask_iou,
)
from grounding.train.shapes import ShapesConfig, generate_dataset

SIZE = 96


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("sam_shapes")
    annotation_file = generate_dataset(out, num_images=3, seed=5, config=ShapesConfig(image_size=(SIZE, SIZE)))
    return SamBoxDataset(annotation_file, out / "images", SAM_VARIANTS["tiny"].img_size)


def test_dice_and_iou_on_known_masks():
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1  # 8 of 16 pixels
    perfect = torch.where(target > 0, 20.0, -20.0)
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(-perfect, target).item() == pytest.approx(1 - 1 / 17, abs=1e-4)  # the complement: 1 - 1/(8+8+1)
    half = torch.zeros(1, 4, 4, dtype=torch.bool)
    half[0, :1] = True  # 4 of the 8 target pixels
    assert mask_iou(half, target.bool()).item() == pytest.approx(0.5)
    assert mask_iou(torch.zeros(1, 2, 2, dtype=torch.bool), torch.zeros(1, 2, 2, dtype=torch.bool)).item() == 1.0


def test_jitter_moves_boxes_within_the_image():
    boxes = torch.tensor([[10.0, 20.0, 60.0, 80.0]])
    generator = torch.Generator().manual_seed(0)
    still = jitter_boxes(boxes, SamTrainConfig(box_jitter=0.0), generator, (100, 90))
    assert torch.equal(still, boxes)
    moved = torch.cat([jitter_boxes(boxes, SamTrainConfig(max_jitter_px=5), generator, (100, 90)) for _ in range(50)])
    assert (moved != boxes).any(1).all()
    assert (moved - boxes).abs().max() <= 5 and moved.min() >= 0
    edge = torch.tensor([[0.0, 0.0, 100.0, 90.0]])  # a box filling a 100 x 90 image stays inside it
    wide = torch.cat([jitter_boxes(edge, SamTrainConfig(box_jitter=0.5), generator, (100, 90)) for _ in range(50)])
    assert wide[:, [0, 2]].max() <= 100 and wide[:, [1, 3]].max() <= 90 and wide.min() >= 0


def test_dataset_puts_boxes_and_masks_in_sam_input_frame(scenes):
    sample = scenes[0]
    scale = SAM_VARIANTS["tiny"].img_size / SIZE
    assert sample.image.shape == (3, 256, 256) and sample.image.dtype == torch.uint8
    assert sample.masks.shape == (len(sample.boxes), 256, 256)
    for box, mask in zip(sample.boxes, sample.masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        # The mask, resized with the image, spans the resized box (nearest resize: within one source pixel).
        assert abs(xs.min().item() - box[0].item()) <= scale + 1 and abs(xs.max().item() + 1 - box[2].item()) <= scale + 1
        assert abs(ys.min().item() - box[1].item()) <= scale + 1 and abs(ys.max().item() + 1 - box[3].item()) <= scale + 1


def test_a_batch_without_objects_is_skipped(scenes, tmp_path):
    empty = SamSample(scenes[0].image, torch.zeros(0, 4), torch.zeros(0, 256, 256, dtype=torch.bool))
    trainer = SamTrainer(build_sam(SAM_VARIANTS["tiny"]), scenes, tmp_path, SamTrainConfig(warmup_steps=1))
    before = {k: v.clone() for k, v in trainer.sam.state_dict().items()}
    assert trainer.train_step([empty, empty]) == {"focal": 0.0, "dice": 0.0, "iou": 0.0, "loss": 0.0}
    assert trainer.step == 1 and all(torch.equal(v, trainer.sam.state_dict()[k]) for k, v in before.items())


def test_loss_falls_and_weights_load_in_the_studio_path(scenes, tmp_path):
    torch.manual_seed(0)
    config = SamTrainConfig(epochs=100, batch_size=3, lr=5e-3, warmup_steps=1, box_jitter=0.0)
    trainer = SamTrainer(build_sam(SAM_VARIANTS["tiny"]), scenes, tmp_path, config)
    batch = [scenes[i] for i in range(3)]
    losses = [trainer.train_step(batch) for _ in range(80)]  # ~12 s on 2 cores
    assert sum(s["loss"] for s in losses[-3:]) < 0.6 * sum(s["loss"] for s in losses[:3])
    assert losses[-1]["dice"] < losses[0]["dice"]  # the focal term falls first, the masks follow slowly
    assert 0 <= evaluate_sam(trainer.sam, scenes) <= 1

    trainer.fit(progress=False, time_limit_s=0)  # stops after one step, writes the weights
    segmenter = SamSegmenter.from_pretrained("tiny", checkpoint=tmp_path / SAM_FINAL_WEIGHTS, device="cpu")
    image = scenes.images[0]
    rgb = np.asarray(Image.open(scenes.image_dir / image["file_name"]).convert("RGB"))
    boxes = (scenes[0].boxes.numpy() * SIZE / 256).round()
    masks = segmenter.decode_boxes(segmenter.encode_image(rgb), boxes)
    assert masks.masks.shape == (len(boxes), SIZE, SIZE)


def test_resume_continues_from_the_last_checkpoint(scenes, tmp_path):
    config = SamTrainConfig(epochs=2, batch_size=3, warmup_steps=1)
    first = SamTrainer(build_sam(SAM_VARIANTS["tiny"]), scenes, tmp_path, config)
    first.fit(progress=False, time_limit_s=0)  # one step, then the resumable checkpoint
    assert first.step == 1 and (tmp_path / SAM_LAST_CHECKPOINT).is_file()
    resumed = SamTrainer(build_sam(SAM_VARIANTS["tiny"]), scenes, tmp_path, config)
    resumed.resume(tmp_path / SAM_LAST_CHECKPOINT)
    assert resumed.step == 1
    assert all(torch.equal(v, first.sam.state_dict()[k]) for k, v in resumed.sam.state_dict().items())
    resumed.fit(progress=False)
    assert resumed.step == resumed.total_steps == 2


def two_objects() -> SamSample:
    """Two touching 20x20 squares in a 64x64 frame."""
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 10:30, 30:50] = True
    return SamSample(torch.zeros(3, 64, 64, dtype=torch.uint8), torch.tensor([[10.0, 10, 30, 30], [30.0, 10, 50, 30]]), masks)


@pytest.mark.parametrize("merged_fraction", [0.0, 1.0])
def test_click_prompts_put_each_click_where_its_label_says(merged_fraction):
    sample = two_objects()
    config = SamTrainConfig(merged_fraction=merged_fraction)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        boxes, points, labels, kept = click_prompts(sample, sample.boxes, [0, 1], 3, config, generator)
        assert boxes.shape == (2, 4) and points.shape == (2, 3, 2) and labels.shape == (2, 3) and kept == [0, 1]
        for box, object_points, object_labels, i in zip(boxes, points, labels, kept):
            for (x, y), label in zip(object_points.tolist(), object_labels.tolist()):
                inside = bool(sample.masks[i, int(y), int(x)])
                assert inside == (label == 1)  # a positive click on the object, a negative one off it
                assert box[0] <= x <= box[2] and box[1] <= y <= box[3]
            if merged_fraction:  # the box covers both, and its first click says "not the neighbour"
                assert box.tolist() == [10.0, 10.0, 50.0, 30.0] and object_labels[0] == 0
                x, y = object_points[0].tolist()
                assert sample.masks[1 - i, int(y), int(x)]


def test_clicked_training_and_a_decoder_only_fine_tune(scenes, tmp_path):
    torch.manual_seed(0)
    config = SamTrainConfig(batch_size=3, lr=5e-3, warmup_steps=1, point_fraction=1.0, train_image_encoder=False)
    trainer = SamTrainer(build_sam(SAM_VARIANTS["tiny"]), scenes, tmp_path, config)
    encoder = {k: v.clone() for k, v in trainer.sam.image_encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in trainer.sam.mask_decoder.state_dict().items()}
    batch = [scenes[i] for i in range(3)]
    losses = [trainer.train_step(batch)["loss"] for _ in range(25)]
    assert sum(losses[-3:]) < sum(losses[:3])
    assert all(torch.equal(v, trainer.sam.image_encoder.state_dict()[k]) for k, v in encoder.items())
    assert any(not torch.equal(v, trainer.sam.mask_decoder.state_dict()[k]) for k, v in decoder.items())
    clicks = evaluate_sam_clicks(trainer.sam, scenes)
    assert clicks["objects"] > 0 and 0 <= clicks["merged_box_iou"] <= 1 and 0 <= clicks["with_not_click_iou"] <= 1
