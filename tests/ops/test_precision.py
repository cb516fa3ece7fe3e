"""grounding.precision: precision names, defaults, the inference context and fp32 islands (CPU-checkable parts)."""
import pytest
import torch

from grounding.precision import autocast_dtype, default_precision, float32_region, inference_precision


def test_precision_names():
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype("int8")


def test_cpu_defaults_to_fp32():
    assert default_precision("cpu") == "fp32"


def test_bf16_context_autocasts_matmuls_and_restores_tf32_flags():
    before = torch.backends.cuda.matmul.allow_tf32
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    with inference_precision("cpu", "bf16"):
        assert torch.is_inference_mode_enabled()
        assert (x @ w).dtype == torch.bfloat16
        with float32_region(x):
            assert (x @ w).dtype == torch.float32
    assert torch.backends.cuda.matmul.allow_tf32 == before
    assert not torch.is_inference_mode_enabled()


def test_fp32_context_changes_no_dtype():
    with inference_precision("cpu", "fp32"):
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == torch.float32
