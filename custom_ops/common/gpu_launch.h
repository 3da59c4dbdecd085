// The GPU launch configuration shared by the compiled ops' functors
// (custom_ops/psroi_pool/psroi_pool_kernels.cu.cc,
// custom_ops/deformable/deformable_kernels.cu.cc). nvcc with GOOGLE_CUDA=1.
#ifndef RFCN_TF_CUSTOM_OPS_COMMON_GPU_LAUNCH_H_
#define RFCN_TF_CUSTOM_OPS_COMMON_GPU_LAUNCH_H_

#if GOOGLE_CUDA

#include <algorithm>
#include <climits>
#include <cstdint>

#include "tensorflow/core/util/gpu_kernel_helper.h"

namespace rfcn_common {

// A launch configuration for `total` elements (the kernels are grid-stride
// loops, so clamping the count for the config is safe).
inline tensorflow::GpuLaunchConfig ConfigFor(int64_t total,
                                             const Eigen::GpuDevice& d) {
  return tensorflow::GetGpuLaunchConfig(
      static_cast<int>(std::min<int64_t>(total, INT_MAX)), d);
}

}  // namespace rfcn_common

#endif  // GOOGLE_CUDA
#endif  // RFCN_TF_CUSTOM_OPS_COMMON_GPU_LAUNCH_H_
