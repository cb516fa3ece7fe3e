"""SAM stage: variants match segment_anything's builders, official-format loading, download, batched decode."""
from __future__ import annotations

import copy
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

from grounding.errors import CheckpointMismatchError, WeightsUnavailableError
from grounding.segmenters.sam import (
    SAM_VARIANTS,
    SamSegmenter,
    SdpaAttention,
    build_sam,
    default_sam_variant,
    download_checkpoint,
    resolve_sam_checkpoint,
    use_sdpa_attention,
)
from tests.fixtures.sam import tiny_sam


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_official_variants_have_the_official_state_dict(name):
    with torch.device("meta"):  # shapes only, no memory
        ours = build_sam(SAM_VARIANTS[name]).state_dict()
        official = sam_model_registry[name]().state_dict()
    assert list(ours) == list(official)
    assert all(ours[k].shape == official[k].shape for k in official)


def test_official_urls_and_md5_prefixes():
    assert SAM_VARIANTS["vit_b"].url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert SAM_VARIANTS["vit_h"].md5_prefix == "4b8939"
    assert default_sam_variant("cpu") == "vit_b"
    assert default_sam_variant("cuda") == "vit_h"


def test_loads_through_the_state_dict_path(tiny_sam_checkpoint):
    segmenter = SamSegmenter.from_pretrained("tiny", checkpoint=tiny_sam_checkpoint, device="cpu")
    reference = tiny_sam(seed=0).state_dict()
    for key, value in segmenter.model.state_dict().items():
        torch.testing.assert_close(value, reference[key])
    assert segmenter.model_id == f"sam-tiny:{tiny_sam_checkpoint.resolve()}"  # cache keys name the weights


def test_env_var_gives_the_checkpoint(tiny_sam_checkpoint, monkeypatch):
    monkeypatch.setenv("SAM_CHECKPOINT", str(tiny_sam_checkpoint))
    assert resolve_sam_checkpoint("vit_b") == tiny_sam_checkpoint


def test_wrong_variant_for_a_file_is_a_mismatch(tiny_sam_checkpoint):
    with pytest.raises(CheckpointMismatchError, match="vit_b / vit_l / vit_h"):
        SamSegmenter.from_pretrained("vit_b", checkpoint=tiny_sam_checkpoint, device="cpu")


def test_missing_weights_offline_says_how_to_pass_a_local_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SAM_CHECKPOINT", raising=False)
    monkeypatch.setenv("GROUNDING_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GROUNDING_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="sam_checkpoint=") as info:
        resolve_sam_checkpoint("vit_b")
    assert "sam_vit_b_01ec64.pth" in str(info.value) and "SAM_CHECKPOINT" in str(info.value)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        resolve_sam_checkpoint("vit_b", checkpoint=tmp_path / "nope.pth")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **kw: _Quiet(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_over_http_checks_md5_and_is_atomic(file_server, tiny_sam_checkpoint, tmp_path):
    root, url = file_server
    payload = Path(tiny_sam_checkpoint).read_bytes()
    (root / "sam.pth").write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()

    target = download_checkpoint(f"{url}/sam.pth", tmp_path / "cache" / "sam.pth", md5_prefix=md5[:6])
    assert target.read_bytes() == payload

    bad = tmp_path / "cache" / "bad.pth"
    with pytest.raises(WeightsUnavailableError, match="md5"):
        download_checkpoint(f"{url}/sam.pth", bad, md5_prefix="000000" if md5[:6] != "000000" else "111111")
    assert not bad.exists() and not list(bad.parent.glob("*.part"))


def test_unreachable_server_is_weights_unavailable(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(WeightsUnavailableError, match="Could not download"):
        download_checkpoint(f"http://127.0.0.1:{port}/sam.pth", tmp_path / "x.pth", timeout=5)


def test_batched_decode_matches_predictor_and_original_resolution(tiny_segmenter):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 80, 90], [50, 20, 190, 110], [0, 0, 199, 119]], np.float32)
    embedding = tiny_segmenter.encode_image(image)
    assert embedding.features.shape == (1, 32, 16, 16)
    assert embedding.original_size == (120, 200) and embedding.input_size == (154, 256)

    out = tiny_segmenter.decode_boxes(embedding, boxes)
    assert out.masks.shape == (3, 120, 200) and out.masks.dtype == np.bool_
    assert out.iou_scores.shape == (3,) and out.iou_scores.dtype == np.float32

    # Same numbers as segment_anything's own predictor, one box at a time.
    predictor = SamPredictor(tiny_segmenter.model)
    predictor.set_image(image)
    for i, box in enumerate(boxes):
        masks, iou, _ = predictor.predict(box=box, multimask_output=False)
        assert (masks[0] != out.masks[i]).mean() < 1e-3
        assert abs(iou[0] - out.iou_scores[i]) < 1e-4


