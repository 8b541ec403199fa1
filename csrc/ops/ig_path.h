// Argument checks shared by the CPU and CUDA kernels of the IG path ops.
#pragma once

#include "../checks.h"

namespace fastattr {

inline void check_ig_path_inputs_args(const at::Tensor& input,
                                      const at::Tensor& baseline,
                                      at::ArrayRef<double> alphas) {
  check_floating(input, "input");
  TORCH_CHECK(input.dim() >= 1,
              "fastattr.ig_path_inputs: input must have a batch dimension, got a 0-D tensor");
  check_same_shape(input, "input", baseline, "baseline");
  check_same_dtype(input, "input", baseline, "baseline");
  check_same_device(input, "input", baseline, "baseline");
  TORCH_CHECK(!alphas.empty(), "fastattr.ig_path_inputs: alphas must not be empty");
}

inline void check_ig_accumulate_args(const at::Tensor& total, const at::Tensor& grads,
                                     at::ArrayRef<double> weights) {
  check_floating(grads, "grads");
  const auto acc_type = at::toOpMathType(grads.scalar_type());
  TORCH_CHECK(total.scalar_type() == acc_type,
              "fastattr.ig_accumulate_: total must have the accumulation dtype of grads (",
              acc_type, " for ", grads.scalar_type(), " grads), got ", total.scalar_type());
  check_same_device(total, "total", grads, "grads");
  TORCH_CHECK(!weights.empty(), "fastattr.ig_accumulate_: weights must not be empty");
  TORCH_CHECK(total.dim() >= 1 && grads.dim() == total.dim(),
              "fastattr.ig_accumulate_: grads must have the same number of dimensions as total, got ",
              grads.dim(), " and ", total.dim());
  TORCH_CHECK(grads.size(0) == total.size(0) * static_cast<int64_t>(weights.size()) &&
                  grads.sizes().slice(1) == total.sizes().slice(1),
              "fastattr.ig_accumulate_: grads must have shape (len(weights) * B, ...) = (",
              total.size(0) * static_cast<int64_t>(weights.size()), ", ", total.sizes().slice(1),
              ") for total of shape ", total.sizes(), ", got ", grads.sizes());
  TORCH_CHECK(total.is_contiguous(),
              "fastattr.ig_accumulate_: total must be contiguous (it is written in place)");
}

}  // namespace fastattr
