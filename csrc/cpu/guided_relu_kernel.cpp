// CPU kernels of guided_relu and its fused backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>

#include "../ops/guided_relu.h"
#include "cpu_helpers.h"

namespace fastattr {
namespace {

template <typename scalar_t>
void guided_relu_forward_kernel_impl(const scalar_t* x, scalar_t* out, int64_t n,
                                     double upper) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t hi = static_cast<opmath_t>(upper);
  at::parallel_for(0, n, kElementwiseGrain, [&](int64_t begin, int64_t end) {
    // Two selects and no branches, so the loop vectorises (a branch on the
    // sign of random activations is mispredicted half the time). NaN passes
    // both comparisons unchanged, as in torch.relu / hardtanh.
    for (int64_t i = begin; i < end; ++i) {
      const opmath_t v = static_cast<opmath_t>(x[i]);
      const opmath_t lo = v < opmath_t(0) ? opmath_t(0) : v;
      out[i] = static_cast<scalar_t>(lo > hi ? hi : lo);
    }
  });
}

template <typename scalar_t>
void guided_relu_backward_kernel_impl(const scalar_t* grad_out, const scalar_t* result,
                                      scalar_t* grad_in, int64_t n, ReluRule rule,
                                      double upper) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t hi = static_cast<opmath_t>(upper);
  at::parallel_for(0, n, kElementwiseGrain, [&](int64_t begin, int64_t end) {
    if (rule == ReluRule::Deconvnet) {
      for (int64_t i = begin; i < end; ++i) {
        const opmath_t g = static_cast<opmath_t>(grad_out[i]);
        grad_in[i] = static_cast<scalar_t>(keep_or_zero(g > opmath_t(0), g));
      }
    } else {
      for (int64_t i = begin; i < end; ++i) {
        const opmath_t g = static_cast<opmath_t>(grad_out[i]);
        const opmath_t r = static_cast<opmath_t>(result[i]);
        // `&`, not `&&`: no short-circuit branches, so the loop vectorises.
        const bool keep = (g > opmath_t(0)) & (r > opmath_t(0)) & (r < hi);
        grad_in[i] = static_cast<scalar_t>(keep_or_zero(keep, g));
      }
    }
  });
}

at::Tensor guided_relu_forward_kernel(const at::Tensor& self, c10::string_view mode,
                                      std::optional<double> upper) {
  check_floating(self, "self");
  parse_relu_rule(mode);
  check_guided_relu_upper(upper);
  const double hi = upper.value_or(std::numeric_limits<double>::infinity());
  // A dense input is processed in its own memory order and the result takes
  // its strides (empty_like preserves them), so channels_last stays channels_last.
  const at::Tensor x = dense_or_contiguous(self);
  auto out = at::empty_like(x);
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "guided_relu", [&] {
    guided_relu_forward_kernel_impl<scalar_t>(x.const_data_ptr<scalar_t>(),
                                              out.mutable_data_ptr<scalar_t>(), x.numel(), hi);
  });
  return out;
}

at::Tensor guided_relu_backward_kernel(const at::Tensor& grad_output, const at::Tensor& result,
                                       c10::string_view mode, std::optional<double> upper) {
  check_guided_relu_backward_args(grad_output, result);
  const ReluRule rule = parse_relu_rule(mode);
  check_guided_relu_upper(upper);
  const double hi = upper.value_or(std::numeric_limits<double>::infinity());
  const auto operands = guided_relu_backward_operands(grad_output, result);
  const at::Tensor& g = operands.first;
  const at::Tensor& r = operands.second;
  auto grad_in = at::empty_like(g);
  if (g.numel() == 0) return grad_in;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "_guided_relu_backward", [&] {
    guided_relu_backward_kernel_impl<scalar_t>(g.const_data_ptr<scalar_t>(),
                                               r.const_data_ptr<scalar_t>(),
                                               grad_in.mutable_data_ptr<scalar_t>(), g.numel(),
                                               rule, hi);
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CPU, m) {
  m.impl("guided_relu", &guided_relu_forward_kernel);
  m.impl("_guided_relu_backward", &guided_relu_backward_kernel);
}

}  // namespace fastattr
