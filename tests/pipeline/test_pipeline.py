"""GroundedSAM with tiny random models: result shapes, cache levels by counting real model calls, NMS,
bad input, threads, bounded memory.

Random weights give arbitrary boxes, so thresholds are picked from the scores the model actually returns.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from grounding.cache import CacheConfig
from grounding.errors import InvalidImageError, InvalidPromptError, InvalidThresholdError, WeightsUnavailableError
from grounding.pipeline import GroundedResult, GroundedSAM, class_agnostic_nms

PROMPT = "red square . blue block ."


def _all(pipeline: GroundedSAM, image, prompt: str = PROMPT, **kwargs) -> GroundedResult:
    return pipeline.segment(image, prompt, box_threshold=0.0, text_threshold=0.0, **kwargs)


def test_result_shapes_and_types(pipeline, photo):
    result = _all(pipeline, photo)
    n = len(result)
    assert n > 0
    assert result.boxes.shape == (n, 4) and result.boxes.dtype == np.float32
    assert result.scores.shape == (n,) and result.scores.dtype == np.float32
    assert (np.diff(result.scores) <= 0).all()  # best first
    assert (result.boxes[:, 0] >= 0).all() and (result.boxes[:, 2] <= 160).all() and (result.boxes[:, 3] <= 120).all()
    assert (result.boxes[:, 2] >= result.boxes[:, 0]).all()
    assert all(isinstance(p, str) and p for p in result.phrases)
    assert result.masks.shape == (n, 120, 160) and result.masks.dtype == np.bool_
    assert result.mask_scores.shape == (n,)
    assert result.image_size == (160, 120) and result.original_size == (160, 120)
    assert result.prompt_phrases == ["red square", "blue block"]
    assert {"load_image", "detector_image", "detector_text", "filter", "nms", "sam_image", "sam_decode", "total"} <= set(
        result.timings
    )
    assert result.cache == {"raw_detections": False, "image_features": False, "masks": False, "sam_embedding": False}
    # The masks are SAM's for exactly these boxes.
    direct = pipeline.segmenter.decode_boxes(pipeline.segmenter.encode_image(photo), result.boxes)
    np.testing.assert_array_equal(direct.masks, result.masks)


def test_detect_has_no_masks_and_runs_no_sam(pipeline, photo):
    result = pipeline.detect(photo, PROMPT, box_threshold=0.0, text_threshold=0.0)
    assert result.masks is None and len(result) > 0
    assert pipeline.forwards["sam_image_encoder"] == 0 and pipeline.forwards["sam_mask_decoder"] == 0


def test_threshold_change_runs_no_model(pipeline, photo):
    everything = _all(pipeline, photo)
    before = dict(pipeline.forwards), pipeline.stats.snapshot()
    threshold = float(np.median(everything.scores))
    fewer = pipeline.segment(photo, PROMPT, box_threshold=threshold, text_threshold=0.3, nms_iou=0.5)
    assert 0 < len(fewer) < len(everything)
    assert (dict(pipeline.forwards), pipeline.stats.snapshot()) == before  # nothing ran
    assert fewer.cache == {"raw_detections": True, "masks": True}
    # Same boxes, same masks as in the full result.
    for box, mask in zip(fewer.boxes, fewer.masks):
        j = int(np.flatnonzero((everything.boxes == box).all(1))[0])
        np.testing.assert_array_equal(mask, everything.masks[j])


def test_lowering_the_threshold_decodes_only_new_boxes(pipeline, photo):
    scores = pipeline.detect(photo, PROMPT, box_threshold=0.0, text_threshold=0.0).scores
    high, low = float(np.quantile(scores, 0.75)), float(np.quantile(scores, 0.25))
    first = pipeline.segment(photo, PROMPT, box_threshold=high, text_threshold=0.0)
    decoded = pipeline.stats.sam_masks_decoded
    assert decoded == len(first)
    second = pipeline.segment(photo, PROMPT, box_threshold=low, text_threshold=0.0)
    assert pipeline.stats.sam_masks_decoded == decoded + len(second) - len(first)
    assert pipeline.stats.sam_image_encodes == 1 and pipeline.forwards["sam_image_encoder"] == 1
    assert pipeline.stats.sam_decoder_calls == 2 and pipeline.forwards["sam_mask_decoder"] == 2
    assert second.cache["masks"] is False and second.cache["sam_embedding"] is True


def test_new_prompt_on_seen_image_skips_both_image_encoders(pipeline, photo):
    _all(pipeline, photo)
    assert pipeline.forwards["swin"] == 1 and pipeline.forwards["sam_image_encoder"] == 1
    result = _all(pipeline, photo, prompt="green circle . shadow .")
    assert pipeline.forwards["swin"] == 1 and pipeline.forwards["sam_image_encoder"] == 1
    assert pipeline.stats.detector_image_encodes == 1 and pipeline.stats.sam_image_encodes == 1
    assert pipeline.stats.detector_text_runs == 2 and pipeline.forwards["bert"] >= 2
    assert result.cache["raw_detections"] is False and result.cache["image_features"] is True
    assert result.prompt_phrases == ["green circle", "shadow"]
    # Same prompt written differently is the same cache entry.
    again = _all(pipeline, photo, prompt="  Green Circle.shadow  ")
    assert again.cache["raw_detections"] is True and pipeline.stats.detector_text_runs == 2


def test_encode_image_ahead_of_the_prompt(pipeline, photo):
    assert pipeline.encode_image(photo) == {"image_features": False, "sam_embedding": False}
    assert pipeline.encode_image(photo) == {"image_features": True, "sam_embedding": True}
    result = _all(pipeline, photo)
    assert result.cache["image_features"] is True and result.cache["sam_embedding"] is True
    assert pipeline.forwards["swin"] == 1 and pipeline.forwards["sam_image_encoder"] == 1


def test_same_pixels_other_container_hit_the_cache(pipeline, photo, tmp_path):
    _all(pipeline, photo)
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    assert _all(pipeline, str(path)).cache["raw_detections"] is True
    assert _all(pipeline, Image.fromarray(photo)).cache["raw_detections"] is True
    assert pipeline.stats.model_calls == 4  # Swin, text, SAM encoder, SAM decoder: once each


def test_nms_removes_overlaps_across_phrases(pipeline, photo):
    everything = _all(pipeline, photo)
    for iou in (0.3, 0.7):
        kept = _all(pipeline, photo, nms_iou=iou)
        pairwise = torchvision.ops.box_iou(torch.from_numpy(kept.boxes), torch.from_numpy(kept.boxes))
        assert (pairwise.fill_diagonal_(0) <= iou + 1e-6).all()
        expected = torchvision.ops.nms(torch.from_numpy(everything.boxes), torch.from_numpy(everything.scores), iou)
        np.testing.assert_array_equal(kept.boxes, everything.boxes[expected.numpy()])
        assert kept.masks.shape[0] == len(kept)
    off = _all(pipeline, photo, nms_iou=1.0)
    np.testing.assert_array_equal(off.boxes, everything.boxes)


def test_class_agnostic_nms_unit():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.5, 0.9, 0.4], np.float32)
    assert class_agnostic_nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert class_agnostic_nms(boxes, scores, None).tolist() == [1, 0, 2]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"box_threshold": 1.5}, InvalidThresholdError),
        ({"text_threshold": -0.1}, InvalidThresholdError),
        ({"box_threshold": float("nan")}, InvalidThresholdError),
        ({"nms_iou": 2.0}, InvalidThresholdError),
        ({"prompt": "  . . "}, InvalidPromptError),
        ({"prompt": ""}, InvalidPromptError),
        ({"image": None}, InvalidImageError),
        ({"image": b"\x89PNG broken"}, InvalidImageError),
        ({"image": np.zeros((1, 1, 3), np.uint8)}, InvalidImageError),
    ],
)
def test_bad_input_is_a_typed_error_before_any_model_runs(pipeline, photo, kwargs, error):
    call = {"image": photo, "prompt": PROMPT, "box_threshold": 0.3, "text_threshold": 0.25, **kwargs}
    with pytest.raises(error):
        pipeline.segment(**call)
    assert pipeline.stats.model_calls == 0 and sum(pipeline.forwards.values()) == 0


def test_long_prompt_is_chunked_not_truncated(pipeline, photo):
    words = [f"thing{i}" for i in range(150)]  # ~ 4 tokens each with the ".": 600 tokens, 3 chunks
    result = pipeline.detect(photo, " . ".join(words), box_threshold=0.0, text_threshold=0.0)
    assert len(result.prompt_phrases) == 150
    assert pipeline.forwards["swin"] == 1 and pipeline.forwards["bert"] == 3  # one image, three text chunks
    assert len(result) > 0 and set(result.phrases) <= set(words)


def test_segment_without_sam_says_what_to_do(tiny_detector, photo):
    boxes_only = GroundedSAM(tiny_detector, None)
    with pytest.raises(WeightsUnavailableError, match="No SAM model"):
        boxes_only.segment(photo, PROMPT)
    assert len(boxes_only.detect(photo, PROMPT, 0.0, 0.0)) > 0


def test_rgba_and_rotated_inputs_come_out_upright(pipeline, photo):
    _all(pipeline, photo)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    assert _all(pipeline, rgba).cache["raw_detections"] is True  # opaque RGBA == the RGB pixels
    rotated = pipeline.detect(Image.fromarray(photo).transpose(Image.Transpose.ROTATE_90), PROMPT, 0.0, 0.0)
    assert rotated.image_size == (120, 160)


def test_huge_image_is_downscaled_and_noted(tiny_detector, tiny_segmenter, photo):
    from grounding.images import ImageLimits

    small_limit = GroundedSAM(tiny_detector, tiny_segmenter, image_limits=ImageLimits(max_side=80))
    result = small_limit.segment(photo, PROMPT, 0.0, 0.0)
    assert result.image_size == (80, 60) and result.original_size == (160, 120)
    assert result.masks.shape[1:] == (60, 80) and (result.boxes[:, 2] <= 80).all()
    assert any("downscaled" in note for note in result.notes)


def test_concurrent_users_get_their_own_results(tiny_detector, tiny_segmenter, photo):
    other = np.ascontiguousarray(photo[::-1])
    reference = GroundedSAM(tiny_detector, tiny_segmenter)
    expected = {name: _all(reference, image) for name, image in (("a", photo), ("b", other))}

    shared = GroundedSAM(tiny_detector, tiny_segmenter)
    results: dict[int, tuple[str, GroundedResult]] = {}
    errors: list[BaseException] = []

    def user(i: int) -> None:
        name, image = ("a", photo) if i % 2 == 0 else ("b", other)
        try:
            results[i] = (name, _all(shared, image))
        except BaseException as err:  # noqa: BLE001 - surfaced by the assert below
            errors.append(err)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for name, result in results.values():
        np.testing.assert_array_equal(result.boxes, expected[name].boxes)
        np.testing.assert_array_equal(result.masks, expected[name].masks)
    assert shared.stats.detector_image_encodes == 2 and shared.stats.sam_image_encodes == 2


def test_memory_stays_bounded_over_many_images(tiny_detector, tiny_segmenter):
    config = CacheConfig(image_entries=1, raw_entries=2, mask_entries=10, mask_bytes=10 * 120 * 160)
    grounded = GroundedSAM(tiny_detector, tiny_segmenter, cache_config=config)
    rng = np.random.default_rng(1)
    for _ in range(4):
        grounded.segment(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), PROMPT, 0.0, 0.0)
    summary = grounded.caches.summary()
    assert summary["image_features"]["entries"] == 1 and summary["sam_embeddings"]["entries"] == 1
    assert summary["raw_detections"]["entries"] == 2
    assert summary["masks"]["entries"] <= 10 and summary["masks"]["bytes"] <= 10 * 120 * 160
    assert summary["image_features"]["evictions"] == 3 and summary["masks"]["evictions"] > 0


def test_from_names_loads_local_checkpoints(tmp_path, tiny_sam_checkpoint, photo):
    from tests.fixtures.dino import tiny_official_checkpoint

    detector_path = tmp_path / "tiny_dino.pth"
    tiny_official_checkpoint(detector_path)
    grounded = GroundedSAM.from_names(
        str(detector_path), sam="tiny", sam_checkpoint=tiny_sam_checkpoint, device="cpu", download=False
    )
    result = _all(grounded, photo)
    assert len(result) > 0 and result.masks.shape[1:] == (120, 160)
    assert grounded.describe()["device"] == "cpu"
