// CPU kernels of guided_max_pool2d and its fused backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "../ops/guided_max_pool2d.h"
#include "cpu_helpers.h"

namespace fastattr {
namespace {

// One task per input row: each input element gathers the gradients of the
// windows that chose it, in (oh, ow) order like ATen's scatter, then the rule
// is applied to the sum (reference) or to each term (window).
template <typename scalar_t>
void guided_max_pool2d_backward_kernel_impl(const scalar_t* grad_out, const int64_t* indices,
                                            scalar_t* grad_in, int64_t planes, int64_t in_h,
                                            int64_t in_w, int64_t out_h, int64_t out_w,
                                            const Pool2dGeometry& geo, PoolRule rule) {
  using opmath_t = at::opmath_type<scalar_t>;
  const float scale_h = static_cast<float>(out_h) / static_cast<float>(in_h);
  const float scale_w = static_cast<float>(out_w) / static_cast<float>(in_w);
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, in_w * 8));
  at::parallel_for(0, planes * in_h, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / in_h;
      const int64_t h = row % in_h;
      const scalar_t* g_plane = grad_out + plane * out_h * out_w;
      const int64_t* i_plane = indices + plane * out_h * out_w;
      // Output rows whose window can contain row h (dilation filtered by the index test).
      const int64_t oh_lo_num = h + geo.ph - geo.dh * (geo.kh - 1);
      const int64_t oh_lo = oh_lo_num <= 0 ? 0 : (oh_lo_num + geo.sh - 1) / geo.sh;
      const int64_t oh_hi = std::min(out_h - 1, (h + geo.ph) / geo.sh);
      const int64_t nearest_h = nearest_source_index(h, scale_h, out_h);
      for (int64_t w = 0; w < in_w; ++w) {
        const int64_t ow_lo_num = w + geo.pw - geo.dw * (geo.kw - 1);
        const int64_t ow_lo = ow_lo_num <= 0 ? 0 : (ow_lo_num + geo.sw - 1) / geo.sw;
        const int64_t ow_hi = std::min(out_w - 1, (w + geo.pw) / geo.sw);
        const int64_t flat = h * in_w + w;
        opmath_t acc = 0;
        for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
          for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) {
            const int64_t o = oh * out_w + ow;
            if (i_plane[o] == flat) {
              const opmath_t g = static_cast<opmath_t>(g_plane[o]);
              acc += (rule == PoolRule::Window) ? (g > 0 ? g : opmath_t(0)) : g;
            }
          }
        }
        if (rule == PoolRule::Reference) {
          const int64_t nearest_w = nearest_source_index(w, scale_w, out_w);
          const opmath_t gate = static_cast<opmath_t>(g_plane[nearest_h * out_w + nearest_w]);
          acc = gate > 0 ? acc : opmath_t(0);
        }
        grad_in[row * in_w + w] = static_cast<scalar_t>(acc);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> guided_max_pool2d_forward_kernel(
    const at::Tensor& self, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, c10::string_view mode) {
  check_floating(self, "self");
  TORCH_CHECK(self.dim() == 4, "fastattr.guided_max_pool2d: self must be 4-D (N, C, H, W), got ",
              self.dim(), "-D");
  make_pool2d_geometry(kernel_size, stride, padding, dilation);
  parse_pool_rule(mode);
  return at::max_pool2d_with_indices(self, kernel_size, stride, padding, dilation, ceil_mode);
}

at::Tensor guided_max_pool2d_backward_kernel(const at::Tensor& grad_output,
                                             const at::Tensor& indices,
                                             c10::SymIntArrayRef input_size_sym,
                                             at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                             at::IntArrayRef padding, at::IntArrayRef dilation,
                                             c10::string_view mode) {
  const auto input_size = C10_AS_INTARRAYREF_SLOW(input_size_sym);
  check_guided_max_pool2d_backward_args(grad_output, indices, input_size);
  const Pool2dGeometry geo = make_pool2d_geometry(kernel_size, stride, padding, dilation);
  const PoolRule rule = parse_pool_rule(mode);
  auto g = grad_output.contiguous();
  auto idx = indices.contiguous();
  auto grad_in = at::empty(input_size, g.options());
  if (grad_in.numel() == 0) return grad_in;
  if (g.numel() == 0) return grad_in.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "_guided_max_pool2d_backward", [&] {
    guided_max_pool2d_backward_kernel_impl<scalar_t>(
        g.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
        grad_in.mutable_data_ptr<scalar_t>(), input_size[0] * input_size[1], input_size[2],
        input_size[3], g.size(2), g.size(3), geo, rule);
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CPU, m) {
  m.impl("guided_max_pool2d", &guided_max_pool2d_forward_kernel);
  m.impl("_guided_max_pool2d_backward", &guided_max_pool2d_backward_kernel);
}

}  // namespace fastattr
