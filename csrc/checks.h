// Argument parsing and checks shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <string>

namespace fastattr {

// Backward rule of a ReLU-family unit (see python/fastattr/reference.py).
enum class ReluRule : int { Guided = 0, Deconvnet = 1 };

inline ReluRule parse_relu_rule(c10::string_view mode) {
  if (mode == "guided") return ReluRule::Guided;
  if (mode == "deconvnet") return ReluRule::Deconvnet;
  TORCH_CHECK(false, "fastattr: mode must be 'guided' or 'deconvnet', got '",
              std::string(mode), "'");
}

// Rule for the max-pool gradient: the GNL reference rule (nearest-upsampled
// sign mask of grad_output) or routing only positive gradients per window.
enum class PoolRule : int { Reference = 0, Window = 1 };

inline PoolRule parse_pool_rule(c10::string_view mode) {
  if (mode == "reference") return PoolRule::Reference;
  if (mode == "window") return PoolRule::Window;
  TORCH_CHECK(false, "fastattr: mode must be 'reference' or 'window', got '",
              std::string(mode), "'");
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastattr: ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_same_shape(const at::Tensor& a, const char* a_name,
                             const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(a.sizes() == b.sizes(), "fastattr: ", a_name, " and ", b_name,
              " must have the same shape, got ", a.sizes(), " and ", b.sizes());
}

inline void check_same_dtype(const at::Tensor& a, const char* a_name,
                             const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fastattr: ", a_name, " and ",
              b_name, " must have the same dtype, got ", a.scalar_type(),
              " and ", b.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const char* a_name,
                              const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(a.device() == b.device(), "fastattr: ", a_name, " and ", b_name,
              " must be on the same device, got ", a.device(), " and ",
              b.device());
}

// Output-size arithmetic of nn.MaxPool2d (ATen's pooling_output_shape).
inline int64_t pool_output_size(int64_t in, int64_t k, int64_t s, int64_t p,
                                int64_t d, bool ceil_mode) {
  int64_t numer = in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  int64_t out = (numer >= 0 ? numer / s : -((-numer + s - 1) / s)) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

}  // namespace fastattr
