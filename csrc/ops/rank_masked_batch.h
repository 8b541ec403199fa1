// Rank-based progressive masking (RISE's deletion and insertion metrics, spec
// §3.4): the images of a chunk of steps, written straight from each pixel's
// rank. Shared by the CPU and CUDA kernels (csrc/cpu/rank_masked_batch_kernel.cpp,
// csrc/cuda/rank_masked_batch_kernel.cu).
//
// For S images (S, C, H, W), ranks (1 or S, H, W) and steps t = start + k,
// k < count, the batch is step-major like the other masked batches:
//   out[k*S + s][c, h, w] = ranks[s or 0, h, w] >= t * step ? self[s][c, h, w]
//                                                            : baseline[s][c, h, w]
// i.e. after t steps the pixels of rank < t * step (every channel) have been
// replaced by the baseline. Deletion: self = the image, baseline = the
// substrate; insertion: self = the substrate, baseline = the image. The mask
// is binary, so every output element is an exact copy of one of its operands.
// Any int64 rank is valid (a permutation of 0..H*W-1 is what the metrics pass).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "perturb.h"

namespace fastattr {
namespace masks {

// The keep mask of step start + k at pixel p of sample s: 1 keeps self, 0
// takes the baseline.
struct RankMaskSource {
  const int64_t* ranks;   // (1 or S, H*W), contiguous
  int64_t sample_stride;  // H*W, or 0 for ranks shared by all samples
  int64_t step, start;

  FASTATTR_HOST_DEVICE bool keep(int64_t k, int64_t s, int64_t p) const {
    return ranks[s * sample_stride + p] >= (start + k) * step;
  }
};

}  // namespace masks

// The fake kernel (python/fastattr/_meta.py) states the same conditions with
// the same messages.
inline void check_rank_masked_batch_args(const at::Tensor& input, const at::Tensor& baseline,
                                         const at::Tensor& ranks, int64_t step, int64_t start, int64_t count) {
  constexpr const char* op = "rank_masked_batch";
  check_batch_operands(op, input, baseline);
  TORCH_CHECK_VALUE(input.dim() == 4, "fastattr.rank_masked_batch: input must be 4-D (S, C, H, W), got a ", input.dim(),
              "-D tensor of shape ", input.sizes());
  check_int64(op, ranks, "ranks");
  check_on_device(op, ranks, "ranks", input, "input");
  const bool shape_ok = ranks.dim() == 3 && (ranks.size(0) == 1 || ranks.size(0) == input.size(0)) &&
                        ranks.size(1) == input.size(2) && ranks.size(2) == input.size(3);
  TORCH_CHECK_VALUE(shape_ok, "fastattr.rank_masked_batch: ranks must have shape [1, ", input.size(2), ", ",
              input.size(3), "] or [", input.size(0), ", ", input.size(2), ", ", input.size(3),
              "] (one rank map shared by all samples, or one per sample), got ", ranks.sizes());
  TORCH_CHECK_VALUE(step >= 1, "fastattr.rank_masked_batch: step must be at least 1, got ", step);
  TORCH_CHECK_VALUE(start >= 0 && count >= 1, "fastattr.rank_masked_batch: start must be >= 0 and count >= 1, got start=",
              start, " count=", count);
  TORCH_CHECK_VALUE(start + count - 1 <= std::numeric_limits<int64_t>::max() / step,
              "fastattr.rank_masked_batch: (start + count - 1) * step overflows int64 (start=", start,
              ", count=", count, ", step=", step, ")");
}

}  // namespace fastattr
