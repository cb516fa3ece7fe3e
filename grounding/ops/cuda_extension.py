"""Build and load the compiled multi-scale deformable attention op (csrc/), on demand, never at import.

Order on the first GPU call (`extension_status()`):
1. `GROUNDING_DISABLE_CUDA_OP=1` -> unavailable (forced PyTorch path).
2. A library built ahead of time next to this package (`python setup.py build_ext --inplace` or
   `pip install -e . --no-build-isolation`), i.e. `grounding/_C*.so`.
3. A just-in-time build with `torch.utils.cpp_extension.load` (needs nvcc and ninja), cached under
   `$GROUNDING_CACHE_DIR` or `~/.cache/grounding/torch_extensions/<torch version>-<cuda version>/`.
Any failure becomes an `ExtensionStatus(available=False, reason=...)` and one warning line; the caller then
uses the PyTorch path. Loading registers `torch.ops.grounding_ops.ms_deform_attn` plus its autograd formula
and fake (shape) kernel, so autograd and torch.compile see one opaque op.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DISABLE_ENV = "GROUNDING_DISABLE_CUDA_OP"
CACHE_ENV = "GROUNDING_CACHE_DIR"
LIBRARY_NAMESPACE = "grounding_ops"
EXTENSION_NAME = "grounding_ms_deform_attn"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # grounding/
CSRC_DIR = PACKAGE_DIR.parent / "csrc"
SOURCES = ("ms_deform_attn_ops.cpp", "ms_deform_attn_cuda.cu")
NVCC_FLAGS = ("-O3", "--use_fast_math")


@dataclass(frozen=True)
class ExtensionStatus:
    """Whether the compiled op can be used, and why (shown by `grounding.ops.backend_reason`)."""

    available: bool
    reason: str


class ExtensionUnavailable(RuntimeError):
    """The compiled op cannot be built or loaded here; the message says why."""


def disabled_by_env() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, the toolkit around nvcc, or /usr/local/cuda.

    torch's own guess takes dirname(dirname(which nvcc)), which is wrong when nvcc on PATH is a wrapper
    (e.g. /usr/local/bin/nvcc -> /usr/local/cuda-13.0/bin/nvcc); we keep the first candidate that has both
    bin/nvcc and include/cuda_runtime.h.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if home and (Path(home) / "bin" / "nvcc").exists() and (Path(home) / "include" / "cuda_runtime.h").exists():
            return str(Path(home))
    return None


def build_directory() -> Path:
    """Per torch/CUDA version, so a torch upgrade never loads a stale library."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "grounding")
    return root / "torch_extensions" / f"torch{torch.__version__}-cuda{torch.version.cuda}".replace("+", "_")


def prebuilt_library() -> Path | None:
    """A library built ahead of time by setup.py (`grounding/_C*.so`), if any."""
    found = sorted(PACKAGE_DIR.glob("_C*.so")) + sorted(PACKAGE_DIR.glob("_C*.pyd"))
    return found[0] if found else None


def is_registered() -> bool:
    """True once some library has registered `torch.ops.grounding_ops.ms_deform_attn` in this process."""
    return hasattr(getattr(torch.ops, LIBRARY_NAMESPACE), "ms_deform_attn")


def build_extension(
    build_dir: Path | None = None, cuda_arch_flags: tuple[str, ...] = (), verbose: bool = False
) -> Path:
    """Compile csrc/ with ninja into `build_dir` and load it; returns the library path.

    `cuda_arch_flags` (e.g. `("-gencode=arch=compute_90,code=sm_90",)`) overrides torch's choice (the
    visible GPUs, or $TORCH_CUDA_ARCH_LIST). Raises ExtensionUnavailable when the toolchain is missing,
    the build fails, or the built library cannot be loaded (then `build_dir` still holds it).
    """
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise ExtensionUnavailable(f"torch {torch.__version__} is built without CUDA")
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise ExtensionUnavailable("no CUDA toolkit (nvcc) found; set CUDA_HOME")
    sources = [CSRC_DIR / name for name in SOURCES]
    if not all(path.is_file() for path in sources):
        raise ExtensionUnavailable(f"the CUDA sources are not in {CSRC_DIR} (use a source checkout)")
    if not cpp_extension.is_ninja_available():
        raise ExtensionUnavailable("ninja is not installed (pip install ninja)")
    os.environ["CUDA_HOME"] = cuda_home
    cpp_extension.CUDA_HOME = cuda_home  # torch resolved it at import, possibly to a wrapper's parent
    build_dir = Path(build_dir or build_directory())
    build_dir.mkdir(parents=True, exist_ok=True)
    # torch < 2.9 ignores -gencode flags when it picks its own arch list, and with no GPU visible that list is
    # empty (IndexError inside torch); naming the same archs in TORCH_CUDA_ARCH_LIST works on every version.
    arches = ";".join(f"{m[0]}.{m[1:]}" for m in re.findall(r"compute_(\d+)", " ".join(cuda_arch_flags)))
    set_arches = bool(arches) and not os.environ.get("TORCH_CUDA_ARCH_LIST")
    if set_arches:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arches
    try:
        cpp_extension.load(
            name=EXTENSION_NAME,
            sources=[str(path) for path in sources],
            extra_cflags=["-O3"],
            extra_cuda_cflags=[*NVCC_FLAGS, *cuda_arch_flags],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=verbose,
        )
    except Exception as err:  # build or dlopen failure; the message is what the user needs
        raise ExtensionUnavailable(f"building the CUDA op in {build_dir} failed: {_first_line(err)}") from err
    finally:
        if set_arches:
            del os.environ["TORCH_CUDA_ARCH_LIST"]
    register_python_parts()
    return build_dir / f"{EXTENSION_NAME}.so"


