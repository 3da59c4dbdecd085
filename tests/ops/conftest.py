"""Session fixtures of the CUDA compile tests (test_cuda_compile.py, test_deform_cuda_compile.py).

Both ops' GPU functors are compiled by ONE nvcc run: a translation unit that includes
psroi_pool_kernels.cu.cc and deformable_kernels.cu.cc. Most of nvcc's time goes to the TensorFlow
and Eigen headers (host and device passes), which the two sources share, so one run costs about
what one source alone costs (46 vs 44 CPU s here, against 88 for two runs). Each file's own
includes still resolve next to it (#include "..." searches the including file's folder). Both
test files run on one xdist worker (tests/conftest.py) so the object is built once.
"""

from pathlib import Path

import pytest
from helpers.cuda_build_helpers import compile_cuda_functors, make_cuda_build

CUSTOM_OPS = Path(__file__).resolve().parents[2] / "custom_ops"
CUDA_FUNCTOR_SOURCES = (
    CUSTOM_OPS / "psroi_pool" / "psroi_pool_kernels.cu.cc",
    CUSTOM_OPS / "deformable" / "deformable_kernels.cu.cc",
)


@pytest.fixture(scope="session")
def cuda_build(tmp_path_factory):
    """Flags and scratch folder of the CUDA builds (helpers.cuda_build_helpers)."""
    return make_cuda_build(tmp_path_factory.mktemp("cuda_build"))


@pytest.fixture(scope="session")
def cuda_object(cuda_build):
    """The nvcc object of both ops' GPU functors (module docstring)."""
    unit = cuda_build["dir"] / "all_kernels.cu.cc"
    unit.write_text("".join(f'#include "{source}"\n' for source in CUDA_FUNCTOR_SOURCES))
    return compile_cuda_functors(cuda_build, unit)
