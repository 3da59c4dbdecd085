// Functors of the RfcnPsRoiPool / RfcnPsRoiPoolGrad kernels, one
// specialization per device: CPU in psroi_pool_kernels.cc, GPU in
// psroi_pool_kernels.cu.cc (explicitly instantiated under GOOGLE_CUDA).
//
// Shapes (see psroi_pool_math.h for the shorthand and the arithmetic):
//   features       [B, H, W, kh*kw*C]  T (float, Eigen::half, bfloat16)
//   rois           [R, 5]            float32 (batch_index, y1, x1, y2, x2),
//                                    input-image pixels
//   output / grad  [R, kh, kw, C]    T
//   grad_features  [B, H, W, kh*kw*C]  T
//
// The op kernels validate shapes and attrs before calling a functor; on CPU
// they also reject out-of-range batch indices. A functor may assume
// geometry.c_out * kh * kw == geometry.channels; sampling_ratio <= 0 means
// adaptive (rfcn_psroi::axis_samples).

#ifndef RFCN_TF_CUSTOM_OPS_PSROI_POOL_PSROI_POOL_FUNCTOR_H_
#define RFCN_TF_CUSTOM_OPS_PSROI_POOL_PSROI_POOL_FUNCTOR_H_

#include <cstdint>

#include "psroi_pool_math.h"
#include "tensorflow/core/framework/op_kernel.h"

#if GOOGLE_CUDA
namespace Eigen {
struct GpuDevice;
}  // namespace Eigen
#endif

namespace tensorflow {
namespace functor {

// Writes output[R, kh, kw, C] from features and rois.
template <typename Device, typename T>
struct RfcnPsRoiPoolForward {
  void operator()(OpKernelContext* ctx, const rfcn_psroi::Geometry& geometry,
                  int64_t num_rois, const T* features, const float* rois,
                  T* output);
};

// Writes grad_features[B, H, W, K] (overwriting it entirely) from the
// gradient of the output, grad[R, kh, kw, C]. No gradient flows to rois.
template <typename Device, typename T>
struct RfcnPsRoiPoolBackward {
  void operator()(OpKernelContext* ctx, const rfcn_psroi::Geometry& geometry,
                  int64_t num_rois, const T* grad, const float* rois,
                  T* grad_features);
};

#if GOOGLE_CUDA
// GPU specializations, defined and explicitly instantiated (float,
// Eigen::half, bfloat16) in psroi_pool_kernels.cu.cc. Forward: one thread per
// output element. Backward: one thread per grad element, atomicAdd into a
// float buffer (so the GPU gradient is not bit-deterministic; the CPU one
// is). Out-of-range batch indices pool 0 and receive no gradient on GPU.
template <typename T>
struct RfcnPsRoiPoolForward<Eigen::GpuDevice, T> {
  void operator()(OpKernelContext* ctx, const rfcn_psroi::Geometry& geometry,
                  int64_t num_rois, const T* features, const float* rois,
                  T* output);
};

template <typename T>
struct RfcnPsRoiPoolBackward<Eigen::GpuDevice, T> {
  void operator()(OpKernelContext* ctx, const rfcn_psroi::Geometry& geometry,
                  int64_t num_rois, const T* grad, const float* rois,
                  T* grad_features);
};
#endif  // GOOGLE_CUDA

}  // namespace functor
}  // namespace tensorflow

#endif  // RFCN_TF_CUSTOM_OPS_PSROI_POOL_PSROI_POOL_FUNCTOR_H_
