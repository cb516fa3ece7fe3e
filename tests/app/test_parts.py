"""The studio's parts without a server: flags, SAM file detection, drawing, bounded files and images."""
from __future__ import annotations

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from app.images import ImageLoader
from app.models import ModelRegistry
from app.rendering import alt_text, phrase_colours, render, status_html, table_rows
from app.settings import parse_settings
from app.studio import OutputFiles
from grounding.errors import InvalidImageError, WeightsUnavailableError
from grounding.drawing import blend_masks
from grounding.pipeline import GroundedResult


def test_flags_beat_environment_and_defaults():
    env = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "9000", "GROUNDING_DETECTOR": "swinb_cogcoor",
           "GROUNDING_SAM": "vit_l", "GROUNDING_DEVICE": "cuda:1"}
    from_env = parse_settings([], env)
    assert (from_env.host, from_env.port, from_env.detectors, from_env.segmenters, from_env.device) == (
        "0.0.0.0", 9000, ("swinb_cogcoor",), ("vit_l",), "cuda:1")
    flags = parse_settings(["--port", "7000", "--detector", "a.pth,b.pth", "--detector", "c", "--sam", "none",
                            "--share", "--max-prompt-tokens", "512"], env)
    assert flags.port == 7000 and flags.detectors == ("a.pth", "b.pth", "c") and not flags.sam_enabled
    assert flags.share and flags.max_prompt_tokens == 512
    assert parse_settings([], {}).detectors == ("swint_ogc",) and parse_settings([], {}).host == "127.0.0.1"
    assert parse_settings([], {}).precision == "auto" and parse_settings([], {"GROUNDING_PRECISION": "bf16"}).precision == "bf16"
    assert parse_settings(["--precision", "fp32"], {"GROUNDING_PRECISION": "bf16"}).precision == "fp32"


@pytest.mark.parametrize("argv, env", [([], {"GROUNDING_PRECISION": "half"}), (["--precision", "int8"], {}),
                                       (["--precision", "fp16", "--device", "cpu"], {})])