def test_decode_splits_calls_only_beyond_the_memory_budget(tiny_segmenter, monkeypatch):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    corners = rng.uniform(0, 100, (7, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(10, 90, (7, 2))], 1).astype(np.float32)
    embedding = tiny_segmenter.encode_image(image)
    calls = []
    original = SamPredictor.predict_torch
    monkeypatch.setattr(SamPredictor, "predict_torch", lambda self, **kw: calls.append(len(kw["boxes"]))
                        or original(self, **kw))
    whole = tiny_segmenter.decode_boxes(embedding, boxes)
    assert calls == [7]
    split = tiny_segmenter.decode_boxes(embedding, boxes, memory_budget=3 * 120 * 200 * 4)  # 3 boxes per call
    assert calls[1:] == [3, 3, 1]
    assert np.array_equal(whole.masks, split.masks)
    assert np.allclose(whole.iou_scores, split.iou_scores, atol=1e-6)


def test_multimask_keeps_the_best_of_three(tiny_segmenter):
    image = np.random.default_rng(1).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    embedding = tiny_segmenter.encode_image(image)
    box = np.array([[20, 20, 70, 80]], np.float32)
    best = tiny_segmenter.decode_boxes(embedding, box, multimask=True)
    predictor = SamPredictor(tiny_segmenter.model)
    predictor.set_image(image)
    masks, iou, _ = predictor.predict(box=box[0], multimask_output=True)
    assert best.iou_scores[0] == pytest.approx(iou.max(), abs=1e-4)
    assert (best.masks[0] != masks[iou.argmax()]).mean() < 1e-3


def test_no_boxes_gives_empty_masks(tiny_segmenter):
    embedding = tiny_segmenter.encode_image(np.zeros((40, 60, 3), np.uint8))
    out = tiny_segmenter.decode_boxes(embedding, np.zeros((0, 4), np.float32))
    assert out.masks.shape == (0, 40, 60)


@pytest.mark.parametrize("variant", ["tiny", "shapes"])
@pytest.mark.parametrize("bias_bytes", [None, 7 * 2 * 256 * 4])  # default; 7 query rows per mask chunk
def test_sdpa_attention_equals_the_package_attention(variant, bias_bytes, monkeypatch):
    torch.manual_seed(1)
    package = build_sam(SAM_VARIANTS[variant])
    for name, parameter in package.image_encoder.named_parameters():
        if "rel_pos" in name:  # zeros at init: give the relative positions something to do
            parameter.data.normal_(0, 0.5)
    swapped = use_sdpa_attention(copy.deepcopy(package))
    assert sum(isinstance(m, SdpaAttention) for m in swapped.image_encoder.modules()) == SAM_VARIANTS[variant].encoder_depth
    assert not any(isinstance(m, SdpaAttention) for m in package.image_encoder.modules())
    if bias_bytes:
        monkeypatch.setattr(SdpaAttention, "BIAS_BYTES", bias_bytes)
    pixels = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        expected, actual = package.image_encoder(pixels), swapped.image_encoder(pixels)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_shipped_sam_embeddings_are_the_same_through_sdpa():
    from grounding.shipped import SAM_FILE, shapes_dir

    loaded = {
        sdpa: SamSegmenter.from_pretrained("shapes", checkpoint=shapes_dir() / SAM_FILE, device="cpu", sdpa_attention=sdpa)
        for sdpa in (False, True)
    }
    picture = (np.random.default_rng(0).random((200, 300, 3)) * 255).astype(np.uint8)
    with torch.inference_mode():
        package, sdpa = (loaded[flag].encode_image(picture).features for flag in (False, True))
    torch.testing.assert_close(sdpa, package, atol=1e-4, rtol=0)
