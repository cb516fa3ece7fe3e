"""Training loop on the tiny model: the loss falls, checkpoints load back, resume continues, eval scores AP."""
import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from grounding.checkpoint import load_model
from grounding.config import GroundingDINOConfig, tiny
from grounding.model import GroundingDINO
from grounding.pipeline import GroundedSAM
from grounding.text import load_tokenizer
from grounding.train.__main__ import main as train_main
from grounding.train.data import CocoGroundingDataset, ImageSizes, collate
from grounding.train.demo_model import DemoRecipe, run
from grounding.train.eval import evaluate
from grounding.train.eval import main as eval_main
from grounding.train.shapes import ShapesConfig, generate_dataset
from grounding.train.trainer import TrainConfig, Trainer, WarmupCosine, build_model

SIZE = 96


@pytest.fixture(autouse=True)
def one_thread():
    """Small models train several times faster on one thread when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_train")
    annotation_file = generate_dataset(out, num_images=4, seed=0, config=ShapesConfig(image_size=(SIZE, SIZE)))
    return annotation_file, out / "images"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_loss_decreases_over_30_steps(shapes, tokenizer, tmp_path):
    torch.manual_seed(0)
    dataset = CocoGroundingDataset(*shapes, tokenizer, sizes=ImageSizes((SIZE,), SIZE))
    trainer = Trainer(build_model("tiny"), dataset, tmp_path, TrainConfig(batch_size=2, epochs=15, warmup_steps=1))
    batch = collate([dataset[0], dataset[1]])
    losses = [trainer.train_step(batch) for _ in range(30)]
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in losses)
    first, last = losses[0], losses[-1]
    assert sum(s["loss"] for s in losses[-3:]) < 0.5 * sum(s["loss"] for s in losses[:3])
    assert last["loss_cls"] < first["loss_cls"] and last["loss_giou"] < first["loss_giou"]
    assert {"loss_cls_0", "loss_bbox_0", "loss_giou_0", "loss_cls_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(last)


def _train_args(shapes, out, epochs):
    return [
        "--data", str(shapes[0]), "--images", str(shapes[1]), "--init", "tiny", "--out", str(out),
        "--epochs", str(epochs), "--batch-size", "2", "--short-sides", str(SIZE), "--max-long-side", str(SIZE),
        "--warmup-steps", "1", "--checkpoint-every", "1", "--log-every", "1", "--device", "cpu", "--no-progress",
    ]  # fmt: skip


def test_cli_checkpoint_loads_back_and_resume_continues(shapes, tmp_path, capsys):
    train_main(_train_args(shapes, tmp_path, epochs=1))
    weights = torch.load(tmp_path / "model.pth", weights_only=True)
    assert set(weights) == {"model", "config"}
    assert GroundingDINOConfig.from_dict(weights["config"]) == tiny()
    reference = GroundingDINO(tiny())
    assert set(weights["model"]) == set(reference.state_dict())  # the official key layout

    model = build_model(tmp_path / "model.pth")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights["model"][name]), name
    last = torch.load(tmp_path / "checkpoint_last.pth", weights_only=True)
    assert last["step"] == 2 and last["epoch"] == 1

    train_main(_train_args(shapes, tmp_path, epochs=2) + ["--resume"])
    assert "resumed from" in capsys.readouterr().out
    resumed = torch.load(tmp_path / "checkpoint_last.pth", weights_only=True)
    assert resumed["step"] == 4
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # continued at step 3, nothing repeated
    assert not torch.equal(resumed["model"]["feat_map.weight"], weights["model"]["feat_map.weight"])


class _OracleModel(torch.nn.Module):
    """Answers every image with its ground-truth boxes on the right phrase (to check the AP plumbing), or with
    `words_only` on any token of any phrase sharing a word with the object's name (a colour-or-shape detector)."""

    def __init__(self, dataset: CocoGroundingDataset, words_only: bool = False):
        super().__init__()
        self.config = tiny()
        self.dataset = dataset
        self.words_only = words_only
        self.image_index = -1

    def encode_image(self, pixel_values):
        self.image_index += 1
        return pixel_values

    def forward(self, input_ids, attention_mask, image_features):
        info = self.dataset.images[self.image_index]
        annotations = self.dataset.annotations[info["id"]]
        batch, length = input_ids.shape
        queries = len(annotations) + 1  # one spare query that answers nothing
        logits = torch.full((batch, queries, 256), -10.0)
        logits[:, :, length:] = float("-inf")
        logits[:, :, :length].masked_fill_(~attention_mask.bool()[:, None, :], float("-inf"))
        boxes = torch.full((batch, queries, 4), 0.5)
        for q, annotation in enumerate(annotations):
            x, y, w, h = annotation["bbox"]
            width, height = info["width"], info["height"]
            boxes[:, q] = torch.tensor([(x + w / 2) / width, (y + h / 2) / height, w / width, h / height])
            phrase = self.dataset.tokenizer(self.dataset.categories[annotation["category_id"]], add_special_tokens=False)["input_ids"]
            for row, ids in enumerate(input_ids.tolist()):
                if self.words_only:
                    logits[row, q, [i for i, token in enumerate(ids) if token in phrase]] = 5.0
                    continue
                for start in range(1, length - len(phrase)):
                    end = start + len(phrase)
                    if ids[start:end] == phrase and ids[start - 1] in (101, 1012) and ids[end] == 1012:
                        logits[row, q, start:end] = 5.0
        return type("Output", (), {"pred_logits": logits, "pred_boxes": boxes})


