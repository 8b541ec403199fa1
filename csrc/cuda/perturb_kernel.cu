// CUDA kernels of the perturbation-mask ops: one masked-batch builder
// parameterised by a mask source (RISE crop, segments, occlusion windows) and
// the RISE mask op. See csrc/ops/perturb.h for the sources and the blend; the
// CPU kernels (csrc/cpu/perturb_kernel.cpp) compute the same values.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <vector>

#include "../ops/perturb.h"
#include "cuda_helpers.cuh"

namespace fastattr {
namespace {

// One thread per element of the input (S * row of them), writing that
// element's value for every mask: input and baseline are read once and the
// output written in coalesced rows. The mask source is passed by value (a few
// scalars and device pointers); no per-call host data.
template <typename scalar_t, typename Mask>
__global__ void masked_batch_cuda_impl(const scalar_t* __restrict__ x, const scalar_t* __restrict__ base,
                                       scalar_t* __restrict__ out, int64_t n_masks, int64_t n, int64_t row,
                                       Mask mask) {
  using opmath_t = at::opmath_type<scalar_t>;
  FASTATTR_KERNEL_LOOP(i, n) {
    const int64_t s = i / row;
    const int64_t e = i - s * row;
    const scalar_t xv = x[i];
    const scalar_t bv = base[i];
    for (int64_t k = 0; k < n_masks; ++k) {
      out[k * n + i] = masks::blend<scalar_t, opmath_t>(xv, bv, mask(k, s, e));
    }
  }
}

template <typename scalar_t>
__global__ void rise_masks_cuda_impl(masks::RiseCrop<at::opmath_type<scalar_t>> crop, scalar_t* __restrict__ out,
                                     int64_t n, int64_t height, int64_t width) {
  FASTATTR_KERNEL_LOOP(i, n) {
    const int64_t plane = height * width;
    const int64_t k = i / plane;
    const int64_t p = i - k * plane;
    const int64_t h = p / width;
    out[i] = static_cast<scalar_t>(crop.at(k, h, p - h * width));
  }
}

template <typename scalar_t, typename Mask>
void launch_masked_batch(const BatchOperands& ops, const Mask& mask) {
  const int64_t n = ops.samples * ops.row;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  masked_batch_cuda_impl<scalar_t, Mask><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
      ops.x.const_data_ptr<scalar_t>(), ops.base.const_data_ptr<scalar_t>(), ops.out.mutable_data_ptr<scalar_t>(),
      ops.masks, n, ops.row, mask);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor rise_masks_kernel(const at::Tensor& grids, const at::Tensor& grid_index, const at::Tensor& shifts,
                             c10::SymIntArrayRef size_sym, at::IntArrayRef up_size, c10::string_view mode) {
  const auto size = C10_AS_INTARRAYREF_SLOW(size_sym);
  check_rise_size(size);
  const RiseArgs args =
      check_rise_args("rise_masks", grids, grid_index, shifts, size[0], size[1], up_size, mode, grids, "grids");
  c10::cuda::CUDAGuard guard(grids.device());
  const int64_t n_masks = grid_index.size(0), height = size[0], width = size[1];
  auto out = at::empty({n_masks, height, width}, grids.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t n = out.numel();
  if (n == 0) return out;
  const at::Tensor index = grid_index.contiguous();
  const at::Tensor shift = shifts.contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grids.scalar_type(), "rise_masks", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor g = grids.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    const masks::RiseCrop<opmath_t> crop{g.const_data_ptr<opmath_t>(), index.const_data_ptr<int64_t>(),
                                         shift.const_data_ptr<int64_t>(), args.n_grids, args.gh, args.gw,
                                         args.up_h, args.up_w, args.mode};
    rise_masks_cuda_impl<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
        crop, out.mutable_data_ptr<scalar_t>(), n, height, width);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor rise_masked_batch_kernel(const at::Tensor& self, const at::Tensor& baseline, const at::Tensor& grids,
                                    const at::Tensor& grid_index, const at::Tensor& shifts, at::IntArrayRef up_size,
                                    c10::string_view mode) {
  check_rise_masked_batch_input(self, baseline);
  const RiseArgs args = check_rise_args("rise_masked_batch", grids, grid_index, shifts, self.size(2), self.size(3),
                                        up_size, mode, self, "input");
  c10::cuda::CUDAGuard guard(self.device());
  BatchOperands ops = batch_operands(self, baseline, grid_index.size(0));
  if (ops.out.numel() == 0) return ops.out;
  const at::Tensor index = grid_index.contiguous();
  const at::Tensor shift = shifts.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), "rise_masked_batch", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor g = grids.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    const masks::RiseMaskSource<opmath_t> source{
        {g.const_data_ptr<opmath_t>(), index.const_data_ptr<int64_t>(), shift.const_data_ptr<int64_t>(),
         args.n_grids, args.gh, args.gw, args.up_h, args.up_w, args.mode},
        self.size(1), self.size(2), self.size(3), ops.format == at::MemoryFormat::ChannelsLast};
    launch_masked_batch<scalar_t>(ops, source);
  });
  return ops.out;
}

