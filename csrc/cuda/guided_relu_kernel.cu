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

template <typename scalar_t>
__global__ void guided_relu_forward_cuda_impl(const scalar_t* __restrict__ x,
                                              scalar_t* __restrict__ out, int64_t n,
                                              at::opmath_type<scalar_t> hi) {
  using opmath_t = at::opmath_type<scalar_t>;
  FASTATTR_KERNEL_LOOP(i, n) {
    const opmath_t v = static_cast<opmath_t>(x[i]);
    out[i] = static_cast<scalar_t>(v != v ? v : (v < 0 ? opmath_t(0) : (v > hi ? hi : v)));
  }
}

template <typename scalar_t>
__global__ void guided_relu_backward_cuda_impl(const scalar_t* __restrict__ grad_out,
                                               const scalar_t* __restrict__ result,
                                               scalar_t* __restrict__ grad_in, int64_t n,
                                               bool deconvnet, at::opmath_type<scalar_t> hi) {
  using opmath_t = at::opmath_type<scalar_t>;
  if (deconvnet) {
    FASTATTR_KERNEL_LOOP(i, n) {
      const opmath_t g = static_cast<opmath_t>(grad_out[i]);
      grad_in[i] = static_cast<scalar_t>(g > 0 ? g : opmath_t(0));
    }
  } else {
    FASTATTR_KERNEL_LOOP(i, n) {
      const opmath_t g = static_cast<opmath_t>(grad_out[i]);
      const opmath_t r = static_cast<opmath_t>(result[i]);
      grad_in[i] = static_cast<scalar_t>((g > 0 && r > 0 && r < hi) ? g : opmath_t(0));
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
  // Dense inputs in their own memory order, as on the CPU.
  const at::Tensor x = dense_or_contiguous(self);
  auto out = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "guided_relu", [&] {
    guided_relu_forward_cuda_impl<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n,
        static_cast<at::opmath_type<scalar_t>>(hi));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
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
    guided_relu_backward_cuda_impl<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
        grad_in.mutable_data_ptr<scalar_t>(), n, rule == ReluRule::Deconvnet,
        static_cast<at::opmath_type<scalar_t>>(hi));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CUDA, m) {
  m.impl("guided_relu", &guided_relu_forward_kernel);
  m.impl("_guided_relu_backward", &guided_relu_backward_kernel);
}

}  // namespace fastattr
