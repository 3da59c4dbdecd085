// GPU functors of the deformable ops (compiled by nvcc with -DGOOGLE_CUDA=1;
// see setup.py). The kernels are in deformable_cuda_kernels.cuh, shared with
// the standalone harness. Launched on the op's stream. Gradients into
// features / input use atomicAdd (not bit-deterministic run to run).

#if GOOGLE_CUDA

#ifndef EIGEN_USE_GPU
#define EIGEN_USE_GPU
#endif

#include "../common/gpu_launch.h"
#include "deformable_cuda_kernels.cuh"
#include "deformable_functor.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/gpu_kernel_helper.h"

namespace tensorflow {
namespace functor {

typedef Eigen::GpuDevice GPUDevice;

using rfcn_common::ConfigFor;

template <typename T>
void RfcnDeformPoolForward<GPUDevice, T>::operator()(
    OpKernelContext* ctx, const rfcn_deform::PoolGeometry& g,
    int64_t num_rois, const T* features, const float* rois, const T* offsets,
    T* output) {
  const GPUDevice& d = ctx->eigen_device<GPUDevice>();
  const int64_t total = num_rois * g.k * g.k * g.c_out;
  if (total == 0) return;
  const GpuLaunchConfig config = ConfigFor(total, d);
  OP_REQUIRES_OK(ctx, GpuLaunchKernel(rfcn_deform::deform_pool_forward_kernel<T>,
                                      config.block_count,
                                      config.thread_per_block, 0, d.stream(),
                                      total, features, rois, offsets, g,
                                      output));
}

template <typename T>
void RfcnDeformPoolBackward<GPUDevice, T>::operator()(
    OpKernelContext* ctx, const rfcn_deform::PoolGeometry& g,
    int64_t num_rois, const T* features, const float* rois, const T* offsets,
    const T* grad, T* grad_features, T* grad_offsets) {
  const GPUDevice& d = ctx->eigen_device<GPUDevice>();
  const int64_t fsize =
      static_cast<int64_t>(g.batch) * g.height * g.width * g.channels;
  const int64_t osize = num_rois * g.k * g.k * 2 * g.groups;
  const int64_t total = num_rois * g.k * g.k * g.c_out;
  if (fsize > 0) d.memset(grad_features, 0, sizeof(T) * fsize);
  if (osize > 0) d.memset(grad_offsets, 0, sizeof(T) * osize);
  if (total == 0) return;
  const GpuLaunchConfig config = ConfigFor(total, d);
  OP_REQUIRES_OK(ctx, GpuLaunchKernel(rfcn_deform::deform_pool_backward_kernel<T>,
                                      config.block_count,
                                      config.thread_per_block, 0, d.stream(),
                                      total, features, rois, offsets, grad, g,
                                      grad_features, grad_offsets));
}

template <typename T>
void RfcnDeformIm2ColForward<GPUDevice, T>::operator()(
    OpKernelContext* ctx, const rfcn_deform::ConvGeometry& g, const T* input,
    const T* offsets, const T* mask, T* columns) {
  const GPUDevice& d = ctx->eigen_device<GPUDevice>();
  const int64_t total = static_cast<int64_t>(g.batch) * g.out_h * g.out_w *
                        g.kh * g.kw * g.channels;
  if (total == 0) return;
  const GpuLaunchConfig config = ConfigFor(total, d);
  OP_REQUIRES_OK(ctx, GpuLaunchKernel(rfcn_deform::deform_im2col_kernel<T>,
                                      config.block_count,
                                      config.thread_per_block, 0, d.stream(),
                                      total, input, offsets, mask, g,
                                      columns));
}

template <typename T>
void RfcnDeformIm2ColBackward<GPUDevice, T>::operator()(
    OpKernelContext* ctx, const rfcn_deform::ConvGeometry& g, const T* input,
    const T* offsets, const T* mask, const T* grad_columns, T* grad_input,
    T* grad_offsets, T* grad_mask) {
  const GPUDevice& d = ctx->eigen_device<GPUDevice>();
  const int64_t in_size =
      static_cast<int64_t>(g.batch) * g.height * g.width * g.channels;
  const int64_t pix_taps =
      static_cast<int64_t>(g.batch) * g.out_h * g.out_w * g.kh * g.kw;
  const int64_t total = pix_taps * g.channels;
  if (in_size > 0) d.memset(grad_input, 0, sizeof(T) * in_size);
  if (total > 0) {
    const GpuLaunchConfig config = ConfigFor(total, d);
    OP_REQUIRES_OK(ctx, GpuLaunchKernel(rfcn_deform::deform_col2im_kernel<T>,
                                        config.block_count,
                                        config.thread_per_block, 0,
                                        d.stream(), total, offsets, mask,
                                        grad_columns, g, grad_input));
  }
  if (pix_taps > 0) {
    const GpuLaunchConfig config = ConfigFor(pix_taps, d);
    OP_REQUIRES_OK(ctx, GpuLaunchKernel(rfcn_deform::deform_offset_grad_kernel<T>,
                                        config.block_count,
                                        config.thread_per_block, 0,
                                        d.stream(), pix_taps, input, offsets,
                                        mask, grad_columns, g, grad_offsets,
                                        grad_mask));
  }
}

template struct RfcnDeformPoolForward<GPUDevice, float>;
template struct RfcnDeformPoolForward<GPUDevice, double>;
template struct RfcnDeformPoolBackward<GPUDevice, float>;
template struct RfcnDeformPoolBackward<GPUDevice, double>;
template struct RfcnDeformIm2ColForward<GPUDevice, float>;
template struct RfcnDeformIm2ColForward<GPUDevice, double>;
template struct RfcnDeformIm2ColBackward<GPUDevice, float>;
template struct RfcnDeformIm2ColBackward<GPUDevice, double>;

}  // namespace functor
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
