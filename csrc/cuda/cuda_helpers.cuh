// Launch helpers shared by the CUDA kernels.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

namespace fastattr {

constexpr int kThreadsPerBlock = 256;

// Grid for a grid-stride loop over n elements: enough blocks to fill every SM
// several times over, never more than needed.
inline dim3 grid_for(int64_t n) {
  const int64_t blocks = (n + kThreadsPerBlock - 1) / kThreadsPerBlock;
  const int64_t cap =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return dim3(static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, cap))));
}

#define FASTATTR_KERNEL_LOOP(i, n)                                                  \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

}  // namespace fastattr
