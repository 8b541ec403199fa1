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
  TORCH_CHECK_VALUE(false, "fastattr: mode must be 'guided' or 'deconvnet', got '",
              std::string(mode), "'");
}

// Rule for the max-pool gradient: the GNL reference rule (nearest-upsampled
// sign mask of grad_output) or routing only positive gradients per window.
enum class PoolRule : int { Reference = 0, Window = 1 };

inline PoolRule parse_pool_rule(c10::string_view mode) {
  if (mode == "reference") return PoolRule::Reference;
  if (mode == "window") return PoolRule::Window;
  TORCH_CHECK_VALUE(false, "fastattr: mode must be 'reference' or 'window', got '",
              std::string(mode), "'");
}

// Python's name of a dtype ("torch.float32"): the fake kernels
// (python/fastattr/_meta.py) print dtypes that way, and messages must read the
// same from both.
inline std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "fastattr: ", name,
              " must be a floating-point tensor, got ", dtype_name(t.scalar_type()));
}

inline void check_same_shape(const at::Tensor& a, const char* a_name,
                             const at::Tensor& b, const char* b_name) {
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), "fastattr: ", a_name, " and ", b_name,
              " must have the same shape, got ", a.sizes(), " and ", b.sizes());
}

inline void check_same_dtype(const at::Tensor& a, const char* a_name,
                             const at::Tensor& b, const char* b_name) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "fastattr: ", a_name, " and ",
              b_name, " must have the same dtype, got ", dtype_name(a.scalar_type()),
              " and ", dtype_name(b.scalar_type()));
}

inline void check_same_device(const at::Tensor& a, const char* a_name,
                              const at::Tensor& b, const char* b_name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), "fastattr: ", a_name, " and ", b_name,
              " must be on the same device, got ", a.device(), " and ",
              b.device());
}

// Memory-format rules (the fake kernels in python/fastattr/_meta.py state the
// same ones, so that FakeTensor strides equal the kernels' strides).
//
// An elementwise operand: `t` itself when it is non-overlapping and dense (its
// memory is then a permutation of a contiguous tensor, readable as a flat
// array, and an output with its strides matches it offset for offset), else a
// contiguous copy in its suggested memory format. This is the layout ATen's
// elementwise ops give their results, except that a non-dense input is not
// given an inferred stride permutation.
inline at::Tensor dense_or_contiguous(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous(t.suggest_memory_format());
}

// Two dense tensors of one shape that map every index to the same offset: equal
// strides on every dimension of size > 1 (a size-1 dimension's stride is never
// used, and ATen leaves it arbitrary, e.g. (N, C, 1, 1) in NCHW vs NHWC).
inline bool same_dense_layout(const at::Tensor& a, const at::Tensor& b) {
  if (!a.is_non_overlapping_and_dense() || !b.is_non_overlapping_and_dense()) return false;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
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
