// CPU kernels of guided_max_pool2d and its fused backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../ops/guided_max_pool2d.h"
#include "cpu_helpers.h"

namespace fastattr {
namespace {

// Nearest output cell of each input element (F.interpolate's "nearest" from
// (out_h, out_w) to (in_h, in_w)), as a flat index into the output plane.
std::vector<int64_t> nearest_cells(int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w) {
  const float scale_h = static_cast<float>(out_h) / static_cast<float>(in_h);
  const float scale_w = static_cast<float>(out_w) / static_cast<float>(in_w);
  std::vector<int64_t> near_w(in_w);
  for (int64_t w = 0; w < in_w; ++w) near_w[w] = nearest_source_index(w, scale_w, out_w);
  std::vector<int64_t> cells(in_h * in_w);
  for (int64_t h = 0; h < in_h; ++h) {
    const int64_t row = nearest_source_index(h, scale_h, out_h) * out_w;
    for (int64_t w = 0; w < in_w; ++w) cells[h * in_w + w] = row + near_w[w];
  }
  return cells;
}

// NCHW: one task per (n, c) plane: zero the plane, then scatter its output
// gradients to their argmax positions in (oh, ow) order (the order ATen's
// max-pool backward and the CUDA kernel's gather sum in, so results are
// bit-identical). The reference rule's gate (grad_output > 0 at the input
// element's nearest output cell) is applied as each gradient lands, through a
// per-call table of each input element's nearest cell: one fill and one
// scatter per plane, as in ATen's own max-pool backward, instead of a separate
// gating pass over the plane. Gating each addend gives exactly gate * sum.
// float/double accumulate in the output itself; Half/BFloat16 in a per-task
// opmath buffer (one allocation per task, none per element).
template <typename scalar_t>
void guided_max_pool2d_backward_kernel_impl(const scalar_t* grad_out, const int64_t* indices,
                                            scalar_t* grad_in, int64_t planes, int64_t in_h,
                                            int64_t in_w, int64_t out_h, int64_t out_w,
                                            PoolRule rule) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool kInPlace = std::is_same_v<scalar_t, opmath_t>;
  const int64_t in_plane = in_h * in_w;
  const int64_t out_plane = out_h * out_w;
  const std::vector<int64_t> nearest_cell =
      rule == PoolRule::Reference ? nearest_cells(in_h, in_w, out_h, out_w) : std::vector<int64_t>();
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, in_plane + out_plane));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> buffer(kInPlace ? 0 : in_plane);
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* g_plane = grad_out + plane * out_plane;
      const int64_t* i_plane = indices + plane * out_plane;
      scalar_t* out_plane_ptr = grad_in + plane * in_plane;
      opmath_t* acc = kInPlace ? reinterpret_cast<opmath_t*>(out_plane_ptr) : buffer.data();
      std::memset(acc, 0, sizeof(opmath_t) * in_plane);
      // Indices outside the plane cannot come from a max-pool of this input
      // size: ignored, as in the CUDA kernel's gather (the Python wrapper
      // fastattr.ops.guided_max_pool2d_backward raises on them).
      if (rule == PoolRule::Window) {
        for (int64_t o = 0; o < out_plane; ++o) {
          const int64_t j = i_plane[o];
          if (j < 0 || j >= in_plane) continue;
          const opmath_t g = static_cast<opmath_t>(g_plane[o]);
          acc[j] += keep_or_zero(g > opmath_t(0), g);
        }
      } else {
        const int64_t* cell = nearest_cell.data();
        for (int64_t o = 0; o < out_plane; ++o) {
          const int64_t j = i_plane[o];
          if (j < 0 || j >= in_plane) continue;
          const bool keep = static_cast<opmath_t>(g_plane[cell[j]]) > opmath_t(0);
          acc[j] += keep_or_zero(keep, static_cast<opmath_t>(g_plane[o]));
        }
      }
      if (!kInPlace) {
        for (int64_t i = 0; i < in_plane; ++i) out_plane_ptr[i] = static_cast<scalar_t>(acc[i]);
      }
    }
  });
}

// Channels per NHWC task: enough (image, channel block) tasks for every thread
// even at batch 1, in blocks of at least 16 channels so that each row segment
// read or written is a whole cache line. The results do not depend on it.
int64_t channels_per_task(int64_t batch, int64_t channels) {
  const int64_t wanted = 4 * static_cast<int64_t>(at::get_num_threads());
  if (batch >= wanted) return channels;
  const int64_t blocks_per_image = (wanted + batch - 1) / batch;
  const int64_t block = ((channels + blocks_per_image - 1) / blocks_per_image + 15) / 16 * 16;
  return std::min(channels, std::max<int64_t>(16, block));
}

