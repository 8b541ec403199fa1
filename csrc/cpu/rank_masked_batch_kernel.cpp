// CPU kernel of the rank-based progressive-masking op. See
// csrc/ops/rank_masked_batch.h for what it computes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>

#include "../ops/rank_masked_batch.h"
#include "cpu_helpers.h"

namespace fastattr {
namespace {

// Pixels per task: a task writes every channel of a run of pixels of one
// (step, sample) block.
constexpr int64_t kPixelRun = 1024;

// NCHW: for each channel plane, out = rank >= threshold ? x : base over the
// run. NHWC: the C values of a pixel are adjacent and share its choice. Each
// output element is written by exactly one task; the body is a select between
// two loads (no arithmetic on the values, so the copy is exact).
template <typename scalar_t>
void rank_masked_batch_forward_kernel_impl(const scalar_t* x, const scalar_t* base, const int64_t* ranks,
                                           scalar_t* out, int64_t samples, int64_t channels, int64_t plane,
                                           bool channels_last, int64_t rank_stride, int64_t step, int64_t start,
                                           int64_t count) {
  const int64_t row = channels * plane;
  const int64_t runs = (plane + kPixelRun - 1) / kPixelRun;
  const int64_t work = std::min(plane, kPixelRun) * channels;
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, work));
  at::parallel_for(0, count * samples * runs, grain, [&](int64_t begin, int64_t end) {
    for (const auto task : c10::irange(begin, end)) {
      const int64_t run = task % runs;
      const int64_t s = (task / runs) % samples;
      const int64_t k = task / (runs * samples);
      const int64_t threshold = (start + k) * step;
      const int64_t p0 = run * kPixelRun;
      const int64_t len = std::min(kPixelRun, plane - p0);
      const int64_t* r = ranks + s * rank_stride + p0;
      const scalar_t* xs = x + s * row;
      const scalar_t* bs = base + s * row;
      scalar_t* os = out + (k * samples + s) * row;
      if (channels_last) {
        for (int64_t i = 0; i < len; ++i) {
          const bool keep = r[i] >= threshold;
          const int64_t e0 = (p0 + i) * channels;
          for (int64_t c = 0; c < channels; ++c) os[e0 + c] = keep ? xs[e0 + c] : bs[e0 + c];
        }
      } else {
        for (int64_t c = 0; c < channels; ++c) {
          const int64_t e0 = c * plane + p0;
          for (int64_t i = 0; i < len; ++i) os[e0 + i] = r[i] >= threshold ? xs[e0 + i] : bs[e0 + i];
        }
      }
    }
  });
}

at::Tensor rank_masked_batch_forward_kernel(const at::Tensor& self, const at::Tensor& baseline,
                                            const at::Tensor& ranks, int64_t step, int64_t start, int64_t count) {
  check_rank_masked_batch_args(self, baseline, ranks, step, start, count);
  BatchOperands ops = batch_operands(self, baseline, count);
  if (ops.out.numel() == 0) return ops.out;
  const at::Tensor r = ranks.contiguous();
  const int64_t plane = self.size(2) * self.size(3);
  const bool channels_last = ops.format == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), "rank_masked_batch", [&] {
    rank_masked_batch_forward_kernel_impl<scalar_t>(
        ops.x.const_data_ptr<scalar_t>(), ops.base.const_data_ptr<scalar_t>(), r.const_data_ptr<int64_t>(),
        ops.out.mutable_data_ptr<scalar_t>(), ops.samples, self.size(1), plane, channels_last,
        ranks.size(0) == 1 ? 0 : plane, step, start, count);
  });
  return ops.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CPU, m) {
  m.impl("rank_masked_batch", &rank_masked_batch_forward_kernel);
}

}  // namespace fastattr
