// GPU functors of RfcnPsRoiPool / RfcnPsRoiPoolGrad (compiled by nvcc with
// -DGOOGLE_CUDA=1; see README.md and setup.py). The kernels themselves are in
// psroi_pool_cuda_kernels.cuh, shared with the standalone harness.
//
// Everything is launched on the op's stream (the Eigen GpuDevice of the
// OpKernelContext). Forward: one thread per output element [R, kh, kw, C].
// Backward: grad_features is accumulated with atomicAdd in float32 (directly
// in the output for T = float, in a float temp buffer cast afterwards for
// half / bfloat16), so it is not bit-deterministic run to run.

#if GOOGLE_CUDA

#ifndef EIGEN_USE_GPU
#define EIGEN_USE_GPU
#endif

#include "../common/gpu_launch.h"
#include "psroi_pool_cuda_kernels.cuh"
#include "psroi_pool_functor.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/gpu_kernel_helper.h"

namespace tensorflow {
namespace functor {

typedef Eigen::GpuDevice GPUDevice;

using rfcn_common::ConfigFor;

template <typename T>
void RfcnPsRoiPoolForward<GPUDevice, T>::operator()(
    OpKernelContext* ctx, const rfcn_psroi::Geometry& geometry,
    int64_t num_rois, const T* features, const float* rois, T* output) {
  const GPUDevice& d = ctx->eigen_device<GPUDevice>();
  const int64_t total = num_rois * geometry.kh * geometry.kw * geometry.c_out;
  if (total == 0) return;
  const GpuLaunchConfig config = ConfigFor(total, d);
  OP_REQUIRES_OK(ctx, GpuLaunchKernel(rfcn_psroi::psroi_forward_kernel<T>,
                                      config.block_count,
                                      config.thread_per_block, 0, d.stream(),
                                      total, features, rois, geometry,
                                      output));
}

template <typename T>
void RfcnPsRoiPoolBackward<GPUDevice, T>::operator()(
    OpKernelContext* ctx, const rfcn_psroi::Geometry& geometry,
    int64_t num_rois, const T* grad, const float* rois, T* grad_features) {
  const GPUDevice& d = ctx->eigen_device<GPUDevice>();
  const int64_t size = static_cast<int64_t>(geometry.batch) * geometry.height *
                       geometry.width * geometry.channels;
  const int64_t total = num_rois * geometry.kh * geometry.kw * geometry.c_out;
  if (size == 0) return;
  float* accum = nullptr;
  Tensor scratch;
  if (std::is_same<T, float>::value) {
    accum = reinterpret_cast<float*>(grad_features);
  } else {
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(DT_FLOAT, TensorShape({size}),
                                           &scratch));
    accum = scratch.flat<float>().data();
  }
  d.memset(accum, 0, sizeof(float) * size);
  if (total > 0) {
    const GpuLaunchConfig config = ConfigFor(total, d);
    OP_REQUIRES_OK(ctx, GpuLaunchKernel(rfcn_psroi::psroi_backward_kernel<T>,
                                        config.block_count,
                                        config.thread_per_block, 0,
                                        d.stream(), total, grad, rois,
                                        geometry, accum));
  }
  if (!std::is_same<T, float>::value) {
    const GpuLaunchConfig config = ConfigFor(size, d);
    OP_REQUIRES_OK(ctx, GpuLaunchKernel(rfcn_psroi::psroi_cast_kernel<T>,
                                        config.block_count,
                                        config.thread_per_block, 0,
                                        d.stream(), size,
                                        static_cast<const float*>(accum),
                                        grad_features));
  }
}

template struct RfcnPsRoiPoolForward<GPUDevice, float>;
template struct RfcnPsRoiPoolForward<GPUDevice, Eigen::half>;
template struct RfcnPsRoiPoolForward<GPUDevice, bfloat16>;
template struct RfcnPsRoiPoolBackward<GPUDevice, float>;
template struct RfcnPsRoiPoolBackward<GPUDevice, Eigen::half>;
template struct RfcnPsRoiPoolBackward<GPUDevice, bfloat16>;

}  // namespace functor
}  // namespace tensorflow

#endif  // GOOGLE_CUDA
