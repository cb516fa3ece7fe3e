"""Optional ahead-of-time build of the CUDA deformable-attention op into grounding/_C*.so.

    python setup.py build_ext --inplace             # or: pip install -e . --no-build-isolation

The project itself installs with `pip install -r requirements.txt` and needs none of this: without a
prebuilt library the op is compiled just in time on the first GPU call, and without a CUDA toolkit the
PyTorch path is used (see grounding/ops/cuda_extension.py). TORCH_CUDA_ARCH_LIST picks the GPU
architectures (default: the visible GPUs).
"""
import os

from setuptools import find_packages, setup

from grounding import __version__
from grounding.ops.cuda_extension import CSRC_DIR, NVCC_FLAGS, SOURCES, find_cuda_home

DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"  # A100, RTX 30xx, RTX 40xx / L4, H100 / H200 (+PTX for newer)


def extension_modules() -> tuple[list, dict]:
    import torch

    cuda_home = find_cuda_home()
    if torch.version.cuda is None or cuda_home is None:
        print("setup.py: no CUDA toolkit or CUDA build of torch; skipping the CUDA op (PyTorch path is used)")
        return [], {}
    os.environ["CUDA_HOME"] = cuda_home  # before cpp_extension resolves it
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        print(f"setup.py: no visible GPU; building for TORCH_CUDA_ARCH_LIST={DEFAULT_ARCH_LIST}")
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    extension = CUDAExtension(
        name="grounding._C",
        sources=[os.path.relpath(CSRC_DIR / name) for name in SOURCES],
        extra_compile_args={"cxx": ["-O3"], "nvcc": list(NVCC_FLAGS)},
    )
    return [extension], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = extension_modules()
setup(
    name="grounded-sam-studio",
    version=__version__,
    packages=find_packages(include=["grounding", "grounding.*"]),
    python_requires=">=3.10",
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
