"""The detector under bf16 autocast keeps its rounding-sensitive outputs in fp32."""
import torch

from grounding.precision import inference_precision
from tests.fixtures.dino import tiny_model


def test_bf16_autocast_returns_fp32_boxes_and_logits():
    model = tiny_model(seed=2)
    input_ids = torch.tensor([[101, 4937, 1012, 3899, 1012, 102]])
    attention_mask = torch.ones_like(input_ids)
    pixels = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    with inference_precision("cpu", "fp32"):
        full = model(input_ids, attention_mask, pixel_values=pixels)
    with inference_precision("cpu", "bf16"):
        half = model(input_ids, attention_mask, pixel_values=pixels)
    assert half.pred_logits.dtype == half.pred_boxes.dtype == torch.float32
    assert half.enc_outputs["pred_boxes"].dtype == torch.float32
    assert torch.equal(torch.isinf(half.pred_logits), torch.isinf(full.pred_logits))  # same valid tokens
    assert ((half.pred_boxes >= 0) & (half.pred_boxes <= 1)).all()