def test_bad_precision_is_a_usage_error(argv, env, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_settings(argv, env)
    assert exited.value.code == 2 and "precision" in capsys.readouterr().err


def test_segmenters_are_named_or_read_from_their_files(tmp_path):
    from grounding.segmenters import load_segmenter, sam_variant_of
    from tests.fixtures.sam import tiny_sam_checkpoint

    path = tiny_sam_checkpoint(tmp_path / "my_sam.pth")
    assert sam_variant_of(path) == "tiny"
    loaded = load_segmenter(str(path), device="cpu")
    assert loaded.name == "SAM tiny" and str(path.resolve()) in loaded.model_id
    settings = parse_settings(["--sam", "vit_b,sam2.1_hiera_tiny", "--sam", "sam_hq_vit_b"], {})
    assert settings.segmenters == ("vit_b", "sam2.1_hiera_tiny", "sam_hq_vit_b") and settings.sam_enabled
    for name in ("sam3_huge", str(tmp_path / "missing.pth")):
        with pytest.raises(WeightsUnavailableError, match="choose one of vit_h, vit_l, vit_b, sam2.1_hiera_tiny"):
            load_segmenter(name, device="cpu")


def test_registry_retries_a_failed_load_only_on_purpose_and_builds_once():
    calls, now = [], [0.0]

    def factory():
        calls.append(1)
        if len(calls) <= 2:
            raise WeightsUnavailableError("put the file in place")
        return "pipeline"

    registry = ModelRegistry({"m": factory}, retry_after_s=300, clock=lambda: now[0])
    assert registry.load_all() == {"m": "put the file in place"} and len(calls) == 1
    for _ in range(5):  # page loads and requests within the retry time answer the error without a new load
        assert registry.load_all() == {"m": "put the file in place"}
        with pytest.raises(WeightsUnavailableError, match="put the file in place"):
            registry.get("m")
    assert len(calls) == 1 and registry.load_attempts == 1
    now[0] = 301.0  # the retry time has come: one more attempt (which fails again)
    assert registry.load_all() == {"m": "put the file in place"} and len(calls) == 2
    now[0] = 320.0  # the page's Retry button tries at once, but not twice within MIN_RETRY_INTERVAL_S
    assert registry.retry() and registry.get("m") == "pipeline" and len(calls) == 3
    assert not registry.retry() and registry.seconds_to_retry() == pytest.approx(30.0)
    assert registry.get(None) == "pipeline" and registry.load_all() == {} and len(calls) == 3
    with pytest.raises(WeightsUnavailableError, match="Unknown model"):
        registry.get("other")


def _result(masks: np.ndarray | None) -> GroundedResult:
    return GroundedResult(
        boxes=np.array([[0, 0, 20, 20], [5, 5, 10, 10]], np.float32), scores=np.array([0.9, 0.5], np.float32),
        phrases=["dog", "cat"], masks=masks, image_size=(20, 20), original_size=(20, 20),
        prompt_phrases=["cat", "dog", "bird"], phrase_scores={"cat": 0.5, "dog": 0.9, "bird": 0.21},
    )


def test_blend_puts_the_smallest_mask_on_top_in_its_colour():
    pixels = np.zeros((20, 20, 3), np.uint8)
    masks = np.zeros((2, 20, 20), bool)
    masks[0] = True
    masks[1, 5:10, 5:10] = True
    out = blend_masks(pixels, masks, np.array([[200, 0, 0], [0, 200, 0]], np.uint8), opacity=0.5)
    assert tuple(out[0, 0]) == (100, 0, 0) and tuple(out[7, 7]) == (0, 100, 0)
    assert np.array_equal(blend_masks(pixels, masks[:0], np.zeros((0, 3), np.uint8)), pixels)


def test_colours_follow_the_prompt_order_in_picture_and_status():
    masks = np.zeros((2, 20, 20), bool)
    masks[1, 12:18, 12:18] = True  # only "cat" has mask pixels
    colours = phrase_colours(_result(masks))
    palette = sv.ColorPalette.DEFAULT
    assert colours == {"cat": palette.by_idx(0).as_hex(), "dog": palette.by_idx(1).as_hex(),
                       "bird": palette.by_idx(2).as_hex()}
    status = status_html(_result(masks), 0.36, box_threshold=0.35, precision="bf16")
    assert "2 objects · 0.36 s" in status and "· bf16</span>" in status and "bird <b>×0</b>" in status and colours["cat"] in status
    assert "no box for &#x27;bird&#x27; (best score 0.21 — lower the box threshold to see it)" in status
    assert alt_text(_result(masks)) == "2 objects: cat ×1, dog ×1, bird ×0"
    picture = render(np.zeros((20, 20, 3), np.uint8), _result(masks))
    assert picture.shape == (640, 640, 3)  # a small image is shown enlarged (x32)
    cat_rgb = np.array(palette.by_idx(0).as_rgb())
    assert np.abs(picture[15 * 32 + 16, 15 * 32 + 16].astype(int) - (cat_rgb * 0.45).astype(int)).max() <= 2
    rows = table_rows(_result(masks))
    assert rows[0][0] == 1 and rows[1][:3] == [2, "cat", 0.5] and rows[1][7] == 36  # numbered from 1
    assert table_rows(_result(None))[0][7] == ""


def test_the_best_label_is_drawn_last():
    from grounding.drawing import annotate

    result = GroundedResult(  # two boxes on the same spot: the stronger one's label must be the one visible
        boxes=np.array([[10, 30, 60, 60], [10, 30, 60, 60]], np.float32), scores=np.array([0.9, 0.4], np.float32),
        phrases=["dog", "cat"], image_size=(80, 80), original_size=(80, 80), prompt_phrases=["cat", "dog"],
    )
    picture = annotate(np.full((80, 80, 3), 255, np.uint8), result)
    flipped = annotate(np.full((80, 80, 3), 255, np.uint8), GroundedResult(
        boxes=result.boxes, scores=result.scores[::-1].copy(), phrases=result.phrases, image_size=(80, 80),
        original_size=(80, 80), prompt_phrases=["cat", "dog"]))
    dog, cat = (np.array(sv.ColorPalette.DEFAULT.by_idx(i).as_rgb()) for i in (1, 0))
    label_row = picture[25]  # the label box sits above the box's top edge
    assert (np.abs(label_row.astype(int) - dog).sum(axis=1) < 30).sum() > (np.abs(label_row.astype(int) - cat).sum(axis=1) < 30).sum()
    flipped_row = flipped[25]
    assert (np.abs(flipped_row.astype(int) - cat).sum(axis=1) < 30).sum() > (np.abs(flipped_row.astype(int) - dog).sum(axis=1) < 30).sum()


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


def test_janitor_deletes_old_files_then_the_oldest_beyond_the_size_bound(tmp_path):
    import time

    from app.disk import DiskJanitor

    def write(name: str, size: int):
        path = tmp_path / name / "file.bin"
        path.parent.mkdir()
        path.write_bytes(b"x" * size)
        time.sleep(0.02)  # distinct ctimes: the order of use
        return path

    old, example = write("old", 10), write("example", 10)
    time.sleep(1.2)
    recent = [write(f"new{index}", 400) for index in range(5)]
    janitor = DiskJanitor(tmp_path, max_bytes=1000, max_age_s=1.0, keep=lambda: {str(example)}, grace_s=0)
    sweep = janitor.sweep()
    assert not old.exists()  # unused for too long
    assert example.exists()  # kept on purpose (the page's example), old as it is
    assert [path.exists() for path in recent] == [False, False, False, True, True]  # the oldest went first
    assert sweep.deleted_files == 4 and sweep.kept_bytes == 810
    time.sleep(0.05)
    janitor.sweep()
    assert not old.parent.exists()  # an emptied folder goes at the next sweep (Gradio may be about to write into it)
    # A file read again (the image loader touches an upload it reads) counts as used now.
    ImageLoader()._key(str(recent[3]))
    time.sleep(0.3)
    write("newest", 400)
    janitor.max_bytes = 900
    janitor.sweep()
    assert recent[3].exists() and not recent[4].exists()


def test_paths_are_taken_out_of_messages():
    from app.messages import redact_paths

    text = ("SAM weights: put it in /home/me/.cache/grounding/sam. Or pass /path/sam.pth; see "
            "https://huggingface.co/ShilongLiu/GroundingDINO/resolve/main/x.pth or C:\\models\\w.pth (\"/srv/a/b.png\")")
    redacted = redact_paths(text)
    assert "/home/me" not in redacted and "…/sam." in redacted and "C:\\models" not in redacted
    assert "/path/sam.pth" in redacted and "https://huggingface.co/ShilongLiu/GroundingDINO/resolve/main/x.pth" in redacted
    assert '"…/b.png"' in redacted


def test_only_files_in_the_upload_folder_are_accepted(tmp_path, monkeypatch):
    import os

    from app.uploads import EXPIRED_UPLOAD, REFUSED_SOURCE, RefusedInput, confined_path, data_url_bytes

    uploads, outside = tmp_path / "gradio", tmp_path / "server"
    (uploads / "abc").mkdir(parents=True)
    outside.mkdir()
    (uploads / "abc" / "photo.png").write_bytes(b"png")
    (outside / "secret.png").write_bytes(b"png")
    (uploads / "link.png").symlink_to(outside / "secret.png")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    assert confined_path(str(uploads / "abc" / "photo.png")) == os.path.realpath(uploads / "abc" / "photo.png")
    for path in [outside / "secret.png", outside / "missing.png", uploads / "link.png", uploads / ".." / "server" /
                 "secret.png", "secret.png", uploads, "http://127.0.0.1/x.png", ""]:
        with pytest.raises(RefusedInput, match="Paths and links are not read") as caught:
            confined_path(str(path))
        assert str(caught.value) == REFUSED_SOURCE
    with pytest.raises(RefusedInput, match="upload it again") as caught:
        confined_path(str(uploads / "abc" / "gone.png"))
    assert str(caught.value) == EXPIRED_UPLOAD
    assert data_url_bytes("data:image/png;base64,cG5n", 10).data == b"png"
    with pytest.raises(RefusedInput, match="the limit is"):
        data_url_bytes("data:image/png;base64," + "A" * 4000, 1000)
    with pytest.raises(RefusedInput, match="base64"):
        data_url_bytes("data:image/png,raw", 1000)


def test_the_studio_offers_every_configured_segmenter(tiny_weights, tmp_path):
    from app.models import registry_from_settings
    from app.settings import StudioSettings
    from app.studio import Studio
    from tests.fixtures.segmenters import save_tiny

    sam2 = save_tiny("sam2", tmp_path / "tiny_sam2")
    settings = StudioSettings(device="cpu", detectors=(str(tiny_weights["detector"]),),
                              segmenters=(str(tiny_weights["sam"]), str(sam2), "sam_hq_vit_b"))
    registry = registry_from_settings(settings)
    registry.load_all()
    registry.segmenters.load_all()  # as app.py does at start: the hub name cannot load offline
    studio = Studio(registry)
    assert studio.segmenter_choices() == [("tiny_sam.pth", "tiny_sam.pth"), ("tiny_sam2", "tiny_sam2"),
                                          ("sam_hq_vit_b — weights missing", "sam_hq_vit_b")]
    image = tmp_path / "scene.png"
    picture = Image.new("RGB", (160, 120), (120, 180, 250))
    picture.paste((200, 90, 60), (20, 30, 90, 100))
    picture.save(image)
    from app.uploads import ImageBytes

    data = ImageBytes(image.read_bytes())
    default = studio.segment(data, "house . tree", 0.0, 0.25, 1.0, True, "tiny_dino.pth")[3]
    chosen = studio.segment(data, "house . tree", 0.0, 0.25, 1.0, True, "tiny_dino.pth", "tiny_sam2")[3]
    assert default["model"]["sam"] == "SAM tiny" and chosen["model"]["sam"] == "tiny_sam2"
    assert [d["box_xyxy"] for d in default["detections"]] == [d["box_xyxy"] for d in chosen["detections"]]
    assert chosen["model_calls"]["sam_image_encodes"] == 1  # its own embedding, cached apart from SAM's
    assert studio.choose_segmenter("sam_hq_vit_b") == "tiny_sam.pth"  # unloadable: the working one stays
