// CUDA kernels of guided_max_pool2d and its fused backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <type_traits>

#include "../ops/guided_max_pool2d.h"
#include "cuda_helpers.cuh"

namespace fastattr {
namespace {

// Pool geometry in the kernels' index type (int32_t where every size fits:
// 32-bit division and multiplication are several times cheaper than 64-bit,
// whose division is a long emulated sequence; see the launcher).
template <typename index_t>
struct PoolGeometry {
  index_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// Plane sizes of one launch. A "plane" is what blockIdx.y walks: an (n, c)
// plane in NCHW (channels == 1 here), an image's (H, W, C) block in NHWC.
template <typename index_t>
struct PlaneShape {
  index_t channels, in_h, in_w, out_h, out_w;
  index_t in_elems, out_elems;  // elements per plane of grad_input / grad_output
};

// Output rows [lo, hi] (or columns) whose window span covers input row h:
// the windows the gather visits for h, and, by the same formula, the test of
// whether an index lies where the gather will find it.
template <typename index_t>
__device__ __forceinline__ void covering_windows(index_t h, index_t k, index_t s, index_t p,
                                                 index_t d, index_t out, index_t& lo,
                                                 index_t& hi) {
  const index_t lo_num = h + p - d * (k - 1);
  lo = lo_num <= 0 ? index_t(0) : (lo_num + s - 1) / s;
  hi = min(out - 1, (h + p) / s);
}

// Offset of output cell (oh, ow) of channel c within a plane.
template <typename index_t, bool kChannelsLast>
__device__ __forceinline__ index_t out_offset(index_t oh, index_t ow, index_t c,
                                              const PlaneShape<index_t>& shape) {
  const index_t cell = oh * shape.out_w + ow;
  return kChannelsLast ? cell * shape.channels + c : cell;
}

// Input position (c, h, w) of element t of a plane.
template <typename index_t, bool kChannelsLast>
__device__ __forceinline__ void in_position(index_t t, const PlaneShape<index_t>& shape,
                                            index_t& c, index_t& h, index_t& w) {
  index_t cell = t;
  c = 0;
  if constexpr (kChannelsLast) {
    cell = t / shape.channels;
    c = t - cell * shape.channels;
  }
  h = cell / shape.in_w;
  w = cell - h * shape.in_w;
}

// The reference rule's gate of input (c, h, w): grad_output > 0 at its
// nearest output cell (F.interpolate "nearest" of the sign map).
template <typename scalar_t, typename index_t, bool kChannelsLast>
__device__ __forceinline__ bool gate_open(const scalar_t* __restrict__ g, index_t c, index_t h,
                                          index_t w, const PlaneShape<index_t>& shape,
                                          float scale_h, float scale_w) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t nh = static_cast<index_t>(nearest_source_index(h, scale_h, shape.out_h));
  const index_t nw = static_cast<index_t>(nearest_source_index(w, scale_w, shape.out_w));
  return static_cast<opmath_t>(g[out_offset<index_t, kChannelsLast>(nh, nw, c, shape)]) >
         opmath_t(0);
}

// Gather, one thread per input element, threads in the gradient's memory order
// (NCHW or NHWC) so that writes and gate reads are coalesced: sum the
// gradients of the windows covering it whose index chose it, in (oh, ow) order
// as the CPU kernels sum (bit-identical results, no atomics), then apply the
// rule. The plane is blockIdx.y (a grid-stride loop past 65535 planes), so the
// in-plane index math is per thread in index_t and only the plane's base
// offset is 64-bit; each index the gather visits is read once, and the
// gradient only where the index matches (and, for the reference rule, not at
// all where the gate is closed).
//
// The gather finds an index only in a window covering its target, which every
// index of a forward pass is. The op also takes any indices in [0, H*W) (the
// CPU kernels scatter them), so thread t also checks output t of the plane:
// an in-range index outside the windows covering its target marks the block
// in `lost_blocks` (one byte per (plane, x-block), each written once: no
// zeroing pass), and guided_max_pool2d_backward_fixup_cuda_impl redoes those
// planes.
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreadsPerBlock) guided_max_pool2d_backward_cuda_impl(
    const scalar_t* __restrict__ grad_out, const int64_t* __restrict__ indices,
    scalar_t* __restrict__ grad_in, uint8_t* __restrict__ lost_blocks, int64_t planes,
    PlaneShape<index_t> shape, PoolGeometry<index_t> geo, bool window_rule, float scale_h,
    float scale_w) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t t = static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x) +
                    static_cast<index_t>(threadIdx.x);
  const int64_t in_plane = static_cast<int64_t>(shape.in_h) * shape.in_w;
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const scalar_t* __restrict__ g = grad_out + plane * shape.out_elems;
    const int64_t* __restrict__ idx = indices + plane * shape.out_elems;
    bool lost = false;
    if (t < shape.out_elems) {
      const int64_t j = idx[t];
      if (j >= 0 && j < in_plane) {
        index_t cell = t;
        if constexpr (kChannelsLast) cell = t / shape.channels;
        const index_t oh = cell / shape.out_w;
        const index_t ow = cell - oh * shape.out_w;
        const index_t jh = static_cast<index_t>(j) / shape.in_w;
        const index_t jw = static_cast<index_t>(j) - jh * shape.in_w;
        index_t h_lo, h_hi, w_lo, w_hi;
        covering_windows(jh, geo.kh, geo.sh, geo.ph, geo.dh, shape.out_h, h_lo, h_hi);
        covering_windows(jw, geo.kw, geo.sw, geo.pw, geo.dw, shape.out_w, w_lo, w_hi);
        lost = oh < h_lo || oh > h_hi || ow < w_lo || ow > w_hi;
      }
    }
    if (t < shape.in_elems) {
      index_t c, h, w;
      in_position<index_t, kChannelsLast>(t, shape, c, h, w);
      opmath_t acc = 0;
      if (window_rule ||
          gate_open<scalar_t, index_t, kChannelsLast>(g, c, h, w, shape, scale_h, scale_w)) {
        index_t oh_lo, oh_hi, ow_lo, ow_hi;
        covering_windows(h, geo.kh, geo.sh, geo.ph, geo.dh, shape.out_h, oh_lo, oh_hi);
        covering_windows(w, geo.kw, geo.sw, geo.pw, geo.dw, shape.out_w, ow_lo, ow_hi);
        const int64_t flat = static_cast<int64_t>(h) * shape.in_w + w;
        for (index_t oh = oh_lo; oh <= oh_hi; ++oh) {
          for (index_t ow = ow_lo; ow <= ow_hi; ++ow) {
            const index_t o = out_offset<index_t, kChannelsLast>(oh, ow, c, shape);
            if (idx[o] == flat) {
              const opmath_t v = static_cast<opmath_t>(g[o]);
              acc += window_rule ? (v > opmath_t(0) ? v : opmath_t(0)) : v;
            }
          }
        }
      }
      grad_in[plane * shape.in_elems + t] = static_cast<scalar_t>(acc);
    }
    const int any_lost = __syncthreads_or(lost);
    if (threadIdx.x == 0) {
      lost_blocks[plane * gridDim.x + blockIdx.x] = static_cast<uint8_t>(any_lost != 0);
    }
  }
}

