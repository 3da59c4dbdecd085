"""The CUDA side of the deformable ops, as far as a machine without a GPU can check it.

* Where `nvcc` exists: the CUDA functors (custom_ops/deformable/deformable_kernels.cu.cc, against
  the TensorFlow headers), the GPU kernel registrations (deformable_kernels.cc with
  GOOGLE_CUDA=1) and the standalone harness (cuda_harness.cu) compile, and the objects link into
  one .so (a missing explicit instantiation fails the link). The harness runs where a GPU is
  visible.
* Everywhere (g++ only): the per-element functions that the CUDA kernels run
  (deformable_math.h: pool_forward_element / pool_backward_element, conv_column_element,
  conv_offset_grad, conv_corners) are compiled for the host and checked against the float64
  NumPy reference and the compiled CPU op.
"""

import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers.cuda_build_helpers import (
    build_host_driver,
    check_harness,
    link_gpu_library,
    needs_nvcc,
    run,
)
from helpers.deform_reference import deform_conv2d_reference, deform_ps_roi_pool_reference

from rfcn_tf.ops.deform_conv import deform_conv2d
from rfcn_tf.ops.deform_psroi_pool import deform_ps_roi_pool

OP_DIR = Path(__file__).resolve().parents[2] / "custom_ops" / "deformable"


@pytest.mark.slow
@needs_nvcc
def test_cuda_functors_compile_against_tf_headers(cuda_object):
    symbols = run(["nm", "-C", str(cuda_object)]).stdout
    for functor in (
        "RfcnDeformPoolForward<Eigen::GpuDevice, float>",
        "RfcnDeformPoolBackward<Eigen::GpuDevice, double>",
        "RfcnDeformIm2ColForward<Eigen::GpuDevice, float>",
        "RfcnDeformIm2ColBackward<Eigen::GpuDevice, double>",
    ):
        assert functor in symbols, f"{functor} not instantiated in {cuda_object}"


@pytest.mark.slow
@needs_nvcc
def test_gpu_registrations_compile_and_link_into_one_library(cuda_build, cuda_object):
    undefined = link_gpu_library(
        cuda_build, cuda_object, [OP_DIR / "deformable_kernels.cc"], "_deformable_ops_gpu.so"
    )
    assert "RfcnDeform" not in undefined, undefined


@pytest.mark.slow
@needs_nvcc
def test_cuda_harness_compiles_and_passes_where_a_gpu_exists(cuda_build):
    check_harness(cuda_build, OP_DIR / "cuda_harness.cu", "deform_harness")


