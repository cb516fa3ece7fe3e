"""SAM 2.1 and SAM-HQ behind the segmenter contract: tiny random models in transformers' layout load by folder,
and their masks equal the library's own path (processor + model on the image and all boxes + post_process_masks)
for the same boxes, also when the memory budget splits the boxes into several decoder calls."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from grounding.cache import image_key
from grounding.errors import WeightsUnavailableError
from grounding.pipeline import GroundedSAM
from grounding.segmenters import SEGMENTER_NAMES, load_segmenter
from tests.fixtures.segmenters import save_tiny, tiny_processor

BOXES = np.array([[10, 20, 80, 90], [50, 50, 150, 110], [0, 0, 159, 119], [70, 10, 100, 40]], np.float32)


@pytest.fixture(scope="module", params=["sam2", "sam_hq"])
def family_and_segmenter(request, tmp_path_factory):
    folder = save_tiny(request.param, tmp_path_factory.mktemp(request.param) / f"tiny_{request.param}")
    return request.param, load_segmenter(str(folder), device="cpu")


def library_masks(family: str, model, image: np.ndarray, boxes: np.ndarray, multimask: bool):
    """The library's own path for one image and these boxes: (masks [N, K, H, W] bool, iou [N, K])."""
    processor = tiny_processor(family)
    inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.inference_mode():
        outputs = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"],
                        multimask_output=multimask)
    extra = [inputs["reshaped_input_sizes"]] if family == "sam_hq" else []
    masks = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"], *extra)[0]
    return masks.bool(), outputs.iou_scores[0]


@pytest.mark.parametrize("multimask", [False, True])
def test_masks_equal_the_librarys_own_path(family_and_segmenter, photo, multimask):
    family, segmenter = family_and_segmenter
    embedding = segmenter.encode_image(photo)
    ours = segmenter.decode_boxes(embedding, BOXES, multimask=multimask)
    masks, iou = library_masks(family, segmenter.model, photo, BOXES, multimask)
    best = iou.argmax(dim=1)
    expected = masks[torch.arange(len(BOXES)), best].numpy()
    assert ours.masks.shape == (len(BOXES), *photo.shape[:2]) and ours.masks.dtype == bool
    assert np.array_equal(ours.masks, expected), (family, (ours.masks != expected).sum())
    assert np.allclose(ours.iou_scores, iou[torch.arange(len(BOXES)), best].numpy(), atol=1e-6)
    # A memory budget of one box per call gives the same masks as one batched call.
    one_by_one = segmenter.decode_boxes(embedding, BOXES, multimask=multimask, memory_budget=1)
    assert np.array_equal(one_by_one.masks, ours.masks)
    assert segmenter.decode_boxes(embedding, BOXES[:0]).masks.shape == (0, *photo.shape[:2])


def test_the_pipeline_caches_the_embedding(family_and_segmenter, tiny_detector, photo):
    family, segmenter = family_and_segmenter
    pipeline = GroundedSAM(tiny_detector, segmenter)
    first = pipeline.segment(photo, "red box . blue box", box_threshold=0.0)
    again = pipeline.segment(photo, "red box . blue box", box_threshold=0.0, nms_iou=0.5)
    assert pipeline.stats.sam_image_encodes == 1 and first.masks.shape[1:] == photo.shape[:2]
    assert again.cache["masks"] and pipeline.describe()["sam"] == f"tiny_{family}"


def test_bf16_policy_runs_the_encoder_in_bf16_and_decodes_in_fp32(family_and_segmenter, tiny_detector, photo):
    family, segmenter = family_and_segmenter
    fp32 = GroundedSAM(tiny_detector, segmenter, precision="fp32").segment(photo, "red box . blue box", box_threshold=0.0)
    bf16_pipeline = GroundedSAM(tiny_detector, segmenter, precision="bf16")
    bf16 = bf16_pipeline.segment(photo, "red box . blue box", box_threshold=0.0)
    assert np.array_equal(fp32.boxes, bf16.boxes)  # the detector stays fp32
    embedding = bf16_pipeline.caches.sam_embeddings.get((bf16_pipeline.segmenter_id, image_key(photo)))
    assert all(feature.dtype == torch.float32 for feature in embedding.features)
    agreement = np.mean([np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1) for a, b in zip(fp32.masks, bf16.masks)])
    assert agreement > 0.9, (family, agreement)


def test_names_and_offline_errors(tmp_path):
    assert {"sam2.1_hiera_tiny", "sam2.1_hiera_large", "sam_hq_vit_b", "sam_hq_vit_h", "vit_b"} <= set(SEGMENTER_NAMES)
    with pytest.raises(WeightsUnavailableError) as error:  # HF_HUB_OFFLINE=1 in tests/conftest.py
        load_segmenter("sam2.1_hiera_tiny", device="cpu")
    message = str(error.value)
    assert "facebook/sam2.1-hiera-tiny" in message and "--sam /path/to/folder" in message
    with pytest.raises(WeightsUnavailableError, match="choose one of"):
        load_segmenter("sam_hq_vit_xl", device="cpu")
