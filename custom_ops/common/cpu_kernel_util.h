// CPU kernel helpers shared by the compiled ops' kernels
// (custom_ops/psroi_pool/psroi_pool_kernels.cc,
// custom_ops/deformable/deformable_kernels.cc): the CPU worker pool and the
// RoI batch-index check. TensorFlow headers; no op-specific arithmetic.
#ifndef RFCN_TF_CUSTOM_OPS_COMMON_CPU_KERNEL_UTIL_H_
#define RFCN_TF_CUSTOM_OPS_COMMON_CPU_KERNEL_UTIL_H_

#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/errors.h"
#include "tensorflow/core/platform/threadpool.h"

namespace rfcn_common {

// The CPU device's worker pool (the one ParallelFor runs on).
inline tensorflow::thread::ThreadPool* CpuWorkers(
    tensorflow::OpKernelContext* ctx) {
  return ctx->device()->tensorflow_cpu_worker_threads()->workers;
}

// OK where every row of the float32 rois [R, 5] has a batch index that
// `batch_index` (the op's own rule, e.g. rfcn_psroi::roi_batch_index)
// accepts; else InvalidArgument naming `op`, the row and the value.
inline absl::Status CheckRoiBatchIndices(const tensorflow::Tensor& rois,
                                         int batch, const char* op,
                                         bool (*batch_index)(float, int,
                                                             int*)) {
  const auto r = rois.matrix<float>();
  for (int64_t row = 0; row < rois.dim_size(0); ++row) {
    int b;
    if (!batch_index(r(row, 0), batch, &b)) {
      return tensorflow::errors::InvalidArgument(
          op, ": rois row ", row, " has batch_index ", r(row, 0),
          ", outside [0, ", batch, ") for features with batch size ", batch);
    }
  }
  return absl::OkStatus();
}

}  // namespace rfcn_common

#endif  // RFCN_TF_CUSTOM_OPS_COMMON_CPU_KERNEL_UTIL_H_
