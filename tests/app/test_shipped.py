"""The shipped "shapes" demo bundle (grounding.shipped): loads through the real checkpoint paths, is offered in
the studio's model menu, and becomes the page's model, with a notice, when the real weights cannot be had.
A random bundle of the same file layout stands in for assets/shapes/ here."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
import torch

from app.models import registry_from_settings
from app.settings import StudioSettings
from app.studio import Studio
from app.ui import build_demo
from grounding.checkpoint import save_checkpoint
from grounding.errors import WeightsUnavailableError
from grounding.segmenters.sam import SAM_VARIANTS, build_sam
from grounding.shipped import DETECTOR_FILE, SAM_FILE, SHAPES_NAME, load_shapes_pipeline, shapes_available
from tests.fixtures.dino import tiny_model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes_bundle")
    detector = tiny_model(seed=3)
    detector.config.input_size = (96, 128)
    save_checkpoint(detector, folder / DETECTOR_FILE)
    torch.manual_seed(0)
    torch.save(build_sam(SAM_VARIANTS["shapes"]).state_dict(), folder / SAM_FILE)
    return folder


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, no cached real weights: swint_ogc and vit_b cannot load."""
    for name, value in {"GROUNDING_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                        "GROUNDING_CACHE_DIR": str(tmp_path / "cache")}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    for name in ("GROUNDING_DINO_CHECKPOINT", "SAM_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)


def test_bundle_loads_through_the_checkpoint_paths(bundle):
    pipeline = load_shapes_pipeline("cpu", directory=bundle)
    assert (pipeline.detector.shortest_side, pipeline.detector.longest_side) == (96, 128)  # from the checkpoint
    image = np.full((120, 160, 3), 200, np.uint8)
    image[30:70, 40:90] = (215, 35, 35)
    result = pipeline.segment(image, "red circle . blue star .", 0.0, 0.25)
    assert len(result) == tiny_model().config.num_queries
    assert result.masks.shape == (len(result), 120, 160) and result.masks.dtype == bool


def test_missing_bundle_says_how_to_make_it(tmp_path):
    assert not shapes_available(tmp_path)
    with pytest.raises(WeightsUnavailableError, match="grounding.train.demo_model"):
        load_shapes_pipeline("cpu", directory=tmp_path)


def test_studio_offers_the_bundle_and_falls_back_to_it(bundle, offline, monkeypatch):
    monkeypatch.setenv("GROUNDING_SHAPES_DIR", str(bundle))
    registry = registry_from_settings(StudioSettings(device="cpu", detectors=("swint_ogc",), segmenters=("vit_b",)))
    assert registry.names == ["swint_ogc", SHAPES_NAME] and registry.default_name == "swint_ogc"
    banner = Studio(registry).banner()  # tries every model
    assert registry.default_name == SHAPES_NAME
    assert banner.startswith("**Demo mode** — real weights not found: using the small **shapes** model")
    assert "Grounding DINO (swint_ogc)" in banner and "coloured shapes only" in banner

    demo = build_demo(registry, Studio(registry))
    menus = [block for block in demo.blocks.values() if isinstance(block, gr.Dropdown) and block.label == "Detector"]
    assert len(menus) == 1 and menus[0].value == SHAPES_NAME and menus[0].visible
    assert menus[0].choices == [("swint_ogc — weights missing", "swint_ogc"), (SHAPES_NAME, SHAPES_NAME)]


def test_no_bundle_no_menu_entry(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("GROUNDING_SHAPES_DIR", str(tmp_path / "empty"))
    registry = registry_from_settings(StudioSettings(device="cpu", detectors=("swint_ogc",), segmenters=("vit_b",)))
    assert registry.names == ["swint_ogc"]
    assert "cannot detect anything" in Studio(registry).banner()


def test_a_user_model_named_shapes_is_not_replaced(bundle, offline, monkeypatch, tmp_path):
    monkeypatch.setenv("GROUNDING_SHAPES_DIR", str(bundle))
    own = tmp_path / "shapes"
    own.mkdir()
    registry = registry_from_settings(StudioSettings(device="cpu", detectors=(str(own),), segmenters=("none",)))
    assert registry.names == [SHAPES_NAME]  # the user's folder keeps the name; the bundle is not added over it


def test_only_an_extra_model_failing_gives_a_mild_note(bundle, offline, monkeypatch, tmp_path):
    from app.models import ModelRegistry
    from grounding.errors import WeightsUnavailableError

    broken = tmp_path / "broken"
    broken.mkdir()
    monkeypatch.setenv("GROUNDING_SHAPES_DIR", str(broken))

    def fails():
        raise WeightsUnavailableError("bundle incomplete")

    registry = ModelRegistry({"main": lambda: load_shapes_pipeline("cpu", directory=bundle), SHAPES_NAME: fails})
    banner = Studio(registry).banner()
    assert registry.default_name == "main"
    assert banner.startswith("ℹ️ shapes: weights missing; **main** is in use.") and "bundle incomplete" in banner
    assert "Demo mode" not in banner and "No model could be loaded" not in banner


def test_write_bundle_stores_fp16_once_per_tied_tensor(bundle, tmp_path, monkeypatch):
    import grounding.shipped as shipped

    written = shipped.write_bundle(bundle / DETECTOR_FILE, bundle / SAM_FILE, tmp_path / "half")
    detector = torch.load(written / DETECTOR_FILE, weights_only=True)["model"]
    assert {t.dtype for t in detector.values() if t.is_floating_point()} == {torch.float16}
    assert torch.load(written / SAM_FILE, weights_only=True)["image_encoder.pos_embed"].dtype == torch.float16
    # the decoder's box heads are one module: still one tensor on disk, so the file does not grow
    assert detector["bbox_embed.0.layers.0.weight"].data_ptr() == detector["bbox_embed.1.layers.0.weight"].data_ptr()
    assert (written / DETECTOR_FILE).stat().st_size < 0.6 * (bundle / DETECTOR_FILE).stat().st_size

    image = np.full((120, 160, 3), 200, np.uint8)
    image[30:70, 40:90] = (215, 35, 35)
    full, half = (load_shapes_pipeline("cpu", directory=d).detect(image, "red circle", 0.0, 0.25) for d in (bundle, written))
    assert np.abs(full.boxes - half.boxes).max() < 0.5 and np.abs(full.scores - half.scores).max() < 1e-2

    monkeypatch.setattr(shipped, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ValueError, match="over the"):
        shipped.write_bundle(bundle / DETECTOR_FILE, bundle / SAM_FILE, tmp_path / "too_big")
    assert not (tmp_path / "too_big").exists()
