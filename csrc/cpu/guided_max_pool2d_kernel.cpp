// CPU kernels of guided_max_pool2d and its fused backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../ops/guided_max_pool2d.h"
#include "cpu_helpers.h"

namespace fastattr {
namespace {

// Whether the windows tile the input (kernel == stride, no padding or dilation)
// and every input row / column lies in the window of its nearest output cell.
// Then, for both rules, an input element receives at most one gradient, from
// the window it lies in, and the reference gate there is that gradient's sign:
// the result is relu(g[o]) at idx[o] and zero elsewhere, one fill and one
// scatter per plane (what ATen's own max-pool backward costs).
bool windows_tile_nearest(const Pool2dGeometry& geo, const std::vector<int64_t>& near_h,
                          const std::vector<int64_t>& near_w, int64_t out_h, int64_t out_w) {
  if (geo.kh != geo.sh || geo.kw != geo.sw || geo.ph != 0 || geo.pw != 0 || geo.dh != 1 ||
      geo.dw != 1) {
    return false;
  }
  const auto tiles = [](const std::vector<int64_t>& near, int64_t step, int64_t out) {
    const int64_t covered = std::min<int64_t>(static_cast<int64_t>(near.size()), out * step);
    for (int64_t i = 0; i < covered; ++i) {
      if (near[i] != i / step) return false;
    }
    return true;
  };
  return tiles(near_h, geo.sh, out_h) && tiles(near_w, geo.sw, out_w);
}

// The output cell whose window holds each input element of a tiled pool (-1:
// in no window), so that a plane's indices can be checked with one lookup each.
std::vector<int64_t> tiled_window_of(const Pool2dGeometry& geo, int64_t in_h, int64_t in_w,
                                     int64_t out_h, int64_t out_w) {
  std::vector<int64_t> window(in_h * in_w, -1);
  for (int64_t h = 0; h < std::min(in_h, out_h * geo.sh); ++h) {
    for (int64_t w = 0; w < std::min(in_w, out_w * geo.sw); ++w) {
      window[h * in_w + w] = (h / geo.sh) * out_w + w / geo.sw;
    }
  }
  return window;
}

// One task per (n, c) plane: scatter the plane's output gradients to their
// argmax positions in (oh, ow) order (the order ATen's max-pool backward and
// the CUDA kernel's gather sum in, so results are bit-identical), then apply
// the rule per input element. O(out + in) per plane and branch-light, where a
// per-input gather over candidate windows costs O(in * windows per input).
// float/double accumulate in the output itself; Half/BFloat16 in a per-task
// opmath buffer (one allocation per task, none per element). Tiled pools
// (windows_tile_nearest) take a one-fill-one-scatter shortcut.
template <typename scalar_t>
void guided_max_pool2d_backward_kernel_impl(const scalar_t* grad_out, const int64_t* indices,
                                            scalar_t* grad_in, int64_t planes, int64_t in_h,
                                            int64_t in_w, int64_t out_h, int64_t out_w,
                                            const Pool2dGeometry& geo, PoolRule rule) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool kInPlace = std::is_same_v<scalar_t, opmath_t>;
  const int64_t in_plane = in_h * in_w;
  const int64_t out_plane = out_h * out_w;
  // Nearest output row / column of each input row / column (F.interpolate's
  // "nearest" from (out_h, out_w) to (in_h, in_w)), computed once.
  std::vector<int64_t> near_h(in_h), near_w(in_w);
  const float scale_h = static_cast<float>(out_h) / static_cast<float>(in_h);
  const float scale_w = static_cast<float>(out_w) / static_cast<float>(in_w);
  for (int64_t h = 0; h < in_h; ++h) near_h[h] = nearest_source_index(h, scale_h, out_h);
  for (int64_t w = 0; w < in_w; ++w) near_w[w] = nearest_source_index(w, scale_w, out_w);
  const bool tiled = windows_tile_nearest(geo, near_h, near_w, out_h, out_w);
  const std::vector<int64_t> window_of =
      tiled ? tiled_window_of(geo, in_h, in_w, out_h, out_w) : std::vector<int64_t>();
  // Forward-pass indices always lie in their own window. The op accepts any
  // indices, so the shortcut checks each one as it goes and, on a plane where
  // one does not, returns false and the general path redoes the whole plane.
  const auto tiled_plane = [&](const scalar_t* g_plane, const int64_t* i_plane, scalar_t* dst) {
    std::fill(dst, dst + in_plane, scalar_t(0));
    for (int64_t o = 0; o < out_plane; ++o) {
      const int64_t j = i_plane[o];
      if (j < 0 || j >= in_plane || window_of[j] != o) return false;
      const opmath_t g = static_cast<opmath_t>(g_plane[o]);
      dst[j] = static_cast<scalar_t>(g > opmath_t(0) ? g : opmath_t(0));
    }
    return true;
  };
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, in_plane + out_plane));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> buffer;
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* g_plane = grad_out + plane * out_plane;
      const int64_t* i_plane = indices + plane * out_plane;
      scalar_t* out_plane_ptr = grad_in + plane * in_plane;
      if (tiled && tiled_plane(g_plane, i_plane, out_plane_ptr)) continue;
      if (!kInPlace) buffer.resize(in_plane);
      opmath_t* acc = kInPlace ? reinterpret_cast<opmath_t*>(out_plane_ptr) : buffer.data();
      std::fill(acc, acc + in_plane, opmath_t(0));
      for (int64_t o = 0; o < out_plane; ++o) {
        const int64_t j = i_plane[o];
        // Not from a max-pool of this input size: ignored, as in the CUDA
        // kernel's gather (fastattr.ops.guided_max_pool2d_backward raises).
        if (j < 0 || j >= in_plane) continue;
        const opmath_t g = static_cast<opmath_t>(g_plane[o]);
        acc[j] += (rule == PoolRule::Window) ? (g > opmath_t(0) ? g : opmath_t(0)) : g;
      }
      if (rule == PoolRule::Reference) {
        for (int64_t h = 0; h < in_h; ++h) {
          const scalar_t* g_row = g_plane + near_h[h] * out_w;
          const opmath_t* acc_row = acc + h * in_w;
          scalar_t* dst = out_plane_ptr + h * in_w;
          for (int64_t w = 0; w < in_w; ++w) {
            const bool keep = static_cast<opmath_t>(g_row[near_w[w]]) > opmath_t(0);
            dst[w] = static_cast<scalar_t>(keep ? acc_row[w] : opmath_t(0));
          }
        }
      } else if (!kInPlace) {
        for (int64_t i = 0; i < in_plane; ++i) out_plane_ptr[i] = static_cast<scalar_t>(acc[i]);
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
