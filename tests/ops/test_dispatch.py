"""Which implementation `grounding.ops.ms_deform_attn` picks, and the fallback when the CUDA op fails."""
import importlib
import logging

import pytest
import torch

from grounding.ops import backend, cuda_extension, ms_deform_attn
from grounding.ops.ms_deform_attn import backend_reason
from grounding.ops.ms_deform_attn_torch import ms_deform_attn_torch
from tests.ops.reference import random_inputs


@pytest.fixture
def fresh_status():
    """Forget the per-process extension status before and after the test."""
    cuda_extension.extension_status.cache_clear()
    yield
    cuda_extension.extension_status.cache_clear()


@pytest.fixture
def pretend_gpu(monkeypatch, fresh_status):
    """A machine that reports a CUDA device and has no op loaded or prebuilt yet."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "13.0")
    monkeypatch.setattr(cuda_extension, "is_registered", lambda: False)
    monkeypatch.setattr(cuda_extension, "prebuilt_library", lambda: None)
    monkeypatch.delenv(cuda_extension.DISABLE_ENV, raising=False)


def test_cpu_tensors_use_the_pytorch_path(monkeypatch):
    def must_not_be_called():
        raise AssertionError("CPU tensors must not touch the CUDA extension")

    monkeypatch.setattr(cuda_extension, "extension_status", must_not_be_called)
    inputs = random_inputs([(3, 5), (2, 2)], dtype=torch.float32)
    torch.testing.assert_close(ms_deform_attn(*inputs), ms_deform_attn_torch(*inputs), rtol=0, atol=0)
    assert backend("cpu") == "pytorch"
    assert backend_reason("cpu") == "pytorch (cpu tensors)"


def test_default_device_without_gpu_is_pytorch():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert backend() == "pytorch"


def test_cuda_device_without_gpu_reports_why(fresh_status):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert backend("cuda") == "pytorch"
    assert backend_reason("cuda") in {"pytorch (no CUDA device)", f"pytorch (disabled by {cuda_extension.DISABLE_ENV}=1)"}


def test_env_switch_forces_pytorch(pretend_gpu, monkeypatch):
    monkeypatch.setenv(cuda_extension.DISABLE_ENV, "1")
    monkeypatch.setattr(cuda_extension, "build_extension", lambda *a, **k: pytest.fail("must not build"))
    assert backend("cuda:0") == "pytorch"
    assert backend_reason("cuda:0") == f"pytorch (disabled by {cuda_extension.DISABLE_ENV}=1)"


def test_failing_build_falls_back_with_one_log_line(pretend_gpu, monkeypatch, caplog):
    calls = []

    def failing_build(*args, **kwargs):
        calls.append(1)
        raise cuda_extension.ExtensionUnavailable("building the CUDA op failed: nvcc exploded")

    monkeypatch.setattr(cuda_extension, "build_extension", failing_build)
    with caplog.at_level(logging.WARNING, logger=cuda_extension.__name__):
        for _ in range(3):
            assert backend("cuda") == "pytorch"
        reason = backend_reason("cuda")
    assert calls == [1]
    assert reason == "pytorch (building the CUDA op failed: nvcc exploded)"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "using the PyTorch path" in warnings[0].getMessage()
    assert "nvcc exploded" in warnings[0].getMessage()


def test_unexpected_error_while_loading_never_escapes(pretend_gpu, monkeypatch, caplog, tmp_path):
    library = tmp_path / "_C.so"
    library.write_bytes(b"not a shared library")
    monkeypatch.setattr(cuda_extension, "prebuilt_library", lambda: library)
    with caplog.at_level(logging.WARNING, logger=cuda_extension.__name__):
        status = cuda_extension.extension_status()
    assert not status.available
    assert status.reason.startswith(f"loading {library} failed")
    assert len(caplog.records) == 1


def test_library_that_cannot_run_on_the_gpu_falls_back(pretend_gpu, monkeypatch, caplog):
    # Built fine, but the first launch fails (here: no driver; on users' machines e.g. a prebuilt library
    # for another GPU architecture). The self-test catches it before the model relies on the op.
    monkeypatch.setattr(cuda_extension, "build_extension", lambda: cuda_extension.build_directory() / "op.so")
    with caplog.at_level(logging.WARNING, logger=cuda_extension.__name__):
        assert backend("cuda") == "pytorch"
    assert "the compiled op does not run on this GPU" in backend_reason("cuda")
    assert len(caplog.records) == 1


def test_working_build_selects_the_extension(pretend_gpu, monkeypatch):
    monkeypatch.setattr(cuda_extension, "build_extension", lambda: cuda_extension.build_directory() / "op.so")
    monkeypatch.setattr(cuda_extension, "self_test", lambda: None)
    assert backend("cuda") == "cuda-extension"
    assert backend_reason("cuda").startswith("cuda-extension (built just in time in ")
    assert backend("cpu") == "pytorch"


@pytest.mark.parametrize("available", [True, False])
def test_backend_choice_compiles_without_graph_break(monkeypatch, available):
    # The dispatcher asks `_extension_available()` inside the model's forward; torch.compile must take it as
    # a constant instead of tracing the loader, which builds, loads and logs (logging would break the graph).
    dispatcher = importlib.import_module("grounding.ops.ms_deform_attn")

    def status_that_logs():
        logging.getLogger(cuda_extension.__name__).info("loader ran")
        return cuda_extension.ExtensionStatus(available, "test")

    monkeypatch.setattr(cuda_extension, "extension_status", status_that_logs)

    def pick(x):
        return x + 1 if dispatcher._extension_available() else x - 1

    torch._dynamo.reset()
    compiled = torch.compile(pick, backend="eager", fullgraph=True)
    assert torch.equal(compiled(torch.zeros(3)), torch.full((3,), 1.0 if available else -1.0))


def test_build_without_sources_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "13.0")
    monkeypatch.setattr(cuda_extension, "find_cuda_home", lambda: "/usr/local/cuda")
    monkeypatch.setattr(cuda_extension, "CSRC_DIR", tmp_path)
    with pytest.raises(cuda_extension.ExtensionUnavailable, match="the CUDA sources are not in"):
        cuda_extension.build_extension(tmp_path / "build")
