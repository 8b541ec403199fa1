// CPU kernels of the integrated-gradients path ops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../ops/ig_path.h"
#include "cpu_helpers.h"

namespace fastattr {
namespace {

// Calls body(s, e, b) for the pieces of [begin, end) that lie in one sample
// row b (rows of `row` elements): a per-sample table entry is then constant
// over each inner loop, which stays a plain vectorisable loop. A shared table
// needs no split.
template <typename Body>
inline void for_each_row_piece(int64_t begin, int64_t end, int64_t row, bool per_sample,
                               const Body& body) {
  if (!per_sample) {
    body(begin, end, int64_t(0));
    return;
  }
  for (int64_t s = begin; s < end;) {
    const int64_t b = s / row;
    const int64_t e = std::min(end, (b + 1) * row);
    body(s, e, b);
    s = e;
  }
}

// Rounds like `baseline + alpha * (input - baseline)` evaluated with PyTorch
// ops in scalar_t, which is how Captum builds the path: the difference and the
// sum are rounded to scalar_t, and the product takes alpha in opmath precision
// (PyTorch keeps a Python-float scalar in float, not in Half/BFloat16) and is
// rounded to scalar_t once.
template <typename scalar_t>
void ig_path_inputs_kernel_impl(const scalar_t* x, const scalar_t* base,
                                const at::opmath_type<scalar_t>* alphas, int64_t steps,
                                int64_t step_stride, int64_t batch_stride, scalar_t* out,
                                int64_t n, int64_t row) {
  using opmath_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, n, kElementwiseGrain, [&](int64_t begin, int64_t end) {
    for (int64_t k = 0; k < steps; ++k) {
      scalar_t* out_k = out + k * n;
      for_each_row_piece(begin, end, row, batch_stride != 0, [&](int64_t s, int64_t e, int64_t b) {
        const opmath_t a = alphas[k * step_stride + b * batch_stride];
        for (int64_t i = s; i < e; ++i) {
          const scalar_t diff = x[i] - base[i];
          const scalar_t step = static_cast<scalar_t>(a * static_cast<opmath_t>(diff));
          out_k[i] = base[i] + step;
        }
      });
    }
  });
}

template <typename scalar_t>
void ig_accumulate_kernel_impl(at::opmath_type<scalar_t>* total, const scalar_t* grads,
                               const at::opmath_type<scalar_t>* weights, int64_t steps,
                               int64_t step_stride, int64_t batch_stride, int64_t n, int64_t row) {
  using opmath_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, n, kElementwiseGrain, [&](int64_t begin, int64_t end) {
    for (int64_t k = 0; k < steps; ++k) {
      const scalar_t* g_k = grads + k * n;
      for_each_row_piece(begin, end, row, batch_stride != 0, [&](int64_t s, int64_t e, int64_t b) {
        const opmath_t w = weights[k * step_stride + b * batch_stride];
        for (int64_t i = s; i < e; ++i) total[i] += w * static_cast<opmath_t>(g_k[i]);
      });
    }
  });
}

// Both ops work on flat batch-major arrays: contiguous or channels_last (the
// batch dimension is outermost in either), in the suggested memory format of
// the tensor that sets the layout (input; total).
at::Tensor ig_path_inputs_kernel(const at::Tensor& self, const at::Tensor& baseline,
                                 const at::Tensor& alphas) {
  check_ig_path_inputs_args(self, baseline, alphas);
  const auto format = self.suggest_memory_format();
  const at::Tensor x = self.contiguous(format);
  const at::Tensor base = baseline.contiguous(format);
  const int64_t steps = alphas.size(0);
  std::vector<int64_t> out_size(x.sizes().begin(), x.sizes().end());
  out_size[0] *= steps;
  auto out = at::empty(out_size, x.options().memory_format(format));
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ig_path_inputs", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const StepTableView table = step_table(alphas, c10::CppTypeToScalarType<opmath_t>::value);
    ig_path_inputs_kernel_impl<scalar_t>(
        x.const_data_ptr<scalar_t>(), base.const_data_ptr<scalar_t>(),
        table.values.const_data_ptr<opmath_t>(), steps, table.step_stride, table.batch_stride,
        out.mutable_data_ptr<scalar_t>(), x.numel(), x.numel() / x.size(0));
  });
  return out;
}

void ig_accumulate_kernel(at::Tensor& total, const at::Tensor& grads, const at::Tensor& weights) {
  check_ig_accumulate_args(total, grads, weights);
  if (total.numel() == 0) return;
  // grads are read in total's memory order.
  const at::Tensor g = grads.contiguous(total.suggest_memory_format());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "ig_accumulate_", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const StepTableView table = step_table(weights, c10::CppTypeToScalarType<opmath_t>::value);
    ig_accumulate_kernel_impl<scalar_t>(
        total.mutable_data_ptr<opmath_t>(), g.const_data_ptr<scalar_t>(),
        table.values.const_data_ptr<opmath_t>(), weights.size(0), table.step_stride,
        table.batch_stride, total.numel(), total.numel() / total.size(0));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CPU, m) {
  m.impl("ig_path_inputs", &ig_path_inputs_kernel);
  m.impl("ig_accumulate_", &ig_accumulate_kernel);
}

}  // namespace fastattr
