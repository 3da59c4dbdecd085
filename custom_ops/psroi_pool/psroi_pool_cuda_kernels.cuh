// CUDA kernels of position-sensitive RoI pooling, free of TensorFlow so that
// the op (psroi_pool_kernels.cu.cc) and the standalone harness
// (cuda_harness.cu) run the very same device code.
//
// Shapes and arithmetic: psroi_pool_math.h. Every kernel is a grid-stride
// loop over int64 indices, so any launch configuration covers all elements.

#ifndef RFCN_TF_CUSTOM_OPS_PSROI_POOL_PSROI_POOL_CUDA_KERNELS_CUH_
#define RFCN_TF_CUSTOM_OPS_PSROI_POOL_PSROI_POOL_CUDA_KERNELS_CUH_

#include <stdint.h>

#include "../common/cuda_kernel_util.cuh"
#include "psroi_pool_math.h"

namespace rfcn_psroi {

// Splits a flat output index of [R, kh, kw, C] into (r, i, j, c); c varies
// fastest so that neighbouring threads read neighbouring channels (the C
// values of one bin are contiguous in NHWC).
__device__ __forceinline__ void split_output_index(int64_t idx,
                                                   const Geometry& g,
                                                   int64_t* r, int* i, int* j,
                                                   int* c) {
  *c = static_cast<int>(idx % g.c_out);
  int64_t t = idx / g.c_out;
  *j = static_cast<int>(t % g.kw);
  t /= g.kw;
  *i = static_cast<int>(t % g.kh);
  *r = t / g.kh;
}

// output[R, kh, kw, C] (total = R*kh*kw*C elements), one thread per element.
template <typename T>
__global__ void psroi_forward_kernel(int64_t total, const T* features,
                                     const float* rois, Geometry g,
                                     T* output) {
  RFCN_GRID_LOOP(idx, total) {
    int64_t r;
    int i, j, c;
    split_output_index(idx, g, &r, &i, &j, &c);
    output[idx] = static_cast<T>(forward_element(features, rois + r * 5, g,
                                                 i, j, c));
  }
}

// Scatter target of the backward: atomicAdd on the device (float), a plain
// add on the host (only instantiated there by tools that reuse it).
using AtomicAddFloat = rfcn_common::AtomicAdder<float>;

// Adds the scatter of grad[R, kh, kw, C] (total elements) into the float
// buffer grad_features[B, H, W, K], which the caller zeroes first.
template <typename T>
__global__ void psroi_backward_kernel(int64_t total, const T* grad,
                                      const float* rois, Geometry g,
                                      float* grad_features) {
  AtomicAddFloat add{grad_features};
  RFCN_GRID_LOOP(idx, total) {
    int64_t r;
    int i, j, c;
    split_output_index(idx, g, &r, &i, &j, &c);
    backward_element(rois + r * 5, g, i, j, c, static_cast<float>(grad[idx]),
                     add);
  }
}

// out[n] = T(in[n]): the float accumulation buffer to half / bfloat16.
template <typename T>
__global__ void psroi_cast_kernel(int64_t n, const float* in, T* out) {
  RFCN_GRID_LOOP(idx, n) {
    out[idx] = static_cast<T>(in[idx]);
  }
}

}  // namespace rfcn_psroi

#endif  // RFCN_TF_CUSTOM_OPS_PSROI_POOL_PSROI_POOL_CUDA_KERNELS_CUH_