# Host driver of the per-element math (double). argv[1]: "pool" or "conv"; argv[2] the case,
# argv[3] the result file.
_HOST_DRIVER = textwrap.dedent(r"""
    #include <cstdio>
    #include <cstring>
    #include <vector>
    #include "deformable_math.h"
    struct Add { double* buf; void operator()(int64_t i, double v) const { buf[i] += v; } };
    template <typename V> bool Read(FILE* f, V* v, size_t n) {
      return std::fread(v, sizeof(V), n, f) == n;
    }
    int main(int argc, char** argv) {
      FILE* in = std::fopen(argv[2], "rb");
      FILE* o = std::fopen(argv[3], "wb");
      if (std::strcmp(argv[1], "pool") == 0) {
        int d[8];  // B, H, W, k, C, G, R, n
        float attrs[2];  // spatial_scale, trans_std
        if (!Read(in, d, 8) || !Read(in, attrs, 2)) return 3;
        rfcn_deform::PoolGeometry g{d[0], d[1], d[2], d[3] * d[3] * d[4], d[3], d[4], d[5],
                                    attrs[0], d[7], attrs[1]};
        const long fs = (long)g.batch * g.height * g.width * g.channels;
        const long os = (long)d[6] * g.k * g.k * 2 * g.groups;
        const long out = (long)d[6] * g.k * g.k * g.c_out;
        std::vector<double> f(fs), off(os), grad(out), y(out), gf(fs), go(os);
        std::vector<float> rois(d[6] * 5L);
        if (!Read(in, f.data(), fs) || !Read(in, rois.data(), rois.size()) ||
            !Read(in, off.data(), os) || !Read(in, grad.data(), out)) return 3;
        Add af{gf.data()}, ao{go.data()};
        for (long idx = 0; idx < out; ++idx) {
          const int c = idx % g.c_out, j = (idx / g.c_out) % g.k;
          const int i = (idx / g.c_out / g.k) % g.k;
          const long r = idx / g.c_out / g.k / g.k;
          y[idx] = rfcn_deform::pool_forward_element(f.data(), &rois[r * 5], off.data(), g,
                                                     r, i, j, c);
          rfcn_deform::pool_backward_element(f.data(), &rois[r * 5], off.data(), g, r, i, j,
                                             c, grad[idx], af, ao);
        }
        std::fwrite(y.data(), 8, out, o);
        std::fwrite(gf.data(), 8, fs, o);
        std::fwrite(go.data(), 8, os, o);
      } else {
        int d[10];  // B, H, W, Cin, kh, kw, stride, dilation, padding, unused
        if (!Read(in, d, 10)) return 3;
        rfcn_deform::ConvGeometry g{d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[6],
                                    d[7], d[7], 0, 0, 0, 0};
        rfcn_deform::conv_axis(d[8], g.height, g.kh, g.stride_h, g.dil_h, 0, 0, &g.out_h,
                               &g.pad_top);
        rfcn_deform::conv_axis(d[8], g.width, g.kw, g.stride_w, g.dil_w, 0, 0, &g.out_w,
                               &g.pad_left);
        const int taps = g.kh * g.kw;
        const long pix = (long)g.batch * g.out_h * g.out_w;
        const long is = (long)g.batch * g.height * g.width * g.channels;
        std::vector<double> x(is), off(pix * 2 * taps), m(pix * taps), gc(pix * taps * g.channels);
        if (!Read(in, x.data(), is) || !Read(in, off.data(), off.size()) ||
            !Read(in, m.data(), m.size()) || !Read(in, gc.data(), gc.size())) return 3;
        std::vector<double> cols(gc.size()), gi(is), go(off.size()), gm(m.size());
        for (long p = 0; p < pix; ++p) {
          const int wo = p % g.out_w, ho = (p / g.out_w) % g.out_h;
          const int b = p / g.out_w / g.out_h;
          for (int t = 0; t < taps; ++t) {
            for (int c = 0; c < g.channels; ++c) {
              cols[(p * taps + t) * g.channels + c] = rfcn_deform::conv_column_element(
                  x.data(), off.data(), m.data(), g, b, ho, wo, t, c);
            }
            rfcn_deform::conv_offset_grad(x.data(), off.data(), m.data(),
                                          &gc[(p * taps + t) * g.channels], g, b, ho, wo, t,
                                          &go[(p * taps + t) * 2], &go[(p * taps + t) * 2 + 1],
                                          &gm[p * taps + t]);
            double yy, xx;
            rfcn_deform::conv_position(g, &off[p * 2 * taps], ho, wo, t / g.kw, t % g.kw,
                                       &yy, &xx);
            rfcn_deform::Corners q;
            rfcn_deform::conv_corners(yy, xx, g, b, &q);
            for (int s = 0; s < 4; ++s) {
              if (q.w[s] == 0.0) continue;
              for (int c = 0; c < g.channels; ++c) {
                gi[q.cell[s] + c] += q.w[s] * m[p * taps + t] *
                                     gc[(p * taps + t) * g.channels + c];
              }
            }
          }
        }
        std::fwrite(cols.data(), 8, cols.size(), o);
        std::fwrite(gi.data(), 8, is, o);
        std::fwrite(go.data(), 8, go.size(), o);
        std::fwrite(gm.data(), 8, gm.size(), o);
      }
      std::fclose(o);
      return 0;
    }
""")


@pytest.fixture(scope="module")
def host_driver(tmp_path_factory):
    return build_host_driver(tmp_path_factory.mktemp("deform_host_math"), _HOST_DRIVER, OP_DIR)


