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
    assert sorted(p.name for p in (out / "annotated").iterdir()) == ["a.png", "b.png"]
    assert Image.open(out / "annotated" / "a.png").size == (160, 120)
    coco = json.loads((out / "coco.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["a.png", "b.jpg"]
    assert [c["name"] for c in coco["categories"]][:2] == ["red square", "blue block"]
    assert len(coco["annotations"]) > 0
    first = coco["annotations"][0]
    mask = coco_rle_to_mask(first["segmentation"])
    assert mask.shape == (120, 160) and mask.sum() == first["area"]
    masks_a = sorted((out / "masks" / "a").glob("*.png"))
    assert len(masks_a) == sum(a["image_id"] == 1 for a in coco["annotations"])
    np.testing.assert_array_equal(np.asarray(Image.open(masks_a[0])) == 255, mask)


def _run_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI's `main` in this process (no interpreter start-up per case)."""
    from grounding.batch import main

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
