// Argument checks and geometry shared by the CPU and CUDA kernels of guided_max_pool2d.
#pragma once

#include "../checks.h"

namespace fastattr {

struct Pool2dGeometry {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

inline Pool2dGeometry make_pool2d_geometry(at::IntArrayRef kernel_size,
                                           at::IntArrayRef stride,
                                           at::IntArrayRef padding,
                                           at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(kernel_size.size() == 2 && kernel_size[0] > 0 && kernel_size[1] > 0,
              "fastattr.guided_max_pool2d: kernel_size must be two positive ints, got ",
              kernel_size);
  TORCH_CHECK_VALUE(stride.size() == 2 && stride[0] > 0 && stride[1] > 0,
              "fastattr.guided_max_pool2d: stride must be two positive ints, got ", stride);
  TORCH_CHECK_VALUE(dilation.size() == 2 && dilation[0] > 0 && dilation[1] > 0,
              "fastattr.guided_max_pool2d: dilation must be two positive ints, got ",
              dilation);
  TORCH_CHECK_VALUE(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0 &&
                  padding[0] * 2 <= kernel_size[0] && padding[1] * 2 <= kernel_size[1],
              "fastattr.guided_max_pool2d: padding must be non-negative and at most half "
              "the kernel size, got padding=", padding, " kernel_size=", kernel_size);
  return {kernel_size[0], kernel_size[1], stride[0], stride[1],
          padding[0],     padding[1],     dilation[0], dilation[1]};
}

// The forward's checks (ATen's max_pool2d would refuse the same inputs, with
// its own words; these are the fake kernel's).
inline void check_guided_max_pool2d_args(const at::Tensor& self, at::IntArrayRef kernel_size,
                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef dilation, bool ceil_mode,
                                         c10::string_view mode) {
  check_floating(self, "self");
  TORCH_CHECK_VALUE(self.dim() == 4, "fastattr.guided_max_pool2d: self must be 4-D (N, C, H, W), got ",
              self.dim(), "-D");
  const Pool2dGeometry geo = make_pool2d_geometry(kernel_size, stride, padding, dilation);
  parse_pool_rule(mode);
  const int64_t oh = pool_output_size(self.size(2), geo.kh, geo.sh, geo.ph, geo.dh, ceil_mode);
  const int64_t ow = pool_output_size(self.size(3), geo.kw, geo.sw, geo.pw, geo.dw, ceil_mode);
  TORCH_CHECK_VALUE(oh >= 1 && ow >= 1, "fastattr.guided_max_pool2d: output size of self ",
              self.sizes(), " is too small (", oh, "x", ow, ")");
}

inline void check_guided_max_pool2d_backward_args(const at::Tensor& grad_output,
                                                  const at::Tensor& indices,
                                                  at::IntArrayRef input_size) {
  check_floating(grad_output, "grad_output");
  TORCH_CHECK_VALUE(grad_output.dim() == 4,
              "fastattr._guided_max_pool2d_backward: grad_output must be 4-D (N, C, H, W), got ",
              grad_output.dim(), "-D");
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong,
              "fastattr._guided_max_pool2d_backward: indices must be int64, got ",
              dtype_name(indices.scalar_type()));
  check_same_shape(grad_output, "grad_output", indices, "indices");
  check_same_device(grad_output, "grad_output", indices, "indices");
  TORCH_CHECK_VALUE(input_size.size() == 4 && input_size[0] == grad_output.size(0) &&
                  input_size[1] == grad_output.size(1),
              "fastattr._guided_max_pool2d_backward: input_size must be (N, C, H, W) "
              "matching grad_output's N and C, got ", input_size);
}

// Index of the nearest output cell along one axis, as F.interpolate(mode="nearest")
// computes it when resizing the (out)-sized gradient sign map to (in).
// float arithmetic on purpose: it reproduces ATen's rounding bit for bit.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline int64_t nearest_source_index(int64_t dst, float scale, int64_t src_size) {
  int64_t src = static_cast<int64_t>(floorf(static_cast<float>(dst) * scale));
  return src < src_size - 1 ? src : src_size - 1;
}

}  // namespace fastattr
