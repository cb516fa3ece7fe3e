"""grounding.precision: the policy ("auto" per device, with mocked capabilities), the inference context and the
fp32 islands."""
import pytest
import torch

from grounding import precision
from grounding.precision import autocast_dtype, fp32_region, inference_precision, resolve_precision


def test_precision_names():
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        resolve_precision("int8", "cpu")
    with pytest.raises(ValueError, match="fp16 is for GPUs"):
        resolve_precision("fp16", "cpu")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"


def test_auto_on_a_cpu_follows_its_native_bf16(monkeypatch, tmp_path):
    with_bf16, without = tmp_path / "bf16", tmp_path / "plain"
    with_bf16.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
    without.write_text("flags\t\t: fpu sse avx2 avx512f\n")
    assert precision.cpu_has_native_bf16(str(with_bf16)) and not precision.cpu_has_native_bf16(str(without))
    assert not precision.cpu_has_native_bf16(str(tmp_path / "not_linux"))
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve_precision("auto", "cpu") == expected and resolve_precision(None, "cpu") == expected


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_precision("fp16", "cuda") == "fp16"


def test_bf16_context_autocasts_matmuls_with_fp32_islands():
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    with inference_precision("cpu", "bf16"):
        assert torch.is_inference_mode_enabled()
        assert (x @ w).dtype == torch.bfloat16
        with fp32_region("cpu"):
            assert (x @ w).dtype == torch.float32
    assert not torch.is_inference_mode_enabled()


def test_fp32_context_changes_no_dtype():
    with inference_precision("cpu", "fp32"):
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == torch.float32