at::Tensor segment_masked_batch_kernel(const at::Tensor& self, const at::Tensor& baseline,
                                       const at::Tensor& segments, const at::Tensor& keep) {
  check_segment_masked_batch_args(self, baseline, segments, keep);
  c10::cuda::CUDAGuard guard(self.device());
  BatchOperands ops = batch_operands(self, baseline, keep.size(0));
  if (ops.out.numel() == 0) return ops.out;
  const at::Tensor seg = segments.contiguous(ops.format);
  const bool per_sample = segments.size(0) != 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), "segment_masked_batch", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor kp = keep.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    const masks::SegmentMaskSource<opmath_t> source{kp.const_data_ptr<opmath_t>(), seg.const_data_ptr<int64_t>(),
                                                    keep.size(1), per_sample ? ops.row : 0};
    launch_masked_batch<scalar_t>(ops, source);
  });
  return ops.out;
}

at::Tensor window_masked_batch_kernel(const at::Tensor& self, const at::Tensor& baseline, at::IntArrayRef window,
                                      at::IntArrayRef strides, int64_t start, int64_t count) {
  const std::vector<int64_t> counts = check_window_args(self, baseline, window, strides, start, count);
  c10::cuda::CUDAGuard guard(self.device());
  BatchOperands ops = batch_operands(self, baseline, count);
  if (ops.out.numel() == 0) return ops.out;
  const masks::WindowGeometry geo = window_geometry(self, window, strides, counts, start, ops.format);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), "window_masked_batch", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    launch_masked_batch<scalar_t>(ops, masks::WindowMaskSource<opmath_t>{geo});
  });
  return ops.out;
}

// Block patches: one thread per output element (N * S * row of them); an
// element inside its row's block reads the bank, any other the input.
template <typename scalar_t>
__global__ void block_patch_batch_cuda_impl(const scalar_t* __restrict__ x, const scalar_t* __restrict__ bank,
                                            const int64_t* __restrict__ patch_index,
                                            const int64_t* __restrict__ blocks, scalar_t* __restrict__ out,
                                            int64_t n, int64_t samples, int64_t row,
                                            masks::BlockPatchGeometry geo) {
  FASTATTR_KERNEL_LOOP(i, n) {
    const int64_t task = i / row;
    const int64_t e = i - task * row;
    const int64_t k = task / samples;
    const int64_t s = task - k * samples;
    const int64_t p = patch_index[k], r0 = blocks[2 * k], c0 = blocks[2 * k + 1];
    if (!geo.valid(p, r0, c0)) {
      out[i] = masks::quiet_nan<scalar_t>();
      continue;
    }
    int64_t ch, h, w;
    geo.coords(e, ch, h, w);
    const bool inside = h >= r0 && h < r0 + geo.bh && w >= c0 && w < c0 + geo.bw;
    out[i] = inside ? bank[geo.bank_offset(p, ch, h - r0, w - c0)] : x[s * row + e];
  }
}

at::Tensor block_patch_batch_kernel(const at::Tensor& self, const at::Tensor& bank, const at::Tensor& patch_index,
                                    const at::Tensor& blocks) {
  check_block_patch_args(self, bank, patch_index, blocks);
  c10::cuda::CUDAGuard guard(self.device());
  BatchOperands ops = batch_operands(self, self, patch_index.size(0));
  const int64_t n = ops.out.numel();
  if (n == 0) return ops.out;
  const at::Tensor index = patch_index.contiguous();
  const at::Tensor where = blocks.contiguous();
  const at::Tensor patches = bank.contiguous();
  const masks::BlockPatchGeometry geo{bank.size(0), self.size(1), self.size(2), self.size(3),
                                      bank.size(2), bank.size(3), ops.format == at::MemoryFormat::ChannelsLast};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), "block_patch_batch", [&] {
    block_patch_batch_cuda_impl<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
        ops.x.const_data_ptr<scalar_t>(), patches.const_data_ptr<scalar_t>(), index.const_data_ptr<int64_t>(),
        where.const_data_ptr<int64_t>(), ops.out.mutable_data_ptr<scalar_t>(), n, ops.samples, ops.row, geo);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return ops.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CUDA, m) {
  m.impl("rise_masks", &rise_masks_kernel);
  m.impl("rise_masked_batch", &rise_masked_batch_kernel);
  m.impl("segment_masked_batch", &segment_masked_batch_kernel);
  m.impl("window_masked_batch", &window_masked_batch_kernel);
  m.impl("block_patch_batch", &block_patch_batch_kernel);
}

}  // namespace fastattr