def test_trained_checkpoint_loads_strictly_and_runs_in_the_pipeline(shapes, tmp_path):
    train_main(_train_args(shapes, tmp_path, epochs=1))
    for checkpoint in ("model.pth", "checkpoint_last.pth"):  # training state rides along without harm
        model, report = load_model(tmp_path / checkpoint)
        assert report.ok and report.config_origin == "checkpoint config" and model.config == tiny()
    pipeline = GroundedSAM.from_names(detector=str(tmp_path / "model.pth"), sam=None, device="cpu")
    image = Image.open(shapes[1] / "000000.png")
    result = pipeline.detect(image, "red circle . blue star .", box_threshold=0.0, text_threshold=0.0)
    assert result.image_size == image.size
    assert len(result.boxes) > 0 and set(result.phrases) <= {"red circle", "blue star", "red", "circle", "blue", "star"}
    assert (result.boxes[:, 2] <= image.size[0]).all() and (result.boxes[:, 3] <= image.size[1]).all()


@pytest.mark.parametrize("prompt_mode", ["all", "single"])
def test_eval_gives_ap_one_for_ground_truth_answers(shapes, tokenizer, prompt_mode):
    dataset = CocoGroundingDataset(*shapes, tokenizer, sizes=ImageSizes((SIZE,), SIZE), train=False)
    result = evaluate(_OracleModel(dataset), dataset, prompt_mode=prompt_mode, progress=False)
    assert result.map50 == pytest.approx(1.0) and result.map50_95 == pytest.approx(1.0)
    if prompt_mode == "single":
        assert result.absent_without_box == pytest.approx(1.0)
        assert result.absent_related_without_box == pytest.approx(1.0)


def test_eval_separates_absent_phrases_sharing_a_word(shapes, tokenizer):
    dataset = CocoGroundingDataset(*shapes, tokenizer, sizes=ImageSizes((SIZE,), SIZE), train=False)
    result = evaluate(_OracleModel(dataset, words_only=True), dataset, prompt_mode="single", progress=False)
    assert result.absent_related_without_box == 0.0  # every phrase sharing a colour or shape fires
    assert 0.0 < result.absent_without_box < 1.0  # the unrelated ones stay silent


def test_eval_cli_prints_ap_of_a_trained_checkpoint(shapes, tmp_path, capsys):
    train_main(_train_args(shapes, tmp_path, epochs=1))
    capsys.readouterr()
    eval_main(["--data", str(shapes[0]), "--images", str(shapes[1]), "--checkpoint", str(tmp_path / "model.pth"),
               "--short-side", str(SIZE), "--device", "cpu", "--json"])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 4 and 0.0 <= result["map50"] <= 1.0 and result["prompt_mode"] == "all"


def test_time_limit_stops_early_and_resume_finishes(shapes, tokenizer, tmp_path):
    dataset = CocoGroundingDataset(*shapes, tokenizer, sizes=ImageSizes((SIZE,), SIZE))
    config = TrainConfig(batch_size=2, epochs=2, warmup_steps=1, num_workers=1)
    trainer = Trainer(build_model("tiny"), dataset, tmp_path, config)
    trainer.fit(progress=False, time_limit_s=0.0)
    assert trainer.step == 1 and (tmp_path / "model.pth").is_file()
    resumed = Trainer(build_model("tiny"), dataset, tmp_path, config)
    resumed.resume(tmp_path / "checkpoint_last.pth")
    resumed.fit(progress=False)
    assert resumed.step == 4


def test_demo_model_recipe_trains_and_scores_held_out_scenes(tmp_path):
    recipe = DemoRecipe(
        image_size=128, detector_size=96, train_images=4, heldout_images=2, preset="tiny", epochs=1, batch_size=2,
        warmup_steps=1, sam_variant="tiny", sam_epochs=1, sam_batch_size=2, prompt_eval_scenes=2,
    )  # fmt: skip
    summary = run(tmp_path, recipe, minutes=None, device="cpu", progress=False)
    assert summary["detector_training"]["steps"] == summary["detector_training"]["total_steps"] == 2
    assert summary["sam_training"]["steps"] == summary["sam_training"]["total_steps"] == 2
    heldout = summary["heldout"]
    assert heldout["detector"]["num_images"] == 2 and 0 <= heldout["detector"]["absent_without_box"] <= 1
    assert 0 <= heldout["sam_mask_iou"] <= 1
    from grounding.train.prompt_eval import FAMILIES

    assert [family["family"] for family in heldout["prompts"]] == list(FAMILIES)  # each wording family on its own
    assert all(family["scenes"] == 2 for family in heldout["prompts"])
    assert json.loads((tmp_path / "results.json").read_text()) == summary
    train = json.loads((tmp_path / "data/train/annotations.json").read_text())
    heldout_data = json.loads((tmp_path / "data/heldout/annotations.json").read_text())
    assert train["info"]["seed"] != heldout_data["info"]["seed"]
    assert Image.open(next((tmp_path / "data/heldout/images").iterdir())).size == (128, 128)  # scenes: image_size
    assert build_model(tmp_path / "model" / "model.pth").config.input_size == (96, 96)  # read at detector_size


