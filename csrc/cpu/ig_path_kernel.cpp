// CPU kernels of the integrated-gradients path ops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <vector>

#include "../ops/ig_path.h"
#include "cpu_helpers.h"

namespace fastattr {
namespace {

// Rounds like `baseline + alpha * (input - baseline)` evaluated with PyTorch
// ops in scalar_t, which is how the reference (and Captum) build the path: the
// difference and the sum are rounded to scalar_t, and the product takes alpha
// in opmath precision (PyTorch keeps a Python-float scalar in float, not in
// Half/BFloat16) and is rounded to scalar_t once.
template <typename scalar_t>
void ig_path_inputs_kernel_impl(const scalar_t* x, const scalar_t* base,
                                const at::opmath_type<scalar_t>* alphas, int64_t steps,
                                scalar_t* out, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, n, kElementwiseGrain, [&](int64_t begin, int64_t end) {
    for (int64_t k = 0; k < steps; ++k) {
      const opmath_t a = alphas[k];
      scalar_t* out_k = out + k * n;
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t diff = x[i] - base[i];
        const scalar_t step = static_cast<scalar_t>(a * static_cast<opmath_t>(diff));
        out_k[i] = base[i] + step;
      }
    }
  });
}

template <typename scalar_t>
void ig_accumulate_kernel_impl(at::opmath_type<scalar_t>* total, const scalar_t* grads,
                               const std::vector<at::opmath_type<scalar_t>>& weights, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t steps = static_cast<int64_t>(weights.size());
  at::parallel_for(0, n, kElementwiseGrain, [&](int64_t begin, int64_t end) {
    for (int64_t k = 0; k < steps; ++k) {
      const opmath_t w = weights[k];
      const scalar_t* g_k = grads + k * n;
      for (int64_t i = begin; i < end; ++i) {
        total[i] += w * static_cast<opmath_t>(g_k[i]);
      }
    }
  });
}

at::Tensor ig_path_inputs_kernel(const at::Tensor& self, const at::Tensor& baseline,
                                 at::ArrayRef<double> alphas) {
  check_ig_path_inputs_args(self, baseline, alphas);
  auto x = self.contiguous();
  auto base = baseline.contiguous();
  const int64_t steps = static_cast<int64_t>(alphas.size());
  std::vector<int64_t> out_size(x.sizes().begin(), x.sizes().end());
  out_size[0] *= steps;
  auto out = at::empty(out_size, x.options());
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ig_path_inputs", [&] {
    std::vector<at::opmath_type<scalar_t>> a(alphas.begin(), alphas.end());
    ig_path_inputs_kernel_impl<scalar_t>(x.const_data_ptr<scalar_t>(),
                                         base.const_data_ptr<scalar_t>(), a.data(), steps,
                                         out.mutable_data_ptr<scalar_t>(), x.numel());
  });
  return out;
}

void ig_accumulate_kernel(at::Tensor& total, const at::Tensor& grads,
                          at::ArrayRef<double> weights) {
  check_ig_accumulate_args(total, grads, weights);
  if (total.numel() == 0) return;
  auto g = grads.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "ig_accumulate_", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    std::vector<opmath_t> w(weights.begin(), weights.end());
    ig_accumulate_kernel_impl<scalar_t>(total.mutable_data_ptr<opmath_t>(),
                                        g.const_data_ptr<scalar_t>(), w, total.numel());
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CPU, m) {
  m.impl("ig_path_inputs", &ig_path_inputs_kernel);
  m.impl("ig_accumulate_", &ig_accumulate_kernel);
}

}  // namespace fastattr