// The planes where the gather missed an index (see above; never after a
// forward pass): one block per plane reads the plane's flags and, if any is
// set, recomputes the whole plane as the CPU kernels do, every output cell in
// (oh, ow) order, so that the sums are bit-identical to theirs. Quadratic in
// the plane size, but only for indices no forward pass produces.
template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreadsPerBlock) guided_max_pool2d_backward_fixup_cuda_impl(
    const scalar_t* __restrict__ grad_out, const int64_t* __restrict__ indices,
    scalar_t* __restrict__ grad_in, const uint8_t* __restrict__ lost_blocks, int64_t planes,
    int64_t blocks_per_plane, PlaneShape<index_t> shape, bool window_rule, float scale_h,
    float scale_w) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    int lost = 0;
    for (int64_t b = threadIdx.x; b < blocks_per_plane; b += blockDim.x) {
      lost |= lost_blocks[plane * blocks_per_plane + b];
    }
    if (!__syncthreads_or(lost)) continue;
    const scalar_t* __restrict__ g = grad_out + plane * shape.out_elems;
    const int64_t* __restrict__ idx = indices + plane * shape.out_elems;
    for (index_t t = threadIdx.x; t < shape.in_elems; t += blockDim.x) {
      index_t c, h, w;
      in_position<index_t, kChannelsLast>(t, shape, c, h, w);
      opmath_t acc = 0;
      if (window_rule ||
          gate_open<scalar_t, index_t, kChannelsLast>(g, c, h, w, shape, scale_h, scale_w)) {
        const int64_t flat = static_cast<int64_t>(h) * shape.in_w + w;
        for (index_t oh = 0; oh < shape.out_h; ++oh) {
          for (index_t ow = 0; ow < shape.out_w; ++ow) {
            const index_t o = out_offset<index_t, kChannelsLast>(oh, ow, c, shape);
            if (idx[o] == flat) {
              const opmath_t v = static_cast<opmath_t>(g[o]);
              acc += window_rule ? (v > opmath_t(0) ? v : opmath_t(0)) : v;
            }
          }
        }
      }
      grad_in[plane * shape.in_elems + t] = static_cast<scalar_t>(acc);
    }
  }
}

