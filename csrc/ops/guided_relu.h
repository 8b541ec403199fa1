// Argument checks shared by the CPU and CUDA kernels of guided_relu.
#pragma once

#include <optional>

#include "../checks.h"

namespace fastattr {

inline void check_guided_relu_upper(const std::optional<double>& upper) {
  TORCH_CHECK(!upper.has_value() || *upper > 0.0,
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

}  // namespace fastattr
