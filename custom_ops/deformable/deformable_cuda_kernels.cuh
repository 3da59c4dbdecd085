// CUDA kernels of the deformable ops, free of TensorFlow so that the op
// (deformable_kernels.cu.cc) and the standalone harness (cuda_harness.cu)
// run the same device code. Arithmetic: deformable_math.h. Every kernel is
// a grid-stride loop over int64 indices.

#ifndef RFCN_TF_CUSTOM_OPS_DEFORMABLE_DEFORMABLE_CUDA_KERNELS_CUH_
#define RFCN_TF_CUSTOM_OPS_DEFORMABLE_DEFORMABLE_CUDA_KERNELS_CUH_

#include <stdint.h>

#include "../common/cuda_kernel_util.cuh"
#include "deformable_math.h"

namespace rfcn_deform {

using rfcn_common::AtomicAdder;

// output [R, k, k, C], one thread per element (c fastest).
template <typename T>
__global__ void deform_pool_forward_kernel(int64_t total, const T* features,
                                           const float* rois,
                                           const T* offsets, PoolGeometry g,
                                           T* output) {
  RFCN_GRID_LOOP(idx, total) {
    const int c = static_cast<int>(idx % g.c_out);
    int64_t t = idx / g.c_out;
    const int j = static_cast<int>(t % g.k);
    t /= g.k;
    const int i = static_cast<int>(t % g.k);
    const int64_t r = t / g.k;
    output[idx] =
        pool_forward_element(features, rois + r * 5, offsets, g, r, i, j, c);
  }
}

// Adds the backward of grad [R, k, k, C] into grad_features and
// grad_offsets (both zeroed by the caller).
template <typename T>
__global__ void deform_pool_backward_kernel(int64_t total, const T* features,
                                            const float* rois,
                                            const T* offsets, const T* grad,
                                            PoolGeometry g, T* grad_features,
                                            T* grad_offsets) {
  AtomicAdder<T> add_f{grad_features};
  AtomicAdder<T> add_o{grad_offsets};
  RFCN_GRID_LOOP(idx, total) {
    const int c = static_cast<int>(idx % g.c_out);
    int64_t t = idx / g.c_out;
    const int j = static_cast<int>(t % g.k);
    t /= g.k;
    const int i = static_cast<int>(t % g.k);
    const int64_t r = t / g.k;
    pool_backward_element(features, rois + r * 5, offsets, g, r, i, j, c,
                          grad[idx], add_f, add_o);
  }
}

// columns [B, Ho, Wo, T*Cin], one thread per element (c fastest).
template <typename T>
__global__ void deform_im2col_kernel(int64_t total, const T* input,
                                     const T* offsets, const T* mask,
                                     ConvGeometry g, T* columns) {
  const int taps = g.kh * g.kw;
  RFCN_GRID_LOOP(idx, total) {
    const int c = static_cast<int>(idx % g.channels);
    int64_t t = idx / g.channels;
    const int tap = static_cast<int>(t % taps);
    t /= taps;
    const int wo = static_cast<int>(t % g.out_w);
    t /= g.out_w;
    const int ho = static_cast<int>(t % g.out_h);
    const int b = static_cast<int>(t / g.out_h);
    columns[idx] =
        conv_column_element(input, offsets, mask, g, b, ho, wo, tap, c);
  }
}

// grad_input += scatter of grad_columns (one thread per column element,
// atomicAdd; grad_input zeroed by the caller).
template <typename T>
__global__ void deform_col2im_kernel(int64_t total, const T* offsets,
                                     const T* mask, const T* grad_columns,
                                     ConvGeometry g, T* grad_input) {
  const int taps = g.kh * g.kw;
  RFCN_GRID_LOOP(idx, total) {
    const int c = static_cast<int>(idx % g.channels);
    int64_t t = idx / g.channels;
    const int tap = static_cast<int>(t % taps);
    t /= taps;
    const int wo = static_cast<int>(t % g.out_w);
    t /= g.out_w;
    const int ho = static_cast<int>(t % g.out_h);
    const int b = static_cast<int>(t / g.out_h);
    const int64_t pix = conv_pixel(g, b, ho, wo);
    double y, x;
    conv_position(g, offsets + pix * 2 * taps, ho, wo, tap / g.kw,
                  tap % g.kw, &y, &x);
    Corners q;
    conv_corners(y, x, g, b, &q);
    const T gv = mask[pix * taps + tap] * grad_columns[idx];
    for (int s = 0; s < 4; ++s) {
      if (q.w[s] == 0.0) continue;
#if defined(__CUDA_ARCH__)
      atomicAdd(grad_input + q.cell[s] + c, static_cast<T>(q.w[s]) * gv);
#else
      grad_input[q.cell[s] + c] += static_cast<T>(q.w[s]) * gv;
#endif
    }
  }
}

// grad_offsets [B, Ho, Wo, 2T] and grad_mask [B, Ho, Wo, T], one thread per
// (pixel, tap), summing over Cin (no atomics).
template <typename T>
__global__ void deform_offset_grad_kernel(int64_t total, const T* input,
                                          const T* offsets, const T* mask,
                                          const T* grad_columns,
                                          ConvGeometry g, T* grad_offsets,
                                          T* grad_mask) {
  const int taps = g.kh * g.kw;
  RFCN_GRID_LOOP(idx, total) {
    const int tap = static_cast<int>(idx % taps);
    int64_t t = idx / taps;
    const int wo = static_cast<int>(t % g.out_w);
    t /= g.out_w;
    const int ho = static_cast<int>(t % g.out_h);
    const int b = static_cast<int>(t / g.out_h);
    conv_offset_grad(input, offsets, mask,
                     grad_columns + idx * g.channels, g, b, ho, wo, tap,
                     &grad_offsets[2 * idx], &grad_offsets[2 * idx + 1],
                     &grad_mask[idx]);
  }
}


}  // namespace rfcn_deform

#endif  // RFCN_TF_CUSTOM_OPS_DEFORMABLE_DEFORMABLE_CUDA_KERNELS_CUH_
