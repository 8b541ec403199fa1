// Argument checks and operand layout shared by the CPU and CUDA kernels of guided_relu.
#pragma once

#include <optional>
#include <utility>

#include "../checks.h"

namespace fastattr {

inline void check_guided_relu_upper(const std::optional<double>& upper) {
  TORCH_CHECK_VALUE(!upper.has_value() || *upper > 0.0,
              "fastattr.guided_relu: upper must be positive or None, got ",
              upper.value_or(0.0));
}

inline void check_guided_relu_backward_args(const at::Tensor& grad_output,
                                            const at::Tensor& result) {
  check_floating(grad_output, "grad_output");
  check_same_shape(grad_output, "grad_output", result, "result");
  check_same_dtype(grad_output, "grad_output", result, "result");
  check_same_device(grad_output, "grad_output", result, "result");
}

// The backward's operands, read in one memory order: as they are when both are
// dense with the same layout (a channels_last model stays channels_last),
// else both contiguous in grad_output's suggested memory format. The gradient
// takes the first operand's strides.
inline std::pair<at::Tensor, at::Tensor> guided_relu_backward_operands(
    const at::Tensor& grad_output, const at::Tensor& result) {
  if (same_dense_layout(grad_output, result)) return {grad_output, result};
  const auto format = grad_output.suggest_memory_format();
  return {grad_output.contiguous(format), result.contiguous(format)};
}

}  // namespace fastattr