// NHWC (channels_last): the same scatter, one task per (n, channel block):
// for each output cell in (oh, ow) order, the block's channels land at their
// argmax rows. Each input element still receives its addends in (oh, ow)
// order, so the result is bit-identical to the NCHW kernel's; no task writes
// another's channels.
template <typename scalar_t>
void guided_max_pool2d_backward_channels_last_impl(const scalar_t* grad_out,
                                                   const int64_t* indices, scalar_t* grad_in,
                                                   int64_t batch, int64_t channels, int64_t in_h,
                                                   int64_t in_w, int64_t out_h, int64_t out_w,
                                                   PoolRule rule) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool kInPlace = std::is_same_v<scalar_t, opmath_t>;
  const int64_t in_plane = in_h * in_w;
  const int64_t out_plane = out_h * out_w;
  const std::vector<int64_t> nearest_cell =
      rule == PoolRule::Reference ? nearest_cells(in_h, in_w, out_h, out_w) : std::vector<int64_t>();
  const int64_t block = channels_per_task(batch, channels);
  const int64_t blocks = (channels + block - 1) / block;
  const int64_t grain =
      std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, (in_plane + out_plane) * block));
  at::parallel_for(0, batch * blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> buffer(kInPlace ? 0 : in_plane * block);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks;
      const int64_t c0 = (task % blocks) * block;
      const int64_t width = std::min(block, channels - c0);
      const scalar_t* g_image = grad_out + n * out_plane * channels + c0;
      const int64_t* i_image = indices + n * out_plane * channels + c0;
      scalar_t* out_image = grad_in + n * in_plane * channels + c0;
      // Row j of the accumulator holds input cell j's `width` channels.
      opmath_t* acc = kInPlace ? reinterpret_cast<opmath_t*>(out_image) : buffer.data();
      const int64_t acc_row = kInPlace ? channels : width;
      if (acc_row == width) {  // the block's rows are one span
        std::memset(acc, 0, sizeof(opmath_t) * in_plane * width);
      } else {
        for (int64_t j = 0; j < in_plane; ++j) std::memset(acc + j * acc_row, 0, sizeof(opmath_t) * width);
      }
      for (int64_t o = 0; o < out_plane; ++o) {
        const scalar_t* g_row = g_image + o * channels;
        const int64_t* i_row = i_image + o * channels;
        if (rule == PoolRule::Window) {
          for (int64_t c = 0; c < width; ++c) {
            const int64_t j = i_row[c];
            if (j < 0 || j >= in_plane) continue;
            const opmath_t g = static_cast<opmath_t>(g_row[c]);
            acc[j * acc_row + c] += keep_or_zero(g > opmath_t(0), g);
          }
        } else {
          for (int64_t c = 0; c < width; ++c) {
            const int64_t j = i_row[c];
            if (j < 0 || j >= in_plane) continue;
            const bool keep =
                static_cast<opmath_t>(g_image[nearest_cell[j] * channels + c]) > opmath_t(0);
            acc[j * acc_row + c] += keep_or_zero(keep, static_cast<opmath_t>(g_row[c]));
          }
        }
      }
      if (!kInPlace) {
        for (int64_t j = 0; j < in_plane; ++j) {
          for (int64_t c = 0; c < width; ++c) {
            out_image[j * channels + c] = static_cast<scalar_t>(acc[j * width + c]);
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> guided_max_pool2d_forward_kernel(
    const at::Tensor& self, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, c10::string_view mode) {
  check_guided_max_pool2d_args(self, kernel_size, stride, padding, dilation, ceil_mode, mode);
  // Output and indices in self's suggested memory format (ATen's choice).
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
  // The gradient comes out in grad_output's suggested memory format (that of
  // the forward's input and outputs), computed natively for NCHW and NHWC.
  const auto format = grad_output.suggest_memory_format();
  const at::Tensor g = grad_output.contiguous(format);
  const at::Tensor idx = indices.contiguous(format);
  auto grad_in = at::empty(input_size, g.options().memory_format(format));
  if (grad_in.numel() == 0) return grad_in;
  if (g.numel() == 0) return grad_in.zero_();
  (void)geo;  // the indices carry the geometry; the arguments are validated above
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "_guided_max_pool2d_backward", [&] {
    if (format == at::MemoryFormat::ChannelsLast) {
      guided_max_pool2d_backward_channels_last_impl<scalar_t>(
          g.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
          grad_in.mutable_data_ptr<scalar_t>(), input_size[0], input_size[1], input_size[2],
          input_size[3], g.size(2), g.size(3), rule);
    } else {
      guided_max_pool2d_backward_kernel_impl<scalar_t>(
          g.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
          grad_in.mutable_data_ptr<scalar_t>(), input_size[0] * input_size[1], input_size[2],
          input_size[3], g.size(2), g.size(3), rule);
    }
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CPU, m) {
  m.impl("guided_max_pool2d", &guided_max_pool2d_forward_kernel);
  m.impl("_guided_max_pool2d_backward", &guided_max_pool2d_backward_kernel);
}

}  // namespace fastattr
