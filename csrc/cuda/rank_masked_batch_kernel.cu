// CUDA kernel of the rank-based progressive-masking op. See
// csrc/ops/rank_masked_batch.h for what it computes; the CPU kernel
// (csrc/cpu/rank_masked_batch_kernel.cpp) writes the same bytes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../ops/rank_masked_batch.h"
#include "cuda_helpers.cuh"

namespace fastattr {
namespace {

// One thread per element of the input (S * row of them): it reads its
// pixel's rank, its input and baseline values once, and writes the element of
// every step of the chunk (coalesced rows, one per step). int64 index math.
template <typename scalar_t>
__global__ void rank_masked_batch_cuda_impl(const scalar_t* __restrict__ x, const scalar_t* __restrict__ base,
                                            scalar_t* __restrict__ out, masks::RankMaskSource source, int64_t n,
                                            int64_t row, int64_t channels, int64_t plane, bool channels_last,
                                            int64_t count) {
  FASTATTR_KERNEL_LOOP(i, n) {
    const int64_t s = i / row;
    const int64_t e = i - s * row;
    const int64_t p = channels_last ? e / channels : e % plane;
    const scalar_t xv = x[i];
    const scalar_t bv = base[i];
    for (int64_t k = 0; k < count; ++k) {
      out[k * n + i] = source.keep(k, s, p) ? xv : bv;
    }
  }
}

at::Tensor rank_masked_batch_forward_kernel(const at::Tensor& self, const at::Tensor& baseline,
                                            const at::Tensor& ranks, int64_t step, int64_t start, int64_t count) {
  check_rank_masked_batch_args(self, baseline, ranks, step, start, count);
  c10::cuda::CUDAGuard guard(self.device());
  BatchOperands ops = batch_operands(self, baseline, count);
  if (ops.out.numel() == 0) return ops.out;
  const at::Tensor r = ranks.contiguous();
  const int64_t channels = self.size(1);
  const int64_t plane = self.size(2) * self.size(3);
  const int64_t n = ops.samples * ops.row;
  const masks::RankMaskSource source{r.const_data_ptr<int64_t>(), ranks.size(0) == 1 ? 0 : plane, step, start};
  const bool channels_last = ops.format == at::MemoryFormat::ChannelsLast;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), "rank_masked_batch", [&] {
    rank_masked_batch_cuda_impl<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
        ops.x.const_data_ptr<scalar_t>(), ops.base.const_data_ptr<scalar_t>(), ops.out.mutable_data_ptr<scalar_t>(),
        source, n, ops.row, channels, plane, channels_last, count);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return ops.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CUDA, m) {
  m.impl("rank_masked_batch", &rank_masked_batch_forward_kernel);
}

}  // namespace fastattr
