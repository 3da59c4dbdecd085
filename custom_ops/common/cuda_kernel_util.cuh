// Device-code pieces shared by both ops' TF-free CUDA kernels
// (custom_ops/psroi_pool/psroi_pool_cuda_kernels.cuh,
// custom_ops/deformable/deformable_cuda_kernels.cuh): the int64 grid-stride
// loop and the atomicAdd scatter target. nvcc only.
#ifndef RFCN_TF_CUSTOM_OPS_COMMON_CUDA_KERNEL_UTIL_CUH_
#define RFCN_TF_CUSTOM_OPS_COMMON_CUDA_KERNEL_UTIL_CUH_

#include <stdint.h>

// for (int64_t idx ...) over [0, total) as a grid-stride loop, so any launch
// configuration covers all elements.
#define RFCN_GRID_LOOP(idx, total)                                         \
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) +       \
                     threadIdx.x;                                          \
       idx < (total); idx += static_cast<int64_t>(blockDim.x) * gridDim.x)

namespace rfcn_common {

// Scatter target of the backward kernels: atomicAdd on the device, a plain
// add on the host.
template <typename T>
struct AtomicAdder {
  T* buffer;
  __host__ __device__ void operator()(int64_t index, T value) const {
#if defined(__CUDA_ARCH__)
    atomicAdd(buffer + index, value);
#else
    buffer[index] += value;
#endif
  }
};

}  // namespace rfcn_common

#endif  // RFCN_TF_CUSTOM_OPS_COMMON_CUDA_KERNEL_UTIL_CUH_
