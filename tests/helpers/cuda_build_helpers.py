"""The nvcc / g++ plumbing shared by the CUDA compile tests of both compiled ops
(tests/ops/test_cuda_compile.py: PS-RoI pooling, tests/ops/test_deform_cuda_compile.py: the
deformable ops): the toolchain lookup, the third_party/gpus/cuda include shim, the functor
object, the GPU-registration link check, the standalone harness and the host driver build.
Imported as a sibling module, like psroi_reference.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import tensorflow as tf

NVCC = shutil.which("nvcc")
CXX = os.environ.get("CXX", "g++")

needs_nvcc = pytest.mark.skipif(
    NVCC is None, reason="nvcc not found on PATH: the CUDA kernels cannot be compiled here"
)


def run(cmd, timeout=600):
    """Runs `cmd`; asserts exit 0 with the tail of its output in the message."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, (
        f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n"
        f"{proc.stderr[-4000:]}"
    )
    return proc


def cuda_home():
    """CUDA_HOME / CUDA_PATH, else the toolkit around nvcc (nvcc may be a wrapper script), else
    /usr/local/cuda: the same rule as setup.py."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return Path(os.environ[var])
    root = Path(os.path.realpath(NVCC)).parents[1]
    return root if (root / "include" / "cuda.h").exists() else Path("/usr/local/cuda")


def make_cuda_build(out):
    """Compile flags and the scratch dir `out` with the include shim for third_party/gpus/cuda
    (which the TF headers include but the wheel lacks)."""
    home = cuda_home()
    shim = out / "shim" / "third_party" / "gpus" / "cuda"
    shim.mkdir(parents=True)
    (shim / "include").symlink_to(home / "include")
    return {
        "dir": out,
        "cuda_home": home,
        "includes": [f"-I{out / 'shim'}", f"-I{home / 'include'}"],
        "tf_flags": list(tf.sysconfig.get_compile_flags()),
    }


def compile_cuda_functors(cuda_build, source):
    """nvcc object of the GPU functors in `source` (a .cu.cc), against the TF headers."""
    obj = cuda_build["dir"] / (source.name + ".o")
    nv_flags = [f.replace("--std=", "-std=") for f in cuda_build["tf_flags"]]
    run([NVCC, "-c", str(source), "-o", str(obj), "-x", "cu",
         "-O2", "-DGOOGLE_CUDA=1", "-DEIGEN_USE_GPU", "--expt-relaxed-constexpr",
         "-Xcompiler", "-fPIC", "-w", "-gencode=arch=compute_90,code=sm_90",
         *cuda_build["includes"], *nv_flags])  # fmt: skip
    return obj


def link_gpu_library(cuda_build, cuda_object, sources, library_name):
    """Compiles `sources` (.cc, GOOGLE_CUDA=1) and links them with `cuda_object` into one .so
    (--no-undefined, TF's own symbols excepted); returns its undefined symbols (nm -C).

    The callers pass an op's kernels .cc (its DEVICE_GPU registrations, which call the functors
    of `cuda_object`), not its *_ops.cc: that file has no GOOGLE_CUDA code (REGISTER_OP only,
    names that link by string), compiles the same in the CPU build that `make install` runs, and
    would cost another ~6 s of g++ on the TensorFlow headers per op."""
    out = cuda_build["dir"]
    objects = [cuda_object]
    for source in sources:
        obj = out / (source.name + ".gpu.o")
        run([CXX, "-c", str(source), "-o", str(obj), "-O1", "-fPIC", "-w",
             "-DGOOGLE_CUDA=1", *cuda_build["includes"], *cuda_build["tf_flags"]])  # fmt: skip
        objects.append(obj)
    library = out / library_name
    run([CXX, "-shared", "-o", str(library), *map(str, objects),
         *tf.sysconfig.get_link_flags(), f"-L{cuda_build['cuda_home'] / 'lib64'}", "-lcudart",
         "-Wl,--no-undefined", "-Wl,--unresolved-symbols=ignore-in-shared-libs"])  # fmt: skip
    return run(["nm", "-C", "--undefined-only", str(library)]).stdout


def gpu_visible():
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and "GPU" in proc.stdout


def check_harness(cuda_build, source, binary_name):
    """Builds the standalone harness `source` (.cu); runs it where a GPU is visible and asserts
    it exits 0 and prints OK."""
    binary = cuda_build["dir"] / binary_name
    run([NVCC, "-std=c++17", "-O2", "-o", str(binary), str(source)])
    assert binary.stat().st_size > 10_000
    if gpu_visible():
        proc = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300,
                              check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "OK" in proc.stdout


def build_host_driver(out, source_text, include_dir):
    """g++ binary of the host driver `source_text` (C++17), with `include_dir` on the path."""
    source = out / "host_driver.cc"
    source.write_text(source_text)
    binary = out / "host_driver"
    run([CXX, "-std=c++17", "-O2", f"-I{include_dir}", str(source), "-o", str(binary)])
    return binary
