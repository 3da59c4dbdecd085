// Standalone GPU-vs-CPU check of the PS-RoI pooling kernels, free of
// TensorFlow: random features and RoIs (inside, partly and fully outside the
// map, tiny, reversed, NaN, out-of-range batch index), the CUDA kernels of
// psroi_pool_cuda_kernels.cuh against the host evaluation of the same
// per-element math (psroi_pool_math.h), forward and backward, both modes.
//
// Build and run (see README.md):
//   nvcc -std=c++17 -O2 -o /tmp/psroi_harness custom_ops/psroi_pool/cuda_harness.cu
//   /tmp/psroi_harness        # prints max |gpu - cpu|; exit 1 if > 1e-5
//
// Exit status: 0 all within 1e-5, 1 a difference over 1e-5, 2 a CUDA error
// (no device, launch failure).

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <random>
#include <utility>
#include <vector>

#include "../common/cuda_harness_util.cuh"
#include "psroi_pool_cuda_kernels.cuh"
#include "psroi_pool_math.h"

namespace {

constexpr float kTolerance = 1e-5f;

using rfcn_harness::DeviceZeros;
using rfcn_harness::KeepWorst;
using rfcn_harness::MaxAbsDiff;
using rfcn_harness::ToDevice;
using rfcn_harness::ToHost;
using HostAdd = rfcn_harness::HostAdd<float>;

// One configuration; returns the worst of its forward/backward differences.
float RunCase(const char* name, int batch, int height, int width, int kh,
              int kw, int c_out, int num_rois, int mode, int sampling_ratio,
              float spatial_scale, uint32_t seed) {
  rfcn_psroi::Geometry g;
  g.batch = batch;
  g.height = height;
  g.width = width;
  g.kh = kh;
  g.kw = kw;
  g.c_out = c_out;
  g.channels = kh * kw * c_out;
  g.spatial_scale = spatial_scale;
  g.sampling_ratio = sampling_ratio;
  g.mode = mode;

  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(-1.f, 1.f);
  const float img_h = height / spatial_scale, img_w = width / spatial_scale;
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
    switch (r % 8) {
      case 1:  // tiny
        roi[3] = roi[1] + 1.f;
        roi[4] = roi[2] + 0.5f;
        break;
      case 2:  // reversed
        std::swap(roi[1], roi[3]);
        break;
      case 3:  // fully outside
        roi[1] = roi[3] = -5.f * img_h;
        break;
      case 4:  // NaN corner
        if (r % 16 == 4) roi[2] = NAN;
        break;
      case 5:  // out-of-range batch index: pools 0 on GPU
        if (r % 16 == 5) roi[0] = static_cast<float>(batch);
        break;
      default:
        break;
    }
  }
  const int64_t osize = static_cast<int64_t>(num_rois) * kh * kw * c_out;
  std::vector<float> grad(osize);
  for (auto& v : grad) v = unit(rng);

  // CPU: the shared per-element math, evaluated on the host.
  std::vector<float> cpu_out(osize), cpu_grad_features(fsize, 0.f);
  HostAdd host_add{cpu_grad_features.data()};
  for (int64_t idx = 0; idx < osize; ++idx) {
    const int c = static_cast<int>(idx % c_out);
    const int64_t t = idx / c_out;
    const int j = static_cast<int>(t % kw);
    const int i = static_cast<int>((t / kw) % kh);
    const int64_t r = t / kw / kh;
    cpu_out[idx] = rfcn_psroi::forward_element(features.data(), &rois[r * 5],
                                               g, i, j, c);
    rfcn_psroi::backward_element(&rois[r * 5], g, i, j, c, grad[idx],
                                 host_add);
  }

  // GPU: the op's kernels.
  float* d_features = ToDevice(features);
  float* d_rois = ToDevice(rois);
  float* d_grad = ToDevice(grad);
  float* d_out = DeviceZeros<float>(osize);
  float* d_grad_features = DeviceZeros<float>(fsize);
  const int threads = 256;
  const int blocks_out = static_cast<int>((osize + threads - 1) / threads);
  if (osize > 0) {
    rfcn_psroi::psroi_forward_kernel<float><<<blocks_out, threads>>>(
        osize, d_features, d_rois, g, d_out);
    HARNESS_CUDA_CHECK(cudaGetLastError());
    rfcn_psroi::psroi_backward_kernel<float><<<blocks_out, threads>>>(
        osize, d_grad, d_rois, g, d_grad_features);
    HARNESS_CUDA_CHECK(cudaGetLastError());
  }
  HARNESS_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> gpu_out = ToHost(d_out, osize);
  const std::vector<float> gpu_grad_features = ToHost(d_grad_features, fsize);
  cudaFree(d_features);
  cudaFree(d_rois);
  cudaFree(d_grad);
  cudaFree(d_out);
  cudaFree(d_grad_features);

  const float fwd = MaxAbsDiff(gpu_out, cpu_out);
  const float bwd = MaxAbsDiff(gpu_grad_features, cpu_grad_features);
  printf("%-28s mode=%-8s B=%d H=%d W=%d k=%dx%d C=%d R=%d sr=%d  fwd %.3g  "
         "bwd %.3g\n",
         name, mode == rfcn_psroi::kAvg ? "avg" : "bilinear", batch, height,
         width, kh, kw, c_out, num_rois, sampling_ratio, fwd, bwd);
  return fwd > bwd ? fwd : bwd;
}

}  // namespace

int main() {
  rfcn_harness::RequireDevice();
  float worst = 0.f;
  for (int mode = 0; mode < 2; ++mode) {
    const auto m = [&](float v) { KeepWorst(v, &worst); };
    m(RunCase("k7 C21 detector-like", 1, 38, 63, 7, 7, 21, 300, mode, 2,
              1.f / 16, 1u + mode));
    m(RunCase("k3 batch 3 non-square", 3, 13, 29, 3, 3, 5, 97, mode, 3,
              0.125f, 11u + mode));
    m(RunCase("k1 tiny map", 2, 1, 2, 1, 1, 4, 33, mode, 1, 1.f, 21u + mode));
    m(RunCase("R = 0", 1, 5, 5, 2, 2, 3, 0, mode, 2, 0.5f, 31u + mode));
    m(RunCase("3x5 grid adaptive", 2, 17, 23, 3, 5, 4, 61, mode, 0, 0.5f,
              41u + mode));
    m(RunCase("7x7 adaptive detector-like", 1, 38, 63, 7, 7, 21, 300, mode,
              0, 1.f / 16, 51u + mode));
  }
  return rfcn_harness::Report(worst, kTolerance);
}
