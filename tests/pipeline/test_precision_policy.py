"""The precision policy in the pipeline: cache keys carry the segmenter's precision, fp32 gives the plain models'
outputs bit for bit, and bf16 gives the same detections and masks as fp32 on shapes scenes (shipped models)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from grounding.agreement import compare_detections
from grounding.cache import image_key
from grounding.pipeline import DETECTOR_PRECISION, GroundedSAM
from grounding.segmenters.sam import SamSegmenter
from grounding.shipped import SAM_FILE, load_shapes_pipeline, shapes_dir
from grounding.train.shapes import ShapesConfig, render_scene

BOX_THRESHOLD, TEXT_THRESHOLD = 0.35, 0.25
EDGE = 0.03  # a detection this close to the box threshold may fairly exist in one run only


def shapes_scene(index: int, seed: int = 4000) -> tuple[np.ndarray, str]:
    """A freshly generated scene (a seed no training used) and all its categories as the prompt."""
    image, instances = render_scene(np.random.default_rng([seed, index]), ShapesConfig(image_size=(256, 256)))
    return np.asarray(image), " . ".join(sorted({instance.category for instance in instances}))


@pytest.fixture(scope="module")
def shapes_fp32():
    return load_shapes_pipeline("cpu", precision="fp32")


@pytest.fixture(scope="module")
def shapes_bf16():
    return load_shapes_pipeline("cpu", precision="bf16")


def test_precision_is_checked_and_described(tiny_detector, tiny_segmenter):
    with pytest.raises(ValueError, match="precision must be one of"):
        GroundedSAM(tiny_detector, tiny_segmenter, precision="half")
    pipeline = GroundedSAM(tiny_detector, tiny_segmenter, precision="bf16")
    assert pipeline.describe()["precision"] == "bf16"
    assert pipeline.with_segmenter(None).precision == "bf16"


def test_segmenter_cache_keys_carry_the_precision(tiny_detector, tiny_segmenter, photo):
    fp32 = GroundedSAM(tiny_detector, tiny_segmenter, precision="fp32")
    bf16 = GroundedSAM(tiny_detector, tiny_segmenter, caches=fp32.caches, precision="bf16")
    assert fp32.detector_id == bf16.detector_id  # the detector runs fp32 under every policy
    assert fp32.segmenter_id != bf16.segmenter_id
    fp32.segment(photo, "red block . blue block .", 0.0, 0.0)
    bf16.segment(photo, "red block . blue block .", 0.0, 0.0)
    assert bf16.stats.sam_image_encodes == 1  # fp32's embedding is not reused in bf16
    assert bf16.stats.detector_image_encodes == 0 and bf16.stats.detector_text_runs == 0  # shared, fp32 both
    fp32_again = GroundedSAM(tiny_detector, tiny_segmenter, caches=fp32.caches, precision="fp32")
    fp32_again.segment(photo, "red block . blue block .", 0.0, 0.0)
    assert fp32_again.stats.sam_image_encodes == 0


def test_fp32_is_the_plain_models_bit_for_bit(shapes_fp32):
    """fp32 runs no autocast: the detector's own detect() and the package's SAM attention give the same bits."""
    package_sam = SamSegmenter.from_pretrained("shapes", checkpoint=shapes_dir() / SAM_FILE, device="cpu",
                                               sdpa_attention=False)
    assert DETECTOR_PRECISION == "fp32"
    for index in range(3):
        pixels, prompt = shapes_scene(index)
        result = shapes_fp32.segment(pixels, prompt, BOX_THRESHOLD, TEXT_THRESHOLD)
        assert len(result) > 0
        direct = shapes_fp32.detector.detect(pixels, prompt, BOX_THRESHOLD, TEXT_THRESHOLD)
        for box, score, phrase in zip(result.boxes, result.scores, result.phrases):
            same = [j for j in range(len(direct)) if np.array_equal(direct.boxes[j], box)]
            assert same and direct.scores[same[0]] == score and direct.phrases[same[0]] == phrase
        masks = package_sam.decode_boxes(package_sam.encode_image(pixels), result.boxes).masks
        np.testing.assert_array_equal(result.masks, masks)


def test_bf16_gives_the_fp32_detections_and_masks(shapes_fp32, shapes_bf16):
    pixels, _ = shapes_scene(0)
    embeddings = []
    for pipeline in (shapes_fp32, shapes_bf16):
        pipeline.encode_image(pixels)
        embeddings.append(pipeline.caches.sam_embeddings.get((pipeline.segmenter_id, image_key(pixels))).features)
    assert not torch.equal(*embeddings)  # the SAM encoder did run in bf16
    pairs = 0
    for index in range(6):
        pixels, prompt = shapes_scene(index)
        fp32 = shapes_fp32.segment(pixels, prompt, BOX_THRESHOLD, TEXT_THRESHOLD)
        bf16 = shapes_bf16.segment(pixels, prompt, BOX_THRESHOLD, TEXT_THRESHOLD)
        agreement = compare_detections(fp32, bf16)
        pairs += len(agreement.pairs)
        assert all(abs(score - BOX_THRESHOLD) <= EDGE for score in agreement.unpaired_scores), (index, agreement)
        assert min(agreement.box_ious, default=1) >= 0.95
        assert max(agreement.score_diffs, default=0) <= 0.03
        assert min(agreement.mask_ious, default=1) >= 0.95
    assert pairs >= 10