def test_demo_model_parts_run_separately_and_merge_results(tmp_path):
    recipe = DemoRecipe(image_size=128, detector_size=96, train_images=4, heldout_images=2, preset="tiny", epochs=1,
                        batch_size=2, warmup_steps=1, sam_variant="tiny", sam_epochs=1, sam_batch_size=2)  # fmt: skip
    run(tmp_path, recipe, minutes=None, device="cpu", progress=False, parts=("data",))
    assert not (tmp_path / "model").exists()
    run(tmp_path, recipe, minutes=None, device="cpu", progress=False, parts=("sam",))
    run(tmp_path, recipe, minutes=None, device="cpu", progress=False, parts=("detector",))
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["sam_training"]["steps"] == 2 and merged["detector_training"]["steps"] == 2
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {"model.pth", "sam.pth", "log.jsonl", "log_sam.jsonl"}


def test_demo_model_scene_mix_alternates_wide_and_held_out_layouts(tmp_path):
    recipe = DemoRecipe(image_size=128, train_images=4, heldout_images=2, scene_min_radius=0.02, scene_max_radius=0.4,
                        scene_max_objects=12, scene_mix=True)  # fmt: skip
    run(tmp_path, recipe, minutes=None, device="cpu", progress=False, parts=("data",))
    train = json.loads((tmp_path / "data/train/annotations.json").read_text())["info"]["config"]
    heldout = json.loads((tmp_path / "data/heldout/annotations.json").read_text())["info"]["config"]
    assert [(c["max_radius"], c["max_objects"]) for c in train] == [(0.4, 12), (0.2, 6)]
    assert train[1] == heldout  # every other training scene is laid out as the held-out ones


def test_demo_model_continues_from_given_weights(tmp_path):
    recipe = DemoRecipe(image_size=128, detector_size=96, train_images=4, heldout_images=2, preset="tiny", epochs=1,
                        batch_size=2, warmup_steps=1, sam_variant="tiny", sam_epochs=1, sam_batch_size=2)  # fmt: skip
    run(tmp_path / "first", recipe, minutes=None, device="cpu", progress=False, parts=("data", "detector", "sam"))
    first = tmp_path / "first" / "model"
    frozen = replace(recipe, lr=0.0, sam_lr=0.0, init_detector=str(first / "model.pth"), init_sam=str(first / "sam.pth"))
    run(tmp_path / "second", frozen, minutes=None, device="cpu", progress=False, parts=("data", "detector", "sam"))
    second = tmp_path / "second" / "model"
    detector_before, detector_after = build_model(first / "model.pth"), build_model(second / "model.pth")
    for (name, before), after in zip(detector_before.state_dict().items(), detector_after.state_dict().values()):
        assert torch.equal(before, after), name  # trained from the given weights (at lr 0 they stay)
    sam_before, sam_after = torch.load(first / "sam.pth"), torch.load(second / "sam.pth")
    assert sam_before.keys() == sam_after.keys() and all(torch.equal(sam_before[k], sam_after[k]) for k in sam_before)


def test_parallel_generation_equals_serial(tmp_path):
    config = ShapesConfig(image_size=(64, 64))
    serial = json.loads(generate_dataset(tmp_path / "serial", 5, seed=2, config=config).read_text())
    parallel = json.loads(generate_dataset(tmp_path / "parallel", 5, seed=2, config=config, workers=2).read_text())
    assert serial == parallel
    for name in ("000000.png", "000004.png"):
        assert (tmp_path / "serial/images" / name).read_bytes() == (tmp_path / "parallel/images" / name).read_bytes()


def test_schedule_anneals_to_a_time_limit_and_resumes_where_it_was(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("grounding.train.trainer.time.monotonic", lambda: clock[0])
    schedule = WarmupCosine(warmup_steps=2, total_steps=10_000, floor=0.05)
    assert schedule(0) == 0.5 and schedule(1) == 1.0  # warm-up
    schedule.anneal_until(deadline=160.0)
    clock[0] = 130.0  # half the window: cosine at 0.5 although few steps are done
    assert schedule(5) == pytest.approx(0.05 + 0.95 * 0.5)
    clock[0] = 170.0
    assert schedule(6) == pytest.approx(0.05)  # past the deadline: the floor
    resumed = WarmupCosine(warmup_steps=2, total_steps=10_000, floor=0.05)
    resumed.load_state_dict(schedule.state_dict())
    resumed.anneal_until(deadline=230.0)
    assert resumed(7) == pytest.approx(0.05)  # no jump back up after a resume
    plain = WarmupCosine(warmup_steps=2, total_steps=102, floor=0.0)
    assert plain(52) == pytest.approx(0.5) and plain(102) == pytest.approx(0.0)  # by steps without a window
