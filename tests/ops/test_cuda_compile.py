"""The CUDA side of the PS-RoI pooling op, as far as a machine without a GPU can check it.

* Where `nvcc` exists: the CUDA functors (psroi_pool_kernels.cu.cc, against the TensorFlow
  headers), the GPU kernel registrations (psroi_pool_kernels.cc with GOOGLE_CUDA=1) and the
  standalone harness (cuda_harness.cu) compile, and the objects link into one .so (which catches a
  missing explicit instantiation). The harness runs only where a GPU is visible.
* Everywhere (g++ only): the per-element math that the CUDA kernels run (psroi_pool_math.h,
  `forward_element` / `backward_element`) is compiled for the host and checked against the
  float64 NumPy reference, so the GPU path's arithmetic is tested even without a GPU.

The functors of both ops are compiled once per session, in one nvcc run (tests/ops/conftest.py).
"""

import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers.cuda_build_helpers import (
    build_host_driver,
    check_harness,
    link_gpu_library,
    needs_nvcc,
    run,
)
from helpers.psroi_reference import ps_roi_pool_reference, ps_roi_pool_reference_grad

OP_DIR = Path(__file__).resolve().parents[2] / "custom_ops" / "psroi_pool"


@pytest.mark.slow
@needs_nvcc
def test_cuda_functors_compile_against_tf_headers(cuda_object):
    assert cuda_object.stat().st_size > 10_000
    symbols = run(["nm", "-C", str(cuda_object)]).stdout
    for functor in (
        "RfcnPsRoiPoolForward<Eigen::GpuDevice, float>",
        "RfcnPsRoiPoolBackward<Eigen::GpuDevice, Eigen::half>",
        "RfcnPsRoiPoolBackward<Eigen::GpuDevice, Eigen::bfloat16>",
    ):
        assert functor in symbols, f"{functor} not instantiated in {cuda_object}"


@pytest.mark.slow
@needs_nvcc
def test_gpu_registrations_compile_and_link_into_one_library(cuda_build, cuda_object):
    undefined = link_gpu_library(
        cuda_build, cuda_object, [OP_DIR / "psroi_pool_kernels.cc"], "_psroi_pool_ops_gpu.so"
    )
    assert "RfcnPsRoiPool" not in undefined, undefined


@pytest.mark.slow
@needs_nvcc
def test_cuda_harness_compiles_and_passes_where_a_gpu_exists(cuda_build):
    check_harness(cuda_build, OP_DIR / "cuda_harness.cu", "psroi_harness")


# The host driver of the shared per-element math: reads a binary case from argv[1], writes the
# forward [R, kh, kw, C] and the backward [B, H, W, K] (float32) to argv[2].
_HOST_DRIVER = textwrap.dedent(r"""
    #include <cstdio>
    #include <vector>
    #include "psroi_pool_math.h"
    struct Add { float* buf; void operator()(int64_t i, float v) const { buf[i] += v; } };
    int main(int argc, char** argv) {
      FILE* in = std::fopen(argv[1], "rb");
      int dims[9];  // B, H, W, kh, kw, C, R, mode, sampling_ratio
      float scale;
      if (std::fread(dims, sizeof(int), 9, in) != 9) return 3;
      if (std::fread(&scale, sizeof(float), 1, in) != 1) return 3;
      rfcn_psroi::Geometry g{dims[0], dims[1], dims[2], dims[3] * dims[4] * dims[5], dims[3],
                             dims[4], dims[5], scale, dims[8], dims[7]};
      const long fsize = (long)g.batch * g.height * g.width * g.channels;
      const long osize = (long)dims[6] * g.kh * g.kw * g.c_out;
      std::vector<float> feats(fsize), rois(dims[6] * 5L), grad(osize), out(osize), gf(fsize);
      if (std::fread(feats.data(), 4, fsize, in) != (size_t)fsize) return 3;
      if (std::fread(rois.data(), 4, rois.size(), in) != rois.size()) return 3;
      if (std::fread(grad.data(), 4, osize, in) != (size_t)osize) return 3;
      Add add{gf.data()};
      for (long idx = 0; idx < osize; ++idx) {
        const int c = idx % g.c_out, j = (idx / g.c_out) % g.kw;
        const int i = (idx / g.c_out / g.kw) % g.kh;
        const long r = idx / g.c_out / g.kw / g.kh;
        out[idx] = rfcn_psroi::forward_element(feats.data(), &rois[r * 5], g, i, j, c);
        rfcn_psroi::backward_element(&rois[r * 5], g, i, j, c, grad[idx], add);
      }
      FILE* o = std::fopen(argv[2], "wb");
      std::fwrite(out.data(), 4, osize, o);
      std::fwrite(gf.data(), 4, fsize, o);
      std::fclose(o);
      return 0;
    }
""")


@pytest.fixture(scope="module")
def host_driver(tmp_path_factory):
    return build_host_driver(tmp_path_factory.mktemp("host_math"), _HOST_DRIVER, OP_DIR)


@pytest.mark.parametrize(
    "mode, sampling_ratio, grid",
    [
        ("avg", 2, (3, 3)),
        ("bilinear", 2, (3, 3)),
        ("bilinear", 3, (3, 3)),
        ("avg", 2, (2, 5)),
        ("bilinear", 0, (3, 3)),
        ("bilinear", -1, (4, 2)),
    ],
)
def test_per_element_math_of_the_cuda_kernels_matches_reference(
    host_driver, tmp_path, mode, sampling_ratio, grid
):
    rng = np.random.default_rng(3)
    (kh, kw), (batch, height, width, num_out, scale) = grid, (2, 9, 12, 4, 0.5)
    feats = (3 * rng.standard_normal((batch, height, width, kh * kw * num_out))).astype(np.float32)
    y = np.sort(rng.uniform(-8, 26, (20, 2)), axis=1)
    x = np.sort(rng.uniform(-8, 32, (20, 2)), axis=1)
    rois = np.column_stack([rng.integers(0, batch, 20), y[:, 0], x[:, 0], y[:, 1], x[:, 1]])
    rois = np.vstack([rois, [[0, 10, 12, 3, 4], [1, np.nan, 2, 5, 6], [1, 50, 60, 70, 80]]])
    rois = rois.astype(np.float32)
    grad = rng.standard_normal((len(rois), kh, kw, num_out)).astype(np.float32)
    case = tmp_path / "case.bin"
    header = np.array(
        [
            batch,
            height,
            width,
            kh,
            kw,
            num_out,
            len(rois),
            0 if mode == "avg" else 1,
            sampling_ratio,
        ],
        np.int32,
    )
    case.write_bytes(
        header.tobytes()
        + np.float32(scale).tobytes()
        + feats.tobytes()
        + rois.tobytes()
        + grad.tobytes()
    )
    result = tmp_path / "result.bin"
    run([str(host_driver), str(case), str(result)])
    values = np.fromfile(result, np.float32)
    out = values[: grad.size].reshape(grad.shape)
    grad_features = values[grad.size :].reshape(feats.shape)
    np.testing.assert_allclose(
        out, ps_roi_pool_reference(feats, rois, grid, scale, mode, sampling_ratio), atol=1e-5
    )
    np.testing.assert_allclose(
        grad_features,
        ps_roi_pool_reference_grad(feats.shape, rois, grad, grid, scale, mode, sampling_ratio),
        atol=1e-5,
    )
    assert np.abs(out).max() > 0.1 and np.all(out[-1] == 0) and np.all(out[-2] == 0)
