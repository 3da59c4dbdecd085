// Functors of the deformable ops, one specialization per device: CPU in
// deformable_kernels.cc, GPU in deformable_kernels.cu.cc (explicitly
// instantiated for float and double under GOOGLE_CUDA). Shapes and
// arithmetic: deformable_math.h. The op kernels validate shapes and attrs
// before calling a functor.

#ifndef RFCN_TF_CUSTOM_OPS_DEFORMABLE_DEFORMABLE_FUNCTOR_H_
#define RFCN_TF_CUSTOM_OPS_DEFORMABLE_DEFORMABLE_FUNCTOR_H_

#include <cstdint>

#include "deformable_math.h"
#include "tensorflow/core/framework/op_kernel.h"

#if GOOGLE_CUDA
namespace Eigen {
struct GpuDevice;
}  // namespace Eigen
#endif

namespace tensorflow {
namespace functor {

// output [R, k, k, C] from features, rois, offsets [R, k, k, 2G].
template <typename Device, typename T>
struct RfcnDeformPoolForward {
  void operator()(OpKernelContext* ctx, const rfcn_deform::PoolGeometry& g,
                  int64_t num_rois, const T* features, const float* rois,
                  const T* offsets, T* output);
};

// grad_features [B, H, W, k*k*C] and grad_offsets [R, k, k, 2G], both
// overwritten entirely, from grad [R, k, k, C].
template <typename Device, typename T>
struct RfcnDeformPoolBackward {
  void operator()(OpKernelContext* ctx, const rfcn_deform::PoolGeometry& g,
                  int64_t num_rois, const T* features, const float* rois,
                  const T* offsets, const T* grad, T* grad_features,
                  T* grad_offsets);
};

// columns [B, Ho, Wo, kh*kw*Cin] from input, offsets, mask.
template <typename Device, typename T>
struct RfcnDeformIm2ColForward {
  void operator()(OpKernelContext* ctx, const rfcn_deform::ConvGeometry& g,
                  const T* input, const T* offsets, const T* mask,
                  T* columns);
};

// grad_input, grad_offsets, grad_mask (overwritten) from grad_columns.
template <typename Device, typename T>
struct RfcnDeformIm2ColBackward {
  void operator()(OpKernelContext* ctx, const rfcn_deform::ConvGeometry& g,
                  const T* input, const T* offsets, const T* mask,
                  const T* grad_columns, T* grad_input, T* grad_offsets,
                  T* grad_mask);
};

#if GOOGLE_CUDA
// GPU: one thread per output / column element; the feature and input
// gradients use atomicAdd (not bit-deterministic run to run; the CPU
// kernels are). Out-of-range batch indices pool 0 on GPU.
template <typename T>
struct RfcnDeformPoolForward<Eigen::GpuDevice, T> {
  void operator()(OpKernelContext* ctx, const rfcn_deform::PoolGeometry& g,
                  int64_t num_rois, const T* features, const float* rois,
                  const T* offsets, T* output);
};
template <typename T>
struct RfcnDeformPoolBackward<Eigen::GpuDevice, T> {
  void operator()(OpKernelContext* ctx, const rfcn_deform::PoolGeometry& g,
                  int64_t num_rois, const T* features, const float* rois,
                  const T* offsets, const T* grad, T* grad_features,
                  T* grad_offsets);
};
template <typename T>
struct RfcnDeformIm2ColForward<Eigen::GpuDevice, T> {
  void operator()(OpKernelContext* ctx, const rfcn_deform::ConvGeometry& g,
                  const T* input, const T* offsets, const T* mask,
                  T* columns);
};
template <typename T>
struct RfcnDeformIm2ColBackward<Eigen::GpuDevice, T> {
  void operator()(OpKernelContext* ctx, const rfcn_deform::ConvGeometry& g,
                  const T* input, const T* offsets, const T* mask,
                  const T* grad_columns, T* grad_input, T* grad_offsets,
                  T* grad_mask);
};
#endif  // GOOGLE_CUDA

}  // namespace functor
}  // namespace tensorflow

#endif  // RFCN_TF_CUSTOM_OPS_DEFORMABLE_DEFORMABLE_FUNCTOR_H_