def test_per_element_pool_math_of_the_cuda_kernels(host_driver, tmp_path):
    rng = np.random.default_rng(5)
    batch, height, width, k, num_out, groups, sr, scale = 2, 8, 11, 3, 4, 2, 2, 0.5
    feats = rng.standard_normal((batch, height, width, k * k * num_out))
    y = np.sort(rng.uniform(-6, 22, (12, 2)), axis=1)
    x = np.sort(rng.uniform(-6, 28, (12, 2)), axis=1)
    rois = np.column_stack([rng.integers(0, batch, 12), y[:, 0], x[:, 0], y[:, 1], x[:, 1]])
    rois = rois.astype(np.float32)
    offsets = 1.5 * rng.standard_normal((len(rois), k, k, groups, 2))
    grad = rng.standard_normal((len(rois), k, k, num_out))
    header = np.array([batch, height, width, k, num_out, groups, len(rois), sr], np.int32)
    case = tmp_path / "pool.bin"
    case.write_bytes(
        header.tobytes()
        + np.array([scale, 0.1], np.float32).tobytes()
        + feats.tobytes()
        + rois.tobytes()
        + offsets.tobytes()
        + grad.tobytes()
    )
    result = tmp_path / "pool.out"
    run([str(host_driver), "pool", str(case), str(result)])
    values = np.fromfile(result, np.float64)
    out = values[: grad.size].reshape(grad.shape)
    grad_features = values[grad.size : grad.size + feats.size].reshape(feats.shape)
    grad_offsets = values[grad.size + feats.size :].reshape(offsets.shape)
    np.testing.assert_allclose(
        out, deform_ps_roi_pool_reference(feats, rois, offsets, k, scale, sr, 0.1), atol=1e-9
    )
    f, o = tf.constant(feats), tf.constant(offsets)
    with tf.GradientTape() as tape:
        tape.watch([f, o])
        loss = tf.reduce_sum(
            deform_ps_roi_pool(f, rois, o, output_size=k, spatial_scale=scale, impl="custom") * grad
        )
    want_f, want_o = tape.gradient(loss, [f, o])
    np.testing.assert_allclose(grad_features, want_f.numpy(), atol=1e-9)
    np.testing.assert_allclose(grad_offsets, want_o.numpy(), atol=1e-9)
    assert np.abs(grad_offsets).max() > 1e-2


@pytest.mark.parametrize(
    "stride, dilation, padding", [(1, 1, "SAME"), (2, 2, "SAME"), (1, 1, "VALID")]
)
def test_per_element_conv_math_of_the_cuda_kernels(
    host_driver, tmp_path, stride, dilation, padding
):
    rng = np.random.default_rng(7)
    batch, height, width, cin, cout, kh, kw = 2, 7, 9, 3, 2, 3, 3
    inputs = rng.standard_normal((batch, height, width, cin))
    filters = rng.standard_normal((kh, kw, cin, cout))
    span = (kh - 1) * dilation + 1
    size = (
        (lambda n: -(-n // stride)) if padding == "SAME" else (lambda n: (n - span) // stride + 1)
    )
    ho, wo = size(height), size(width)
    offsets = 2.0 * rng.standard_normal((batch, ho, wo, 2 * kh * kw))
    mask = rng.uniform(0, 1, (batch, ho, wo, kh * kw))
    gcol = rng.standard_normal((batch, ho, wo, kh * kw * cin))
    header = np.array(
        [batch, height, width, cin, kh, kw, stride, dilation, 1 if padding == "SAME" else 0, 0],
        np.int32,
    )
    case = tmp_path / "conv.bin"
    case.write_bytes(
        header.tobytes() + inputs.tobytes() + offsets.tobytes() + mask.tobytes() + gcol.tobytes()
    )
    result = tmp_path / "conv.out"
    run([str(host_driver), "conv", str(case), str(result)])
    values = np.fromfile(result, np.float64)
    sizes = np.cumsum([gcol.size, inputs.size, offsets.size])
    cols = values[: sizes[0]].reshape(gcol.shape)
    grad_input = values[sizes[0] : sizes[1]].reshape(inputs.shape)
    grad_offsets = values[sizes[1] : sizes[2]].reshape(offsets.shape)
    grad_mask = values[sizes[2] :].reshape(mask.shape)
    conv = {"strides": stride, "dilations": dilation, "padding": padding}
    np.testing.assert_allclose(
        cols.reshape(-1, kh * kw * cin) @ filters.reshape(-1, cout),
        deform_conv2d_reference(
            inputs, offsets, filters, mask, (stride,) * 2, (dilation,) * 2, padding
        ).reshape(-1, cout),
        atol=1e-9,
    )
    # Identity filters make the conv output the columns themselves: the compiled CPU op's
    # gradients of sum(columns * gcol) are the driver's backward of gcol.
    x_t, o_t, m_t = tf.constant(inputs), tf.constant(offsets), tf.constant(mask)
    eye = np.eye(kh * kw * cin).reshape(kh, kw, cin, kh * kw * cin)
    with tf.GradientTape() as tape:
        tape.watch([x_t, o_t, m_t])
        columns = deform_conv2d(x_t, o_t, eye, mask=m_t, impl="custom", **conv)
        loss = tf.reduce_sum(columns * gcol)
    want = tape.gradient(loss, [x_t, o_t, m_t])
    for got, ref, label in zip(
        (grad_input, grad_offsets, grad_mask), want, ("input", "offsets", "mask")
    ):
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-9, err_msg=label)
