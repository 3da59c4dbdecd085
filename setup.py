"""Build and install rfcn_tf, compiling the PS-RoI pooling op.

`pip install .`, `pip install -e .` and `python setup.py build_ext --inplace`
compile custom_ops/psroi_pool into ``rfcn_tf/ops/_psroi_pool_ops.so`` (and the
deformable ops, custom_ops/deformable, into ``rfcn_tf/ops/_deformable_ops.so``) with g++
and the flags of the TensorFlow that is importable during the build
(``tf.sysconfig.get_compile_flags()`` / ``get_link_flags()``; they carry
``-std=c++17`` and the C++ ABI flag, so none are added here). The .so is
loaded with ``tf.load_op_library`` (not imported by Python), so it keeps that
plain name.

Environment variables (read at build / install time):

``RFCN_TF_CUDA``
    ``1``: also compile the CUDA kernels (psroi_pool_kernels.cu.cc) with
    nvcc, link them into the same .so, and require ``tensorflow[and-cuda]``
    instead of ``tensorflow-cpu``. Install with ``--no-build-isolation``
    into an environment that already has the GPU TensorFlow, so the kernels
    are built against it. ``0``: never. Unset or ``auto`` (default): compile
    the CUDA kernels when ``nvcc`` is found AND the build's TensorFlow is
    built with CUDA (requirements stay tensorflow-cpu unless set to 1).
``RFCN_TF_CUDA_ARCHS``
    semicolon list of SM versions for nvcc (default ``80;86;90``, plus PTX
    for the last one).
``RFCN_TF_BUILD_OP``
    ``0`` skips compiling the op altogether: ``ps_roi_pool(impl="auto")``
    then falls back to the pure-TF twin with one warning.
``RFCN_TF_TF_REQUIREMENT``
    overrides the TensorFlow requirement string (e.g. ``tensorflow>=2.21,<2.22``
    where the ``tensorflow`` distribution is installed instead).
``CXX``, ``NVCC``, ``CUDA_HOME``
    compilers and the CUDA toolkit root (default: ``g++``, ``nvcc`` on PATH,
    the toolkit that contains nvcc).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
OP_DIR = os.path.join("custom_ops", "psroi_pool")
OP_EXT_NAME = "rfcn_tf.ops._psroi_pool_ops"
CXX_SOURCES = [
    os.path.join(OP_DIR, "psroi_pool_ops.cc"),
    os.path.join(OP_DIR, "psroi_pool_kernels.cc"),
]
CUDA_SOURCES = [os.path.join(OP_DIR, "psroi_pool_kernels.cu.cc")]
OP_HEADERS = [
    os.path.join(OP_DIR, name)
    for name in ("psroi_pool_math.h", "psroi_pool_functor.h", "psroi_pool_cuda_kernels.cuh")
]
# The deformable ops (custom_ops/deformable): a second library, loaded by
# rfcn_tf/ops/deform_psroi_pool.py (tf.load_op_library returns each library's
# ops only once per process, so the two ops' loaders need separate files).
DEFORM_DIR = os.path.join("custom_ops", "deformable")
DEFORM_EXT_NAME = "rfcn_tf.ops._deformable_ops"
DEFORM_SOURCES = [
    os.path.join(DEFORM_DIR, n)
    for n in ("deformable_ops.cc", "deformable_kernels.cc", "deformable_kernels.cu.cc")
]
DEFORM_HEADERS = [
    os.path.join(DEFORM_DIR, n)
    for n in ("deformable_math.h", "deformable_functor.h", "deformable_cuda_kernels.cuh")
]
# Headers shared by both libraries (custom_ops/common): either library rebuilds when one changes.
COMMON_HEADERS = [
    os.path.join("custom_ops", "common", n)
    for n in ("gpu_launch.h", "cpu_kernel_util.h", "cpu_simd_util.h", "cuda_kernel_util.cuh")
]
OP_EXT_NAMES = (OP_EXT_NAME, DEFORM_EXT_NAME)
TF_RANGE = ">=2.21,<2.22"
DEFAULT_CUDA_ARCHS = "80;86;90"


def _flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


def _cuda_setting() -> str:
    """'on', 'off' or 'auto' from RFCN_TF_CUDA."""
    value = _flag("RFCN_TF_CUDA", "auto")
    if value in ("1", "true", "yes", "on"):
        return "on"
    if value in ("0", "false", "no", "off"):
        return "off"
    if value in ("", "auto"):
        return "auto"
    raise SystemExit(f"RFCN_TF_CUDA must be 0, 1 or auto, got {value!r}")


def _tensorflow_requirement() -> str:
    override = os.environ.get("RFCN_TF_TF_REQUIREMENT", "").strip()
    if override:
        return override
    if _cuda_setting() == "on":
        return f"tensorflow[and-cuda]{TF_RANGE}"
    return f"tensorflow-cpu{TF_RANGE}"


def _build_op() -> bool:
    """False when RFCN_TF_BUILD_OP=0: no extension at all (a pure-Python install)."""
    if _flag("RFCN_TF_BUILD_OP", "1") in ("0", "false", "no", "off"):
        print("RFCN_TF_BUILD_OP=0: not compiling the PS-RoI pooling op")
        return False
    return True


def _version() -> str:
    with open(os.path.join(HERE, "rfcn_tf", "__init__.py"), encoding="utf-8") as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)
    if not match:
        raise SystemExit('rfcn_tf/__init__.py has no __version__ = "..." line')
    return match.group(1)


def _run(cmd: list[str]) -> None:
    """Runs one compiler command; raises with its output tail on failure."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-60:])
        raise RuntimeError(f"command failed (exit {proc.returncode}):\n  {' '.join(cmd)}\n{tail}")


