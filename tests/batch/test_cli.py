"""`python -m grounding.batch` end to end on a folder (a real subprocess), then failures and usage errors
in-process, with tiny local checkpoints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grounding.export import coco_rle_to_mask

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def detector_checkpoint(tmp_path_factory) -> Path:
    from tests.fixtures.dino import tiny_official_checkpoint

    path = tmp_path_factory.mktemp("dino") / "tiny_dino.pth"
    tiny_official_checkpoint(path)
    return path


def _batch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GROUNDING_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "grounding.batch", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )


def test_folder_to_annotated_images_and_coco(tmp_path, detector_checkpoint, tiny_sam_checkpoint, photo):
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(photo).save(images / "a.png")
    Image.fromarray(np.ascontiguousarray(photo[:, ::-1])).save(images / "b.jpg", quality=95)
    (images / "notes.txt").write_text("not an image, not picked up")
    out = tmp_path / "out"
    run = _batch(
        "--images", str(images), "--prompt", "red square . blue block .", "--out", str(out),
        "--detector", str(detector_checkpoint), "--sam", "tiny", "--sam-checkpoint", str(tiny_sam_checkpoint),
        "--device", "cpu", "--box-threshold", "0.0", "--text-threshold", "0.0", "--save-masks",
    )
    assert run.returncode == 0, run.stderr
    assert "2/2 images" in run.stdout
    assert "images:" in run.stderr and "100%" in run.stderr  # tqdm progress bar
    assert sorted(p.name for p in (out / "annotated").iterdir()) == ["a.png", "b.jpg.png"]
    assert Image.open(out / "annotated" / "a.png").size == (160, 120)
    coco = json.loads((out / "coco.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["a.png", "b.jpg"]
    assert [c["name"] for c in coco["categories"]][:2] == ["red square", "blue block"]
    assert len(coco["annotations"]) > 0
    first = coco["annotations"][0]
    mask = coco_rle_to_mask(first["segmentation"])
    assert mask.shape == (120, 160) and mask.sum() == first["area"]
    masks_a = sorted((out / "masks" / "a.png").glob("*.png"))
    assert len(masks_a) == sum(a["image_id"] == 1 for a in coco["annotations"])
    np.testing.assert_array_equal(np.asarray(Image.open(masks_a[0])) == 255, mask)


def _run_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI's `main` in this process (no interpreter start-up per case)."""
    from grounding.batch.__main__ import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bad_files_are_skipped_and_reported(tmp_path, detector_checkpoint, photo, capsys):
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(photo).save(images / "good.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    code, stdout, stderr = _run_in_process(
        capsys, "--images", str(images), "--prompt", "red square", "--out", str(out),
        "--detector", str(detector_checkpoint), "--sam", "none", "--box-threshold", "0.0", "--device", "cpu",
    )
    assert code == 1
    assert "broken.jpg" in stderr and "1/2 images" in stdout
    assert json.loads((out / "coco.json").read_text())["images"][0]["file_name"] == "good.png"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", " . "], "no words"),
        (["--box-threshold", "3"], "between 0 and 1"),
        (["--images", "/nonexistent"], "not a folder"),
        (["--sam", "vit_b"], "sam_vit_b_01ec64.pth"),  # offline, no weights: says how to pass a local file
    ],
)
def test_usage_errors_exit_2_with_a_message(tmp_path, detector_checkpoint, photo, monkeypatch, capsys, args, message):
    monkeypatch.delenv("SAM_CHECKPOINT", raising=False)
    monkeypatch.setenv("GROUNDING_OFFLINE", "1")
    monkeypatch.setenv("GROUNDING_CACHE_DIR", str(tmp_path / "empty_cache"))
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(photo).save(images / "a.png")
    base = {"--images": str(images), "--prompt": "cat", "--out": str(tmp_path / "out"),
            "--detector": str(detector_checkpoint), "--device": "cpu"}
    base.update(dict(zip(args[::2], args[1::2])))
    code, _, stderr = _run_in_process(capsys, *[item for pair in base.items() for item in pair])
    assert code == 2
    assert message in stderr


# --- the shipped shapes models, inputs, resuming (local engine) ---

from tests.batch.conftest import BROKEN, PROMPT, SCENES, assert_same_coco, committed_records  # noqa: E402


def test_shapes_detector_finds_the_scenes_objects(scenes_folder, reference_coco):
    """`--detector shapes` (the reference run): the named objects are boxed where the truth has them."""
    truth = json.loads((scenes_folder.parent / "truth.json").read_text())
    names = {c["id"]: c["name"] for c in reference_coco["categories"]}
    images = {image["id"]: image["file_name"] for image in reference_coco["images"]}
    assert sorted(images.values()) == sorted(truth)
    phrases = [phrase.strip() for phrase in PROMPT.split(".") if phrase.strip()]
    wanted = [(name, category, box) for name, objects in truth.items() for category, box in objects
              if category in phrases]
    assert len(wanted) >= 10

    def iou(a, b):
        ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
        inter = max(0, min(ax2, bx2) - max(a[0], b[0])) * max(0, min(ay2, by2) - max(a[1], b[1]))
        return inter / (a[2] * a[3] + b[2] * b[3] - inter)

    found = [
        any(images[a["image_id"]] == name and names[a["category_id"]] == category and iou(a["bbox"], box) > 0.5
            for a in reference_coco["annotations"])
        for name, category, box in wanted
    ]
    assert np.mean(found) >= 0.85
    mask = coco_rle_to_mask(reference_coco["annotations"][0]["segmentation"])
    assert mask.shape == (256, 256) and mask.sum() == reference_coco["annotations"][0]["area"]


