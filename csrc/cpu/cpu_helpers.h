// Helpers shared by the CPU kernels.
#pragma once

#include <ATen/Parallel.h>

namespace fastattr {

// Elementwise kernels: enough work per task to amortise the thread hand-off.
constexpr int64_t kElementwiseGrain = 32768;

}  // namespace fastattr
