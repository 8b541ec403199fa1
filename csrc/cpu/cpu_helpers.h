// Helpers shared by the CPU kernels.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fastattr {

// Elementwise kernels: enough work per task to amortise the thread hand-off.
constexpr int64_t kElementwiseGrain = 32768;

// `keep ? v : 0` without a branch, for float and double. Written as a select,
// GCC turns it into a jump where the value feeds a read-modify-write (a
// scatter-add), and a jump on the sign of a gradient is mispredicted half the
// time; masking the bits cannot be turned into one. NaN with keep == false
// gives 0, as the select does.
template <typename T>
inline T keep_or_zero(bool keep, T v) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  using bits_t = std::conditional_t<std::is_same_v<T, float>, uint32_t, uint64_t>;
  bits_t bits;
  std::memcpy(&bits, &v, sizeof(T));
  bits &= bits_t(0) - static_cast<bits_t>(keep);
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace fastattr