class BuildPsRoiPoolOp(build_ext):
    """Compiles the PS-RoI pooling op with g++ (and nvcc) against TensorFlow."""

    def get_ext_filename(self, fullname):
        # "_psroi_pool_ops.so", not "<name>.cpython-311-x86_64-linux-gnu.so":
        # tf.load_op_library loads it by this fixed path.
        # distutils asks with the last component, setuptools with the full name.
        if fullname.split(".")[-1] in [n.split(".")[-1] for n in OP_EXT_NAMES]:
            return os.path.join(*fullname.split(".")) + ".so"
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name not in OP_EXT_NAMES:
            return super().build_extension(ext)
        output = os.path.abspath(self.get_ext_fullpath(ext.name))
        cxx_sources = [s for s in ext.sources if not s.endswith(".cu.cc")]
        cuda_sources = [s for s in ext.sources if s.endswith(".cu.cc")]
        sources = [os.path.join(HERE, s) for s in ext.sources + ext.depends]
        if (
            not self.force
            and os.path.exists(output)
            and os.path.getmtime(output) >= max(map(os.path.getmtime, sources))
        ):
            print(f"{output} is up to date")
            return
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise SystemExit(
                "building the PS-RoI pooling op needs TensorFlow importable at build "
                f"time ({exc}); install tensorflow-cpu{TF_RANGE} first, or set "
                "RFCN_TF_BUILD_OP=0 to skip the op (the pure-TF twin is used then)"
            ) from exc

        compile_flags = list(tf.sysconfig.get_compile_flags())
        link_flags = list(tf.sysconfig.get_link_flags())
        cxx = os.environ.get("CXX", "g++")
        tmp = os.path.abspath(os.path.join(self.build_temp, ext.name.split(".")[-1]))
        os.makedirs(tmp, exist_ok=True)
        os.makedirs(os.path.dirname(output), exist_ok=True)

        use_cuda = self._use_cuda(tf)
        defines = ["-DGOOGLE_CUDA=1"] if use_cuda else []
        cuda_includes: list[str] = []
        if use_cuda:
            cuda_home = self._cuda_home()
            cuda_includes = [
                f"-I{self._cuda_shim(tmp, cuda_home)}",
                f"-I{os.path.join(cuda_home, 'include')}",
            ]
        jobs = []
        objects = []
        for src in cxx_sources:
            obj = os.path.join(tmp, os.path.basename(src) + ".o")
            objects.append(obj)
            jobs.append(
                [
                    cxx,
                    "-c",
                    os.path.join(HERE, src),
                    "-o",
                    obj,
                    "-O3",
                    "-fPIC",
                    "-Wno-deprecated-declarations",
                    "-Wno-interference-size",
                    *defines,
                    *cuda_includes,
                    *compile_flags,
                ]
            )
        if use_cuda:
            nvcc = self._nvcc()
            archs = os.environ.get("RFCN_TF_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)
            sms = [a.strip() for a in archs.split(";") if a.strip()]
            gencode = [f"-gencode=arch=compute_{sm},code=sm_{sm}" for sm in sms]
            gencode.append(f"-gencode=arch=compute_{sms[-1]},code=compute_{sms[-1]}")
            nv_flags = [f.replace("--std=", "-std=") for f in compile_flags]
            for src in cuda_sources:
                obj = os.path.join(tmp, os.path.basename(src) + ".o")
                objects.append(obj)
                jobs.append(
                    [
                        nvcc,
                        "-c",
                        os.path.join(HERE, src),
                        "-o",
                        obj,
                        "-x",
                        "cu",
                        "-O3",
                        "-DGOOGLE_CUDA=1",
                        "-DEIGEN_USE_GPU",
                        "--expt-relaxed-constexpr",
                        "-Xcompiler",
                        "-fPIC",
                        "-w",
                        *gencode,
                        *cuda_includes,
                        *nv_flags,
                    ]
                )
        start = time.time()
        print(
            f"compiling {ext.name} ({'CPU + CUDA' if use_cuda else 'CPU'}) "
            f"against TensorFlow {tf.__version__}"
        )
        with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
            for future in [pool.submit(_run, job) for job in jobs]:
                future.result()
        link = [cxx, "-shared", "-o", output, *objects, *link_flags]
        if use_cuda:
            link += [f"-L{os.path.join(self._cuda_home(), 'lib64')}", "-lcudart"]
        _run(link)
        print(f"built {output} in {time.time() - start:.1f} s")

    @staticmethod
    def _nvcc() -> str:
        return os.environ.get("NVCC") or shutil.which("nvcc") or "nvcc"

    def _cuda_home(self) -> str:
        """CUDA_HOME / CUDA_PATH, else the toolkit around nvcc (which may be a
        wrapper script elsewhere), else /usr/local/cuda."""
        for var in ("CUDA_HOME", "CUDA_PATH"):
            if os.environ.get(var):
                return os.environ[var]
        nvcc = shutil.which(self._nvcc())
        if nvcc:
            root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
            if os.path.exists(os.path.join(root, "include", "cuda.h")):
                return root
        return "/usr/local/cuda"

    @staticmethod
    def _cuda_shim(tmp: str, cuda_home: str) -> str:
        """An include dir mapping third_party/gpus/cuda/include (which the TF
        headers include but the wheel lacks) to the toolkit's include dir."""
        shim = os.path.join(tmp, "cuda_shim")
        link_dir = os.path.join(shim, "third_party", "gpus", "cuda")
        os.makedirs(link_dir, exist_ok=True)
        link = os.path.join(link_dir, "include")
        if os.path.islink(link) or os.path.exists(link):
            os.remove(link)
        os.symlink(os.path.join(cuda_home, "include"), link)
        return shim

    def _use_cuda(self, tf) -> bool:
        setting = _cuda_setting()
        if setting == "off":
            return False
        has_nvcc = shutil.which(self._nvcc()) is not None
        if setting == "on":
            if not has_nvcc:
                raise SystemExit("RFCN_TF_CUDA=1 but nvcc was not found (set NVCC or PATH)")
            return True
        return has_nvcc and tf.test.is_built_with_cuda()


class BuildPyWithPresets(build_py):
    """Copies configs/*.yaml into the built package as rfcn_tf/configs/, so a wheel install
    finds the presets (rfcn_tf.config searches the checkout's configs/ first, then this copy)."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's configs/ directly
            return
        target = os.path.join(self.build_lib, "rfcn_tf", "configs")
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(os.path.join(HERE, "configs"))):
            if name.endswith(".yaml"):
                self.copy_file(os.path.join(HERE, "configs", name), os.path.join(target, name))


class PlatformWheel(bdist_wheel):
    """The wheel carries a compiled .so: platform-tagged, never pure."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = not self.distribution.ext_modules


def _long_description() -> str:
    path = os.path.join(HERE, "README.md")
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


setup(
    name="rfcn_tf",
    version=_version(),
    description="R-FCN (Dai et al., NIPS 2016) object detection for TensorFlow 2 / Keras 3",
    long_description=_long_description(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["rfcn_tf", "rfcn_tf.*"]),
    ext_modules=[
        Extension(
            OP_EXT_NAME, sources=CXX_SOURCES + CUDA_SOURCES, depends=OP_HEADERS + COMMON_HEADERS
        ),
        Extension(DEFORM_EXT_NAME, sources=DEFORM_SOURCES, depends=DEFORM_HEADERS + COMMON_HEADERS),
    ]
    if _build_op()
    else [],
    cmdclass={
        "build_ext": BuildPsRoiPoolOp,
        "build_py": BuildPyWithPresets,
        "bdist_wheel": PlatformWheel,
    },
    install_requires=[
        _tensorflow_requirement(),
        "keras>=3",
        "tensorflow-datasets",
        "numpy",
        "pycocotools",
        "pyyaml",
        "pillow",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        # ruff is pinned to a minor version: its formatter's output changes between minors.
        "test": ["pytest", "pytest-xdist", "ruff>=0.17,<0.18"],
        "export": ["tf2onnx", "onnxruntime", "onnx", "grpcio", "requests"],
        # every training run writes TensorBoard events; TF 2.21 no longer depends on tensorboard
        "tensorboard": ["tensorboard>=2.21,<2.22"],
    },
    entry_points={"console_scripts": ["rfcn-tf = rfcn_tf.cli:main"]},
    zip_safe=False,
)
