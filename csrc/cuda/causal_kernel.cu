// CUDA kernels of the causal-ATE ops: the fused region outcome (one thread
// block per row, a fixed-order tree reduction in double) and the block ATE map
// (one thread per map pixel). See csrc/ops/causal.h for the arithmetic, shared
// with the CPU kernels (csrc/cpu/causal_kernel.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "../ops/causal.h"
#include "cuda_helpers.cuh"

namespace fastattr {
namespace {

template <typename scalar_t>
__global__ void region_outcome_cuda_impl(causal::OutcomeArgs a, const scalar_t* __restrict__ z,
                                         const bool* __restrict__ roi, const double* __restrict__ gt,
                                         scalar_t* __restrict__ out) {
  __shared__ causal::Sums partial[kThreadsPerBlock];
  const int64_t plane = a.height * a.width;
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    causal::Sums acc{};
    for (int64_t pix = threadIdx.x; pix < plane; pix += blockDim.x) {
      if (roi[pix]) causal::add_pixel(a, z, gt, r, pix / a.width, pix % a.width, acc);
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = kThreadsPerBlock / 2; stride > 0; stride >>= 1) {
      if (threadIdx.x < stride) partial[threadIdx.x].add(partial[threadIdx.x + stride]);
      __syncthreads();
    }
    if (threadIdx.x == 0) out[r] = static_cast<scalar_t>(causal::finish_outcome(a, partial[0]));
    __syncthreads();  // partial[] is reused by the next row
  }
}

template <typename scalar_t>
__global__ void causal_ate_map_cuda_impl(const scalar_t* __restrict__ screen, const scalar_t* __restrict__ full,
                                         const scalar_t* __restrict__ base, const bool* __restrict__ visited,
                                         scalar_t* __restrict__ out, int64_t n, AteArgs a, double tau) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t width = a.gw * a.bw;
  const int64_t per_image = a.gh * a.bh * width;
  FASTATTR_KERNEL_LOOP(idx, n) {
    const int64_t img = idx / per_image;
    const int64_t p = idx - img * per_image;
    const int64_t y = p / width;
    const int64_t x = p - y * width;
    const int64_t cell = (img * a.gh + y / a.bh) * a.gw + x / a.bw;
    const opmath_t ate = visited[cell] ? causal::cell_ate<opmath_t>(screen + cell * a.n0, full + cell * a.n1,
                                                                    static_cast<opmath_t>(base[img]), a.n0, a.n1,
                                                                    static_cast<opmath_t>(tau))
                                       : opmath_t(0);
    out[idx] = static_cast<scalar_t>(ate);
  }
}

at::Tensor region_outcome_kernel(const at::Tensor& output, const at::Tensor& roi, const at::Tensor& gt,
                                 int64_t channel, c10::string_view outcome, c10::string_view activation,
                                 double threshold, bool empty_is_one) {
  const causal::OutcomeArgs a =
      check_region_outcome_args(output, roi, gt, channel, outcome, activation, threshold, empty_is_one);
  c10::cuda::CUDAGuard guard(output.device());
  auto out = at::empty({a.rows}, output.options());
  if (a.rows == 0) return out;
  const at::Tensor mask = roi.contiguous();
  const at::Tensor g = gt.to(at::kDouble).contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t cap = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  const dim3 grid(static_cast<unsigned>(std::max<int64_t>(1, std::min(a.rows, cap))));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "region_outcome", [&] {
    region_outcome_cuda_impl<scalar_t><<<grid, kThreadsPerBlock, 0, stream>>>(
        a, output.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(), g.const_data_ptr<double>(),
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor causal_ate_map_kernel(const at::Tensor& screen, const at::Tensor& full, const at::Tensor& base,
                                 const at::Tensor& visited, at::IntArrayRef block, double tau) {
  const AteArgs a = check_causal_ate_map_args(screen, full, base, visited, block, tau);
  c10::cuda::CUDAGuard guard(screen.device());
  auto out = at::empty({a.images, a.gh * a.bh, a.gw * a.bw}, screen.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const at::Tensor sc = screen.contiguous(), fu = full.contiguous(), bs = base.contiguous();
  const at::Tensor vis = visited.contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, screen.scalar_type(), "causal_ate_map", [&] {
    causal_ate_map_cuda_impl<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
        sc.const_data_ptr<scalar_t>(), fu.const_data_ptr<scalar_t>(), bs.const_data_ptr<scalar_t>(),
        vis.const_data_ptr<bool>(), out.mutable_data_ptr<scalar_t>(), n, a, tau);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CUDA, m) {
  m.impl("region_outcome", &region_outcome_kernel);
  m.impl("causal_ate_map", &causal_ate_map_kernel);
}

}  // namespace fastattr
