// Argument checks and step tables shared by the CPU and CUDA kernels of the IG path ops.
#pragma once

#include <vector>

#include "../checks.h"

namespace fastattr {

// A node or weight table: (K,) shared by the batch or (K, B) per sample, on
// the device of the tensor it scales.
inline void check_step_table(const at::Tensor& table, const char* op, const char* name,
                             const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_TYPE(at::isFloatingType(table.scalar_type()), "fastattr.", op, ": ", name,
              " must be a floating-point tensor, got ", dtype_name(table.scalar_type()));
  TORCH_CHECK_VALUE(table.device() == like.device(), "fastattr.", op, ": ", name,
              " must be on the device of ", like_name, " (", like.device(), "), got ",
              table.device());
  TORCH_CHECK_VALUE(table.dim() == 1 || table.dim() == 2, "fastattr.", op, ": ", name,
              " must have shape (K,) or (K, B), got a ", table.dim(), "-D tensor of shape ",
              table.sizes());
  TORCH_CHECK_VALUE(table.size(0) >= 1, "fastattr.", op, ": ", name,
              " must hold at least one step (K >= 1), got shape ", table.sizes());
  TORCH_CHECK_VALUE(table.dim() == 1 || table.size(1) == like.size(0), "fastattr.", op, ": ", name,
              " of shape (K, B) must have B = ", like.size(0), " (the batch size of ", like_name,
              "), got shape ", table.sizes());
}

inline void check_ig_path_inputs_args(const at::Tensor& input, const at::Tensor& baseline,
                                      const at::Tensor& alphas) {
  check_floating(input, "input");
  TORCH_CHECK_VALUE(input.dim() >= 1,
              "fastattr.ig_path_inputs: input must have a batch dimension, got a 0-D tensor");
  check_same_shape(input, "input", baseline, "baseline");
  check_same_dtype(input, "input", baseline, "baseline");
  check_same_device(input, "input", baseline, "baseline");
  check_step_table(alphas, "ig_path_inputs", "alphas", input, "input");
}

inline void check_ig_accumulate_args(const at::Tensor& total, const at::Tensor& grads,
                                     const at::Tensor& weights) {
  check_floating(grads, "grads");
  const auto acc_type = at::toOpMathType(grads.scalar_type());
  TORCH_CHECK_TYPE(total.scalar_type() == acc_type,
              "fastattr.ig_accumulate_: total must have the accumulation dtype of grads (",
              dtype_name(acc_type), " for ", dtype_name(grads.scalar_type()), " grads), got ",
              dtype_name(total.scalar_type()));
  check_same_device(total, "total", grads, "grads");
  TORCH_CHECK_VALUE(total.dim() >= 1,
              "fastattr.ig_accumulate_: total must have a batch dimension, got a 0-D tensor");
  check_step_table(weights, "ig_accumulate_", "weights", total, "total");
  std::vector<int64_t> expected(total.sizes().begin(), total.sizes().end());
  expected[0] *= weights.size(0);
  TORCH_CHECK_VALUE(grads.sizes() == at::IntArrayRef(expected),
              "fastattr.ig_accumulate_: grads must have shape (K * B, *total.shape[1:]) = ",
              at::IntArrayRef(expected), " for total of shape ", total.sizes(), " and K = ",
              weights.size(0), ", got ", grads.sizes());
  // Written in place as a flat array, batch-major: contiguous or channels_last.
  TORCH_CHECK_VALUE(total.is_contiguous(total.suggest_memory_format()),
              "fastattr.ig_accumulate_: total must be contiguous or channels_last (it is "
              "written in place), got strides ", total.strides(), " for shape ", total.sizes());
}

// Node/weight table in opmath precision, contiguous, on its device (converted
// there: no host round trip). Entry (k, b) is at k * step_stride + b *
// batch_stride: (K, B) tables have strides (B, 1), shared (K,) ones (1, 0).
struct StepTableView {
  at::Tensor values;
  int64_t step_stride;
  int64_t batch_stride;
};

inline StepTableView step_table(const at::Tensor& table, at::ScalarType opmath) {
  const bool per_sample = table.dim() == 2;
  return {table.to(opmath).contiguous(), per_sample ? table.size(1) : 1, per_sample ? 1 : 0};
}

}  // namespace fastattr
