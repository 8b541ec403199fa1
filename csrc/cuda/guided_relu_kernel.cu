// CUDA kernels of guided_relu and its fused backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>

#include "../ops/guided_relu.h"
#include "cuda_helpers.cuh"

namespace fastattr {
namespace {

// The backward rule in opmath: deconvnet relu(g); guided g where g > 0 and
// 0 < r < hi. A selection, no arithmetic: the result is g's bits or zero.
template <typename opmath_t>
__device__ __forceinline__ opmath_t relu_rule(opmath_t g, opmath_t r, bool deconvnet,
                                              opmath_t hi) {
  const bool keep = deconvnet ? g > 0 : (g > 0 && r > 0 && r < hi);
  return keep ? g : opmath_t(0);
}

// kWidth > 1: each thread moves whole 16-byte vectors (one 128-bit load and
// store per operand) through a grid-stride loop, for bandwidth (see
// cuda_helpers.cuh); the first block's threads then finish the n % kWidth
// tail elements in scalars. kWidth == 1: the plain scalar loop, for operands
// that are not 16-byte aligned. Both compute every element the same way.
template <typename scalar_t, int kWidth>
__global__ void guided_relu_backward_cuda_impl(const scalar_t* __restrict__ grad_out,
                                               const scalar_t* __restrict__ result,
                                               scalar_t* __restrict__ grad_in, int64_t n,
                                               bool deconvnet, at::opmath_type<scalar_t> hi) {
  using opmath_t = at::opmath_type<scalar_t>;
  using vec_t = Vector<scalar_t, kWidth>;
  const vec_t* __restrict__ gv = reinterpret_cast<const vec_t*>(grad_out);
  const vec_t* __restrict__ rv = reinterpret_cast<const vec_t*>(result);
  vec_t* __restrict__ ov = reinterpret_cast<vec_t*>(grad_in);
  const int64_t n_vec = n / kWidth;
  if (deconvnet) {
    FASTATTR_KERNEL_LOOP(i, n_vec) {
      const vec_t g = gv[i];
      vec_t res;
#pragma unroll
      for (int k = 0; k < kWidth; ++k) {
        const opmath_t gk = static_cast<opmath_t>(g.v[k]);
        res.v[k] = static_cast<scalar_t>(relu_rule(gk, gk, true, hi));
      }
      ov[i] = res;
    }
  } else {
    FASTATTR_KERNEL_LOOP(i, n_vec) {
      const vec_t g = gv[i];
      const vec_t r = rv[i];
      vec_t res;
#pragma unroll
      for (int k = 0; k < kWidth; ++k) {
        res.v[k] = static_cast<scalar_t>(relu_rule(static_cast<opmath_t>(g.v[k]),
                                                   static_cast<opmath_t>(r.v[k]), false, hi));
      }
      ov[i] = res;
    }
  }
  if constexpr (kWidth > 1) {
    const int64_t i = n_vec * kWidth + threadIdx.x;
    if (blockIdx.x == 0 && i < n) {
      const opmath_t g = static_cast<opmath_t>(grad_out[i]);
      const opmath_t r = deconvnet ? g : static_cast<opmath_t>(result[i]);
      grad_in[i] = static_cast<scalar_t>(relu_rule(g, r, deconvnet, hi));
    }
  }
}

at::Tensor guided_relu_forward_kernel(const at::Tensor& self, c10::string_view mode,
                                      std::optional<double> upper) {
  check_floating(self, "self");
  parse_relu_rule(mode);
  check_guided_relu_upper(upper);
  const double hi = upper.value_or(std::numeric_limits<double>::infinity());
  c10::cuda::CUDAGuard guard(self.device());
  // The forward is ATen's clamp (NaN propagates, as in the rule's definition):
  // on an H200 it took 0.054 ms against 0.055 ms for a 16-byte-vector kernel
  // of ours in float32, and 0.037 against 0.048 ms in half/bfloat16
  // (benchmarks/RESULTS.md). Dense
  // inputs keep their own memory order (TensorIterator keeps a dense input's
  // strides), as on the CPU.
  const at::Tensor x = dense_or_contiguous(self);
  if (x.numel() == 0) return at::empty_like(x);
  return upper.has_value() ? at::clamp(x, 0, hi) : at::clamp_min(x, 0);
}

at::Tensor guided_relu_backward_kernel(const at::Tensor& grad_output, const at::Tensor& result,
                                       c10::string_view mode, std::optional<double> upper) {
  check_guided_relu_backward_args(grad_output, result);
  const ReluRule rule = parse_relu_rule(mode);
  check_guided_relu_upper(upper);
  const double hi = upper.value_or(std::numeric_limits<double>::infinity());
  c10::cuda::CUDAGuard guard(grad_output.device());
  const auto operands = guided_relu_backward_operands(grad_output, result);
  const at::Tensor& g = operands.first;
  const at::Tensor& r = operands.second;
  auto grad_in = at::empty_like(g);
  const int64_t n = g.numel();
  if (n == 0) return grad_in;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "_guided_relu_backward", [&] {
    const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
    const scalar_t* r_ptr = r.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = grad_in.mutable_data_ptr<scalar_t>();
    // 16-byte vectors when all three pointers allow, for bandwidth (see the
    // forward); else the scalar loop.
    with_vector_width<scalar_t>({g_ptr, r_ptr, out_ptr}, [&](auto width) {
      constexpr int kWidth = decltype(width)::value;
      guided_relu_backward_cuda_impl<scalar_t, kWidth>
          <<<grid_for_vectors(n, kWidth), kThreadsPerBlock, 0, stream>>>(
              g_ptr, r_ptr, out_ptr, n, rule == ReluRule::Deconvnet,
              static_cast<at::opmath_type<scalar_t>>(hi));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CUDA, m) {
  m.impl("guided_relu", &guided_relu_forward_kernel);
  m.impl("_guided_relu_backward", &guided_relu_backward_kernel);
}

}  // namespace fastattr