def load_library(path: Path) -> None:
    """Load an already built library and register the Python-side parts (autograd, fake kernels)."""
    if not is_registered():
        try:
            torch.ops.load_library(str(path))
        except Exception as err:
            raise ExtensionUnavailable(f"loading {path} failed: {_first_line(err)}") from err
    register_python_parts()


@functools.cache
def register_python_parts() -> None:
    """Autograd formula and fake kernels for the C++ schema (once per process)."""
    forward = f"{LIBRARY_NAMESPACE}::ms_deform_attn"
    backward = f"{LIBRARY_NAMESPACE}::ms_deform_attn_backward"
    torch.library.register_fake(forward)(_forward_fake)
    torch.library.register_fake(backward)(_backward_fake)
    torch.library.register_autograd(forward, _backward, setup_context=_setup_context)


def _forward_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    B, _, M, D = value.shape
    return value.new_empty((B, sampling_locations.shape[1], M * D))  # [B, Q, M * D]


def _backward_fake(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = torch.ops.grounding_ops.ms_deform_attn_backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    return grad_value, None, None, grad_locations, grad_weights


@functools.cache
def extension_status() -> ExtensionStatus:
    """Make the compiled op usable if possible (first call may compile for ~1-2 min); cached per process."""
    if disabled_by_env():
        return ExtensionStatus(False, f"disabled by {DISABLE_ENV}=1")
    if torch.version.cuda is None or not torch.cuda.is_available():
        return ExtensionStatus(False, "no CUDA device")
    try:
        if is_registered():
            register_python_parts()
            status = ExtensionStatus(True, "compiled op already loaded")
        elif (prebuilt := prebuilt_library()) is not None:
            load_library(prebuilt)
            status = ExtensionStatus(True, f"prebuilt {prebuilt.name}")
        else:
            logger.info("grounding: compiling the CUDA deformable-attention op (once per torch version, ~1 min)")
            path = build_extension()
            status = ExtensionStatus(True, f"built just in time in {path.parent}")
        self_test()
        return status
    except Exception as err:  # never crash the caller: fall back and say why, once
        status = ExtensionStatus(False, _first_line(err))
    logger.warning("grounding: CUDA deformable-attention op unavailable (%s); using the PyTorch path", status.reason)
    return status


def self_test(device: torch.device | str = "cuda") -> None:
    """Run the loaded op once on `device` against the PyTorch path; catches a library built for another GPU
    architecture ("no kernel image is available") or a broken build before the model relies on it."""
    from grounding.ops.ms_deform_attn_torch import ms_deform_attn_torch

    gen = torch.Generator().manual_seed(0)
    spatial_shapes = torch.tensor([[4, 5], [2, 3]])  # [L, 2]
    level_start_index = torch.tensor([0, 20])
    value = torch.randn(1, 26, 2, 8, generator=gen)  # [B, S, M, D]
    locations = torch.rand(1, 3, 2, 2, 2, 2, generator=gen)  # [B, Q, M, L, P, 2]
    weights = torch.rand(1, 3, 2, 2, 2, generator=gen)  # [B, Q, M, L, P]
    try:
        inputs = [t.to(device) for t in (value, spatial_shapes, level_start_index, locations, weights)]
        out = getattr(torch.ops, LIBRARY_NAMESPACE).ms_deform_attn(*inputs)
        torch.cuda.synchronize(device)
    except Exception as err:
        raise ExtensionUnavailable(
            f"the compiled op does not run on this GPU ({_first_line(err)}); rebuild it for this GPU "
            "(delete grounding/_C*.so or rerun `python setup.py build_ext --inplace`)"
        ) from err
    error = (out.cpu() - ms_deform_attn_torch(value, spatial_shapes, level_start_index, locations, weights)).abs()
    if not error.max() <= 1e-4:
        raise ExtensionUnavailable(f"the compiled op disagrees with the PyTorch path (max error {error.max():.2e})")


def _first_line(err: BaseException) -> str:
    """The headline of an error plus, for compiler output, its first `error` line."""
    lines = (str(err).strip() or type(err).__name__).splitlines()
    detail = next((line.strip() for line in lines[1:] if "error" in line.lower()), None)
    return f"{lines[0]}: {detail}" if detail else lines[0]
