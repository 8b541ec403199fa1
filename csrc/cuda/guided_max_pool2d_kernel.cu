// CUDA kernels of guided_max_pool2d and its fused backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../ops/guided_max_pool2d.h"
#include "cuda_helpers.cuh"

namespace fastattr {
namespace {

// Offset of element (n, c, h, w) of a (*, channels, height, width) tensor
// contiguous in NCHW or NHWC order.
template <bool kChannelsLast>
__device__ __forceinline__ int64_t offset_of(int64_t n, int64_t c, int64_t h, int64_t w,
                                             int64_t channels, int64_t height, int64_t width) {
  return kChannelsLast ? ((n * height + h) * width + w) * channels + c
                       : ((n * channels + c) * height + h) * width + w;
}

// One thread per input element, threads in the gradient's memory order (NCHW
// or NHWC), so that writes and the gate reads are coalesced in either layout:
// gather the gradients of the windows that chose it (in (oh, ow) order, as the
// CPU kernels sum), then apply the rule. No atomics, so deterministic.
template <typename scalar_t, bool kChannelsLast>
__global__ void guided_max_pool2d_backward_cuda_impl(
    const scalar_t* __restrict__ grad_out, const int64_t* __restrict__ indices,
    scalar_t* __restrict__ grad_in, int64_t total, int64_t channels, int64_t in_h, int64_t in_w,
    int64_t out_h, int64_t out_w, Pool2dGeometry geo, bool window_rule, float scale_h,
    float scale_w) {
  using opmath_t = at::opmath_type<scalar_t>;
  FASTATTR_KERNEL_LOOP(i, total) {
    int64_t n, c, h, w;
    if constexpr (kChannelsLast) {
      c = i % channels;
      w = (i / channels) % in_w;
      h = (i / (channels * in_w)) % in_h;
      n = i / (channels * in_w * in_h);
    } else {
      w = i % in_w;
      h = (i / in_w) % in_h;
      c = (i / (in_w * in_h)) % channels;
      n = i / (in_w * in_h * channels);
    }
    const int64_t oh_lo_num = h + geo.ph - geo.dh * (geo.kh - 1);
    const int64_t oh_lo = oh_lo_num <= 0 ? 0 : (oh_lo_num + geo.sh - 1) / geo.sh;
    const int64_t oh_hi = min(out_h - 1, (h + geo.ph) / geo.sh);
    const int64_t ow_lo_num = w + geo.pw - geo.dw * (geo.kw - 1);
    const int64_t ow_lo = ow_lo_num <= 0 ? 0 : (ow_lo_num + geo.sw - 1) / geo.sw;
    const int64_t ow_hi = min(out_w - 1, (w + geo.pw) / geo.sw);
    const int64_t flat = h * in_w + w;
    opmath_t acc = 0;
    for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
      for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) {
        const int64_t o = offset_of<kChannelsLast>(n, c, oh, ow, channels, out_h, out_w);
        if (indices[o] == flat) {
          const opmath_t g = static_cast<opmath_t>(grad_out[o]);
          acc += window_rule ? (g > 0 ? g : opmath_t(0)) : g;
        }
      }
    }
    if (!window_rule) {
      const int64_t nh = nearest_source_index(h, scale_h, out_h);
      const int64_t nw = nearest_source_index(w, scale_w, out_w);
      const opmath_t gate = static_cast<opmath_t>(
          grad_out[offset_of<kChannelsLast>(n, c, nh, nw, channels, out_h, out_w)]);
      acc = gate > 0 ? acc : opmath_t(0);
    }
    grad_in[i] = static_cast<scalar_t>(acc);
  }
}

std::tuple<at::Tensor, at::Tensor> guided_max_pool2d_forward_kernel(
    const at::Tensor& self, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, c10::string_view mode) {
  check_guided_max_pool2d_args(self, kernel_size, stride, padding, dilation, ceil_mode, mode);
  c10::cuda::CUDAGuard guard(self.device());
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
  c10::cuda::CUDAGuard guard(grad_output.device());
  // The gradient comes out in grad_output's suggested memory format (that of
  // the forward's input and outputs), computed natively for NCHW and NHWC.
  const auto format = grad_output.suggest_memory_format();
  const at::Tensor g = grad_output.contiguous(format);
  const at::Tensor idx = indices.contiguous(format);
  auto grad_in = at::empty(input_size, g.options().memory_format(format));
  const int64_t total = grad_in.numel();
  if (total == 0) return grad_in;
  if (g.numel() == 0) return grad_in.zero_();
  const int64_t channels = input_size[1];
  const int64_t in_h = input_size[2], in_w = input_size[3];
  const int64_t out_h = g.size(2), out_w = g.size(3);
  const float scale_h = static_cast<float>(out_h) / static_cast<float>(in_h);
  const float scale_w = static_cast<float>(out_w) / static_cast<float>(in_w);
  const bool window_rule = rule == PoolRule::Window;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "_guided_max_pool2d_backward", [&] {
    if (format == at::MemoryFormat::ChannelsLast) {
      guided_max_pool2d_backward_cuda_impl<scalar_t, true>
          <<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
              g.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
              grad_in.mutable_data_ptr<scalar_t>(), total, channels, in_h, in_w, out_h, out_w,
              geo, window_rule, scale_h, scale_w);
    } else {
      guided_max_pool2d_backward_cuda_impl<scalar_t, false>
          <<<grid_for(total), kThreadsPerBlock, 0, stream>>>(
              g.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
              grad_in.mutable_data_ptr<scalar_t>(), total, channels, in_h, in_w, out_h, out_w,
              geo, window_rule, scale_h, scale_w);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CUDA, m) {
  m.impl("guided_max_pool2d", &guided_max_pool2d_forward_kernel);
  m.impl("_guided_max_pool2d_backward", &guided_max_pool2d_backward_kernel);
}

}  // namespace fastattr