template <typename scalar_t, typename index_t, bool kChannelsLast>
void launch_guided_max_pool2d_backward(const at::Tensor& g, const at::Tensor& idx,
                                       at::Tensor& grad_in, int64_t planes, int64_t channels,
                                       int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                                       const Pool2dGeometry& geo, bool window_rule,
                                       float scale_h, float scale_w) {
  const int64_t in_elems = in_h * in_w * (kChannelsLast ? channels : 1);
  const int64_t out_elems = out_h * out_w * (kChannelsLast ? channels : 1);
  const PlaneShape<index_t> shape{static_cast<index_t>(kChannelsLast ? channels : 1),
                                  static_cast<index_t>(in_h),      static_cast<index_t>(in_w),
                                  static_cast<index_t>(out_h),     static_cast<index_t>(out_w),
                                  static_cast<index_t>(in_elems),  static_cast<index_t>(out_elems)};
  const PoolGeometry<index_t> pg{
      static_cast<index_t>(geo.kh), static_cast<index_t>(geo.kw), static_cast<index_t>(geo.sh),
      static_cast<index_t>(geo.sw), static_cast<index_t>(geo.ph), static_cast<index_t>(geo.pw),
      static_cast<index_t>(geo.dh), static_cast<index_t>(geo.dw)};
  // x covers a plane's input elements (and its output cells, which thread t
  // checks); small planes (late NCHW layers) get smaller blocks so that few
  // threads idle. y walks the planes.
  const int64_t span = std::max(in_elems, out_elems);
  const int threads =
      static_cast<int>(std::min<int64_t>(kThreadsPerBlock, (span + 31) / 32 * 32));
  const int64_t blocks_x = (span + threads - 1) / threads;
  TORCH_CHECK(blocks_x <= std::numeric_limits<int32_t>::max(),
              "fastattr._guided_max_pool2d_backward: plane too large (", span, " elements)");
  const int64_t blocks_y = std::min<int64_t>(planes, 65535);
  auto lost_blocks = at::empty({planes * blocks_x}, g.options().dtype(at::kByte));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  guided_max_pool2d_backward_cuda_impl<scalar_t, index_t, kChannelsLast>
      <<<dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y)), threads, 0,
         stream>>>(g.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                   grad_in.mutable_data_ptr<scalar_t>(), lost_blocks.mutable_data_ptr<uint8_t>(),
                   planes, shape, pg, window_rule, scale_h, scale_w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // One small launch that exits at once where every index was found.
  const int64_t fixup_blocks = std::min<int64_t>(
      planes,
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8);
  guided_max_pool2d_backward_fixup_cuda_impl<scalar_t, index_t, kChannelsLast>
      <<<static_cast<unsigned>(fixup_blocks), kThreadsPerBlock, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
          grad_in.mutable_data_ptr<scalar_t>(), lost_blocks.const_data_ptr<uint8_t>(), planes,
          blocks_x, shape, window_rule, scale_h, scale_w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  const int64_t planes = channels_last ? input_size[0] : input_size[0] * channels;
  // 32-bit in-plane index math (for bandwidth: 64-bit division is a long
  // emulated sequence) when every in-plane value stays far below 2^31: plane
  // sizes below 2^30 (a block of slack above them) and every geometry value
  // below 2^15 (so d * (k - 1), h + p and the rounding-up sums stay below
  // 2^31). Else the same kernels in int64_t.
  constexpr int64_t kLimit32 = int64_t(1) << 30;
  constexpr int64_t kGeometryLimit32 = int64_t(1) << 15;
  const int64_t per_plane = channels_last ? channels : 1;
  const bool small_geometry = geo.kh < kGeometryLimit32 && geo.kw < kGeometryLimit32 &&
                              geo.sh < kGeometryLimit32 && geo.sw < kGeometryLimit32 &&
                              geo.ph < kGeometryLimit32 && geo.pw < kGeometryLimit32 &&
                              geo.dh < kGeometryLimit32 && geo.dw < kGeometryLimit32;
  // FASTATTR_CUDA_INDEX64=1 forces the int64_t kernels, so that tests run
  // them on inputs of test size.
  const char* force64 = std::getenv("FASTATTR_CUDA_INDEX64");
  const bool index32 = !(force64 != nullptr && force64[0] == '1') && small_geometry &&
                       in_h * in_w * per_plane < kLimit32 && out_h * out_w * per_plane < kLimit32;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "_guided_max_pool2d_backward", [&] {
    const auto launch = [&](auto index_tag, auto channels_last_tag) {
      using index_t = decltype(index_tag);
      constexpr bool kChannelsLast = decltype(channels_last_tag)::value;
      launch_guided_max_pool2d_backward<scalar_t, index_t, kChannelsLast>(
          g, idx, grad_in, planes, channels, in_h, in_w, out_h, out_w, geo, window_rule, scale_h,
          scale_w);
    };
    if (index32) {
      if (channels_last) launch(int32_t{}, std::true_type{});
      else launch(int32_t{}, std::false_type{});
    } else {
      if (channels_last) launch(int64_t{}, std::true_type{});
      else launch(int64_t{}, std::false_type{});
    }
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CUDA, m) {
  m.impl("guided_max_pool2d", &guided_max_pool2d_forward_kernel);
  m.impl("_guided_max_pool2d_backward", &guided_max_pool2d_backward_kernel);
}

}  // namespace fastattr