def test_globs_and_lists_name_the_same_images(scenes_folder, tmp_path):
    from grounding.batch import list_inputs

    by_folder = list_inputs(scenes_folder)
    assert len(by_folder) == SCENES + 1 and [item.id for item in by_folder] == sorted(item.id for item in by_folder)
    nested = tmp_path / "data"
    (nested / "a").mkdir(parents=True)
    for item in by_folder[:3]:
        (nested / "a" / item.id).write_bytes(Path(item.path).read_bytes())
    by_glob = list_inputs(f"{nested}/**/*.jpg")
    assert [item.id for item in by_glob] == [f"a/{item.id}" for item in by_folder[:3] if item.id.endswith(".jpg")]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# three images\n{by_folder[0].path}\n\ndata/a/{by_folder[1].id}\n{by_folder[0].path}\n")
    listed = list_inputs(listing)  # ids as written (sorted, each once), relative paths from the list's folder
    assert [(item.id, item.path) for item in listed] == [
        (by_folder[0].path, by_folder[0].path),
        (f"data/a/{by_folder[1].id}", str((nested / "a" / by_folder[1].id).resolve())),
    ]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": [item.path for item in by_folder[:5]]}), tmp_path / "list.parquet")
    assert len(list_inputs(tmp_path / "list.parquet")) == 5
    # output names come from the id alone and never leave OUT; ids that had to change get a hash of the id
    clash = tmp_path / "clash.txt"
    clash.write_text("../../x.png\nx.png\nx.jpg\n/abs/x.png\n")
    names = {item.id: item.output_name for item in list_inputs(clash)}
    assert names["x.png"] == "x.png" and names["x.jpg"] == "x.jpg"
    assert names["../../x.png"].startswith("x.png~") and names["/abs/x.png"].startswith("abs/x.png~")
    assert len(set(names.values())) == 4
    # a glob over a folder that holds the output folder leaves the run's own pictures out
    (nested / "labels" / "annotated").mkdir(parents=True)
    (nested / "labels" / "annotated" / "old.jpg").write_bytes(b"")
    assert [item.id for item in list_inputs(f"{nested}/**/*.jpg", exclude=nested / "labels")] == \
        [item.id for item in by_glob]


def test_interrupted_local_run_resumes_to_the_same_answer(scenes_folder, reference_coco, tmp_path):
    from grounding.batch import BatchConfig, label_dataset
    from grounding.batch.records import load_pipeline

    config = BatchConfig(prompt=PROMPT, detector="shapes", device="cpu", shard_size=5)
    pipeline = load_pipeline(config)
    calls = {"n": 0}
    segment = pipeline.segment

    def segment_then_stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return segment(*args, **kwargs)

    pipeline.segment = segment_then_stop
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        label_dataset(scenes_folder, out, config, pipeline=pipeline, progress=False)
    kept = committed_records(out)
    # the damaged file (first by name, it fails before the models) and 11 scenes: 10 in two shards, the rest
    # committed on the way out
    assert len(kept) == 12 and not (out / "coco.json").exists()

    summary = label_dataset(scenes_folder, out, config, progress=False)
    assert summary.images == SCENES and list(summary.failed) == [BROKEN]
    assert_same_coco(json.loads((out / "coco.json").read_text()), reference_coco)
    done = [record["id"] for record in committed_records(out) if "error" not in record]
    assert len(done) == len(set(done)) == SCENES
    again = label_dataset(scenes_folder, out, config, progress=False)  # nothing left but the damaged file
    assert again.images == SCENES and len(committed_records(out)) == len(kept) + (SCENES + 1 - 11) + 1


def test_a_rerun_with_other_settings_or_a_second_writer_is_refused(scenes_folder, tmp_path):
    from grounding.batch import BatchConfig, label_dataset, list_inputs
    from grounding.batch.store import RunFolder
    from grounding.errors import InvalidOptionError

    out = tmp_path / "out"
    config = BatchConfig(prompt="red circle", detector="shapes", device="cpu")
    label_dataset(list_inputs(scenes_folder)[:2], out, config, progress=False)
    with pytest.raises(InvalidOptionError, match="box_threshold"):
        label_dataset(scenes_folder, out, BatchConfig(prompt="red circle", detector="shapes", device="cpu",
                                                      box_threshold=0.5), progress=False)
    with RunFolder(out, config), pytest.raises(InvalidOptionError, match="another run is writing"):
        RunFolder(out, config).__enter__()
