// Helpers shared by the standalone GPU-vs-CPU harnesses of the compiled ops
// (custom_ops/psroi_pool/cuda_harness.cu, custom_ops/deformable/cuda_harness.cu):
// CUDA error checking, device buffers, host accumulation, the max-abs-diff
// compare and the pass/fail report. Free of TensorFlow; nvcc only.
#ifndef RFCN_TF_CUSTOM_OPS_COMMON_CUDA_HARNESS_UTIL_CUH_
#define RFCN_TF_CUSTOM_OPS_COMMON_CUDA_HARNESS_UTIL_CUH_

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <vector>

// Exit status 2 on any CUDA error (no device, launch failure).
#define HARNESS_CUDA_CHECK(expr)                                          \
  do {                                                                    \
    cudaError_t err_ = (expr);                                            \
    if (err_ != cudaSuccess) {                                            \
      fprintf(stderr, "CUDA error %s at %s:%d: %s\n", #expr, __FILE__,    \
              __LINE__, cudaGetErrorString(err_));                        \
      exit(2);                                                            \
    }                                                                     \
  } while (0)

namespace rfcn_harness {

// The host side's scatter-add; __host__ __device__ only to match the
// backward element functions' template, it runs on the host.
template <typename T>
struct HostAdd {
  T* buffer;
  __host__ __device__ void operator()(int64_t index, T value) const {
    buffer[index] += value;
  }
};

// Device copy of `host` (one spare element so an empty vector still gets a
// valid pointer).
template <typename T>
T* ToDevice(const std::vector<T>& host) {
  T* dev = nullptr;
  HARNESS_CUDA_CHECK(cudaMalloc(&dev, sizeof(T) * (host.size() + 1)));
  if (!host.empty()) {
    HARNESS_CUDA_CHECK(cudaMemcpy(dev, host.data(), sizeof(T) * host.size(),
                                  cudaMemcpyHostToDevice));
  }
  return dev;
}

// Zeroed device buffer of n (+1 spare) elements.
template <typename T>
T* DeviceZeros(size_t n) {
  T* dev = nullptr;
  HARNESS_CUDA_CHECK(cudaMalloc(&dev, sizeof(T) * (n + 1)));
  HARNESS_CUDA_CHECK(cudaMemset(dev, 0, sizeof(T) * (n + 1)));
  return dev;
}

template <typename T>
std::vector<T> ToHost(const T* dev, size_t n) {
  std::vector<T> host(n);
  if (n) {
    HARNESS_CUDA_CHECK(
        cudaMemcpy(host.data(), dev, sizeof(T) * n, cudaMemcpyDeviceToHost));
  }
  return host;
}

// max |a - b|; a NaN mismatch counts as inf.
inline float MaxAbsDiff(const std::vector<float>& a,
                        const std::vector<float>& b) {
  float m = 0.f;
  for (size_t i = 0; i < a.size(); ++i) {
    const float d = fabsf(a[i] - b[i]);
    if (!(d <= m)) m = (d == d) ? d : INFINITY;
  }
  return m;
}

// A random RoI (batch index, y1, x1, y2, x2) with y2 >= y1 and x2 >= x1,
// drawn in that order from `rng` (the harnesses edit some rows afterwards).
template <typename Rng, typename Dist>
void DrawRoi(Rng& rng, Dist& ycoord, Dist& xcoord, int batch, float* roi) {
  roi[0] = static_cast<float>(rng() % batch);
  roi[1] = ycoord(rng);
  roi[2] = xcoord(rng);
  roi[3] = roi[1] + fabsf(ycoord(rng)) * 0.6f;
  roi[4] = roi[2] + fabsf(xcoord(rng)) * 0.6f;
}

// The worst difference so far; NaN sticks.
inline void KeepWorst(float value, float* worst) {
  *worst = (value > *worst || value != value) ? value : *worst;
}

// Exits with status 2 where no CUDA device is visible.
inline void RequireDevice() {
  int devices = 0;
  HARNESS_CUDA_CHECK(cudaGetDeviceCount(&devices));
  if (devices == 0) {
    fprintf(stderr, "no CUDA device\n");
    exit(2);
  }
}

// Prints the verdict; returns the exit status (0 within tolerance, 1 not).
inline int Report(float worst, float tolerance) {
  printf("max |gpu - cpu| = %.3g (tolerance %.1g)\n", worst, tolerance);
  if (!(worst <= tolerance)) {
    printf("FAIL\n");
    return 1;
  }
  printf("OK\n");
  return 0;
}

}  // namespace rfcn_harness

#endif  // RFCN_TF_CUSTOM_OPS_COMMON_CUDA_HARNESS_UTIL_CUH_
