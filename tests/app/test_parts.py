"""The studio's parts without a server: flags, SAM file detection, drawing, bounded files and images."""
from __future__ import annotations

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from app.images import ImageLoader
from app.models import PipelineRegistry, resolve_sam
from app.rendering import blend_masks, legend_html, phrase_colours, render, table_rows
from app.settings import parse_settings
from app.studio import OutputFiles
from grounding.errors import InvalidImageError, WeightsUnavailableError
from grounding.pipeline import GroundedResult


def test_flags_beat_environment_and_defaults():
    env = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "9000", "GROUNDING_DETECTOR": "swinb_cogcoor",
           "GROUNDING_SAM": "vit_l", "GROUNDING_DEVICE": "cuda:1"}
    from_env = parse_settings([], env)
    assert (from_env.host, from_env.port, from_env.detectors, from_env.sam, from_env.device) == (
        "0.0.0.0", 9000, ("swinb_cogcoor",), "vit_l", "cuda:1")
    flags = parse_settings(["--port", "7000", "--detector", "a.pth,b.pth", "--detector", "c", "--sam", "none",
                            "--share", "--max-prompt-tokens", "512"], env)
    assert flags.port == 7000 and flags.detectors == ("a.pth", "b.pth", "c") and not flags.sam_enabled
    assert flags.share and flags.max_prompt_tokens == 512
    assert parse_settings([], {}).detectors == ("swint_ogc",) and parse_settings([], {}).host == "127.0.0.1"


def test_sam_variant_is_read_from_the_checkpoint(tmp_path):
    from tests.fixtures.sam import tiny_sam_checkpoint

    path = tiny_sam_checkpoint(tmp_path / "my_sam.pth")
    assert resolve_sam(str(path), None) == ("tiny", str(path))
    assert resolve_sam("vit_b", "x.pth") == ("vit_b", "x.pth") and resolve_sam(None, None) == ("auto", None)
    assert resolve_sam("none", None) == (None, None)
    with pytest.raises(WeightsUnavailableError, match="neither a SAM variant"):
        resolve_sam(str(tmp_path / "missing.pth"), None)


def test_registry_retries_a_failed_load_and_builds_once():
    calls = []

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise WeightsUnavailableError("put the file in place")
        return "pipeline"

    registry = PipelineRegistry({"m": factory})
    assert registry.load_all() == {"m": "put the file in place"}
    assert registry.get("m") == "pipeline" and registry.get(None) == "pipeline" and len(calls) == 2
    assert registry.load_all() == {}
    with pytest.raises(WeightsUnavailableError, match="Unknown model"):
        registry.get("other")


def _result(masks: np.ndarray | None) -> GroundedResult:
    return GroundedResult(
        boxes=np.array([[0, 0, 20, 20], [5, 5, 10, 10]], np.float32), scores=np.array([0.9, 0.5], np.float32),
        phrases=["dog", "cat"], masks=masks, image_size=(20, 20), original_size=(20, 20),
        prompt_phrases=["cat", "dog", "bird"],
    )


def test_blend_puts_the_smallest_mask_on_top_in_its_colour():
    pixels = np.zeros((20, 20, 3), np.uint8)
    masks = np.zeros((2, 20, 20), bool)
    masks[0] = True
    masks[1, 5:10, 5:10] = True
    out = blend_masks(pixels, masks, np.array([[200, 0, 0], [0, 200, 0]], np.uint8), opacity=0.5)
    assert tuple(out[0, 0]) == (100, 0, 0) and tuple(out[7, 7]) == (0, 100, 0)
    assert np.array_equal(blend_masks(pixels, masks[:0], np.zeros((0, 3), np.uint8)), pixels)


def test_colours_follow_the_prompt_order_in_picture_and_legend():
    masks = np.zeros((2, 20, 20), bool)
    masks[1, 12:18, 12:18] = True  # only "cat" has mask pixels
    colours = phrase_colours(_result(masks))
    palette = sv.ColorPalette.DEFAULT
    assert colours == {"cat": palette.by_idx(0).as_hex(), "dog": palette.by_idx(1).as_hex(),
                       "bird": palette.by_idx(2).as_hex()}
    legend = legend_html(_result(masks))
    assert "<b>2 objects</b>" in legend and "bird <b>×0</b>" in legend and colours["cat"] in legend
    picture = render(np.zeros((20, 20, 3), np.uint8), _result(masks))
    cat_rgb = np.array(palette.by_idx(0).as_rgb())
    assert np.abs(picture[15, 15].astype(int) - (cat_rgb * 0.45).astype(int)).max() <= 2
    assert table_rows(_result(masks))[1][1:3] == ["cat", 0.5] and table_rows(_result(masks))[1][7] == 36
    assert table_rows(_result(None))[0][7] == ""


def test_output_files_are_bounded(tmp_path):
    outputs = OutputFiles(tmp_path, max_files=3)
    paths = []
    for _ in range(5):
        paths.append(outputs.new_path(".jpg"))
        paths[-1].write_bytes(b"x")
    assert sum(p.exists() for p in paths) == 3 and not paths[0].parent.exists()


def test_image_loader_caches_by_file_and_hides_server_paths(tmp_path):
    loader = ImageLoader(max_entries=2)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (32, 32), (i, 0, 0)).save(paths[-1])
    first = loader(paths[0])
    assert loader(paths[0]) is first
    loader(paths[1]), loader(paths[2])
    assert loader(paths[0]) is not first  # evicted: at most 2 decoded images are kept
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(InvalidImageError) as caught:
        loader(tmp_path / "bad.png")
    assert str(tmp_path) not in str(caught.value)
