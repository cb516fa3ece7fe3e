"""Batch fixtures: a folder of generated shapes scenes (with their truth) plus one damaged file, and the local
engine's answer on it with the shipped shapes models (what every other engine and resumed run must equal)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grounding.train.shapes import ShapesConfig, render_scene

REPO = Path(__file__).resolve().parents[2]
SCENES = 40
PROMPT = "red circle . blue square . green star . yellow triangle ."
BROKEN = "broken.png"


@pytest.fixture(scope="session")
def scenes_folder(tmp_path_factory) -> Path:
    """40 scenes of 256x256 (half PNG, half JPEG), `truth.json` beside the folder, and a damaged PNG."""
    folder = tmp_path_factory.mktemp("scenes") / "images"
    folder.mkdir()
    truth = {}
    for index in range(SCENES):
        image, instances = render_scene(np.random.default_rng([31, index]), ShapesConfig(image_size=(256, 256)))
        name = f"scene_{index:02d}.{'png' if index % 2 else 'jpg'}"
        image.save(folder / name, quality=95)
        truth[name] = [(instance.category, _box(instance.mask)) for instance in instances if instance.mask.any()]
    (folder / BROKEN).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (folder.parent / "truth.json").write_text(json.dumps(truth))
    return folder


@pytest.fixture(scope="session")
def reference_coco(scenes_folder, tmp_path_factory) -> dict:
    """coco.json of the local engine (in this process) with the shipped shapes models."""
    from grounding.batch import BatchConfig, label_dataset

    out = tmp_path_factory.mktemp("reference")
    summary = label_dataset(scenes_folder, out, BatchConfig(prompt=PROMPT, detector="shapes", device="cpu"), progress=False)
    assert summary.images == SCENES and list(summary.failed) == [BROKEN]
    return json.loads((out / "coco.json").read_text())


def _box(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of a mask's visible pixels (COCO bbox)."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def batch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "grounding.batch", *args]


def batch_env() -> dict[str, str]:
    return {**os.environ, "GROUNDING_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def run_batch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(batch_command(*args), cwd=REPO, env=batch_env(), capture_output=True, text=True,
                          timeout=timeout)


def assert_same_coco(got: dict, expected: dict) -> None:
    """The same images, categories and objects: boxes and scores to float tolerance, RLE masks identical."""
    assert got["images"] == expected["images"]
    assert got["categories"] == expected["categories"]
    assert len(got["annotations"]) == len(expected["annotations"])
    for ours, theirs in zip(got["annotations"], expected["annotations"]):
        assert {k: v for k, v in ours.items() if k not in ("bbox", "score")} == \
            {k: v for k, v in theirs.items() if k not in ("bbox", "score")}
        np.testing.assert_allclose(ours["bbox"], theirs["bbox"], atol=0.02)
        assert ours["score"] == pytest.approx(theirs["score"], abs=2e-4)


def committed_records(out: Path) -> list[dict]:
    return [json.loads(line) for shard in sorted((out / "shards").glob("part-*.jsonl"))
            for line in shard.read_text().splitlines()]
