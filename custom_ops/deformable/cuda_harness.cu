// Standalone GPU-vs-CPU check of the deformable kernels, free of
// TensorFlow: random features / inputs, RoIs (inside, partly and fully
// outside, reversed, tiny, out-of-range batch index), random offsets and
// masks; the CUDA kernels of deformable_cuda_kernels.cuh against the host
// evaluation of the same per-element math (deformable_math.h), forward and
// backward, for deformable PS-RoI pooling and deformable im2col.
//
// Build and run:
//   nvcc -std=c++17 -O2 -o /tmp/deform_harness \
//       custom_ops/deformable/cuda_harness.cu
//   /tmp/deform_harness   # prints max |gpu - cpu|; exit 1 if > 1e-4
//
// Exit status: 0 all within tolerance, 1 a larger difference, 2 a CUDA
// error (no device, launch failure).

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <random>
#include <utility>
#include <vector>

#include "../common/cuda_harness_util.cuh"
#include "deformable_cuda_kernels.cuh"
#include "deformable_math.h"

namespace {

// Absolute tolerance: the GPU's atomicAdd order and FMA contraction differ
// from the host loop's order (values are O(1), sums of up to ~100 terms).
constexpr float kTolerance = 1e-4f;

using rfcn_harness::DeviceZeros;
using rfcn_harness::KeepWorst;
using rfcn_harness::MaxAbsDiff;
using rfcn_harness::ToDevice;
using rfcn_harness::ToHost;
using HostAdd = rfcn_harness::HostAdd<float>;

int Blocks(int64_t n) { return static_cast<int>((n + 255) / 256) + 1; }

float PoolCase(const char* name, int batch, int height, int width, int k,
               int c_out, int groups, int num_rois, int n, float scale,
               uint32_t seed) {
  rfcn_deform::PoolGeometry g;
  g.batch = batch;
  g.height = height;
  g.width = width;
  g.k = k;
  g.c_out = c_out;
  g.channels = k * k * c_out;
  g.groups = groups;
  g.spatial_scale = scale;
  g.sampling_ratio = n;
  g.trans_std = 0.1f;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(-1.f, 1.f);
  const float img_h = height / scale, img_w = width / scale;
  std::uniform_real_distribution<float> ycoord(-0.3f * img_h, 1.3f * img_h);
  std::uniform_real_distribution<float> xcoord(-0.3f * img_w, 1.3f * img_w);
  const int64_t fsize = static_cast<int64_t>(batch) * height * width *
                        g.channels;
  std::vector<float> features(fsize);
  for (auto& v : features) v = unit(rng);
  std::vector<float> rois(static_cast<size_t>(num_rois) * 5);
  for (int r = 0; r < num_rois; ++r) {
    float* roi = &rois[r * 5];
    rfcn_harness::DrawRoi(rng, ycoord, xcoord, batch, roi);
    if (r % 8 == 2) std::swap(roi[1], roi[3]);       // reversed
    if (r % 8 == 3) roi[1] = roi[3] = -5.f * img_h;  // fully outside
    if (r % 16 == 5) roi[0] = static_cast<float>(batch);  // pools 0 on GPU
  }
  const int64_t osize = static_cast<int64_t>(num_rois) * k * k * 2 * groups;
  std::vector<float> offsets(osize);
  for (auto& v : offsets) v = 2.f * unit(rng);
  const int64_t out_size = static_cast<int64_t>(num_rois) * k * k * c_out;
  std::vector<float> grad(out_size);
  for (auto& v : grad) v = unit(rng);

  std::vector<float> cpu_out(out_size), cpu_gf(fsize, 0.f), cpu_go(osize, 0.f);
  HostAdd add_f{cpu_gf.data()}, add_o{cpu_go.data()};
  for (int64_t idx = 0; idx < out_size; ++idx) {
    const int c = static_cast<int>(idx % c_out);
    const int64_t t = idx / c_out;
    const int j = static_cast<int>(t % k);
    const int i = static_cast<int>((t / k) % k);
    const int64_t r = t / k / k;
    cpu_out[idx] = rfcn_deform::pool_forward_element(
        features.data(), &rois[r * 5], offsets.data(), g, r, i, j, c);
    rfcn_deform::pool_backward_element(features.data(), &rois[r * 5],
                                       offsets.data(), g, r, i, j, c,
                                       grad[idx], add_f, add_o);
  }
  float* d_features = ToDevice(features);
  float* d_rois = ToDevice(rois);
  float* d_offsets = ToDevice(offsets);
  float* d_grad = ToDevice(grad);
  float* d_out = DeviceZeros<float>(out_size);
  float* d_gf = DeviceZeros<float>(fsize);
  float* d_go = DeviceZeros<float>(osize);
  if (out_size > 0) {
    rfcn_deform::deform_pool_forward_kernel<float><<<Blocks(out_size), 256>>>(
        out_size, d_features, d_rois, d_offsets, g, d_out);
    HARNESS_CUDA_CHECK(cudaGetLastError());
    rfcn_deform::deform_pool_backward_kernel<float><<<Blocks(out_size), 256>>>(
        out_size, d_features, d_rois, d_offsets, d_grad, g, d_gf, d_go);
    HARNESS_CUDA_CHECK(cudaGetLastError());
  }
  HARNESS_CUDA_CHECK(cudaDeviceSynchronize());
  const float fwd = MaxAbsDiff(ToHost(d_out, out_size), cpu_out);
  const float bf = MaxAbsDiff(ToHost(d_gf, fsize), cpu_gf);
  const float bo = MaxAbsDiff(ToHost(d_go, osize), cpu_go);
  for (float* p : {d_features, d_rois, d_offsets, d_grad, d_out, d_gf, d_go}) {
    cudaFree(p);
  }
  printf("pool %-24s k=%d C=%d G=%d R=%d  fwd %.3g  grad_f %.3g  grad_off %.3g\n",
         name, k, c_out, groups, num_rois, fwd, bf, bo);
  return fmaxf(fwd, fmaxf(bf, bo));
}

float ConvCase(const char* name, int batch, int height, int width, int cin,
               int kh, int kw, int stride, int dil, int padding,
               uint32_t seed) {
  rfcn_deform::ConvGeometry g;
  g.batch = batch;
  g.height = height;
  g.width = width;
  g.channels = cin;
  g.kh = kh;
  g.kw = kw;
  g.stride_h = g.stride_w = stride;
  g.dil_h = g.dil_w = dil;
  rfcn_deform::conv_axis(padding, height, kh, stride, dil, 0, 0, &g.out_h,
                         &g.pad_top);
  rfcn_deform::conv_axis(padding, width, kw, stride, dil, 0, 0, &g.out_w,
                         &g.pad_left);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(-1.f, 1.f);
  const int taps = kh * kw;
  const int64_t in_size = static_cast<int64_t>(batch) * height * width * cin;
  const int64_t pix = static_cast<int64_t>(batch) * g.out_h * g.out_w;
  const int64_t col_size = pix * taps * cin;
  std::vector<float> input(in_size), offsets(pix * 2 * taps), mask(pix * taps),
      gcol(col_size);
  for (auto& v : input) v = unit(rng);
  for (auto& v : offsets) v = 2.5f * unit(rng);
  for (auto& v : mask) v = 0.5f + 0.5f * unit(rng);
  for (auto& v : gcol) v = unit(rng);

  std::vector<float> cpu_cols(col_size), cpu_gi(in_size, 0.f),
      cpu_go(pix * 2 * taps), cpu_gm(pix * taps);
  for (int64_t p = 0; p < pix; ++p) {
    const int wo = static_cast<int>(p % g.out_w);
    const int ho = static_cast<int>((p / g.out_w) % g.out_h);
    const int b = static_cast<int>(p / g.out_w / g.out_h);
    for (int t = 0; t < taps; ++t) {
      for (int c = 0; c < cin; ++c) {
        cpu_cols[(p * taps + t) * cin + c] = rfcn_deform::conv_column_element(
            input.data(), offsets.data(), mask.data(), g, b, ho, wo, t, c);
      }
      rfcn_deform::conv_offset_grad(
          input.data(), offsets.data(), mask.data(),
          &gcol[(p * taps + t) * cin], g, b, ho, wo, t,
          &cpu_go[(p * taps + t) * 2], &cpu_go[(p * taps + t) * 2 + 1],
          &cpu_gm[p * taps + t]);
      double y, x;
      rfcn_deform::conv_position(g, &offsets[p * 2 * taps], ho, wo, t / kw,
                                 t % kw, &y, &x);
      rfcn_deform::Corners q;
      rfcn_deform::conv_corners(y, x, g, b, &q);
      for (int s = 0; s < 4; ++s) {
        if (q.w[s] == 0.0) continue;
        for (int c = 0; c < cin; ++c) {
          cpu_gi[q.cell[s] + c] += static_cast<float>(q.w[s]) *
                                   mask[p * taps + t] *
                                   gcol[(p * taps + t) * cin + c];
        }
      }
    }
  }
  float* d_input = ToDevice(input);
  float* d_offsets = ToDevice(offsets);
  float* d_mask = ToDevice(mask);
  float* d_gcol = ToDevice(gcol);
  float* d_cols = DeviceZeros<float>(col_size);
  float* d_gi = DeviceZeros<float>(in_size);
  float* d_go = DeviceZeros<float>(pix * 2 * taps);
  float* d_gm = DeviceZeros<float>(pix * taps);
  rfcn_deform::deform_im2col_kernel<float><<<Blocks(col_size), 256>>>(
      col_size, d_input, d_offsets, d_mask, g, d_cols);
  HARNESS_CUDA_CHECK(cudaGetLastError());
  rfcn_deform::deform_col2im_kernel<float><<<Blocks(col_size), 256>>>(
      col_size, d_offsets, d_mask, d_gcol, g, d_gi);
  HARNESS_CUDA_CHECK(cudaGetLastError());
  rfcn_deform::deform_offset_grad_kernel<float><<<Blocks(pix * taps), 256>>>(
      pix * taps, d_input, d_offsets, d_mask, d_gcol, g, d_go, d_gm);
  HARNESS_CUDA_CHECK(cudaGetLastError());
  HARNESS_CUDA_CHECK(cudaDeviceSynchronize());
  const float fwd = MaxAbsDiff(ToHost(d_cols, col_size), cpu_cols);
  const float bi = MaxAbsDiff(ToHost(d_gi, in_size), cpu_gi);
  const float bo = MaxAbsDiff(ToHost(d_go, pix * 2 * taps), cpu_go);
  const float bm = MaxAbsDiff(ToHost(d_gm, pix * taps), cpu_gm);
  for (float* p : {d_input, d_offsets, d_mask, d_gcol, d_cols, d_gi, d_go,
                   d_gm}) {
    cudaFree(p);
  }
  printf("conv %-24s %dx%d s=%d d=%d Cin=%d  cols %.3g  grad_in %.3g  "
         "grad_off %.3g  grad_mask %.3g\n",
         name, kh, kw, stride, dil, cin, fwd, bi, bo, bm);
  return fmaxf(fmaxf(fwd, bi), fmaxf(bo, bm));
}

}  // namespace

int main() {
  rfcn_harness::RequireDevice();
  float worst = 0.f;
  const auto m = [&](float v) { KeepWorst(v, &worst); };
  m(PoolCase("k7 C21 detector-like", 1, 38, 63, 7, 21, 1, 300, 2, 1.f / 16,
             1u));
  m(PoolCase("k3 batch 3 groups 5", 3, 13, 29, 3, 5, 5, 97, 3, 0.125f, 2u));
  m(PoolCase("k1 tiny map", 2, 1, 2, 1, 4, 2, 33, 1, 1.f, 3u));
  m(PoolCase("R = 0", 1, 5, 5, 2, 3, 1, 0, 2, 0.5f, 4u));
  m(ConvCase("conv5-like", 1, 19, 31, 64, 3, 3, 1, 1, rfcn_deform::kSame,
             5u));
  m(ConvCase("stride 2 dilation 2", 2, 17, 12, 5, 3, 3, 2, 2,
             rfcn_deform::kSame, 6u));
  m(ConvCase("valid 1x3", 2, 6, 9, 3, 1, 3, 1, 1, rfcn_deform::kValid, 7u));
  return rfcn_harness::Report(worst, kTolerance);
}
