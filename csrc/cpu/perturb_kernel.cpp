// CPU kernels of the perturbation-mask ops: one masked-batch builder
// parameterised by a mask source (RISE crop, segments, occlusion windows) and
// the RISE mask op. See csrc/ops/perturb.h for the sources and the blend.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../ops/perturb.h"
#include "cpu_helpers.h"

namespace fastattr {
namespace {

using masks::AxisTap;
using masks::GridMode;

// Elements of a mask written into the stack buffer of a task at a time.
constexpr int64_t kMaskRun = 1024;

// The builder. A sample's `row` elements are `reps` consecutive repetitions of
// a `period` over which the mask varies (RISE in NCHW: C planes of H*W; the
// other sources: one period, the whole row). Each task fills one run of mask k
// (for sample s, or for all samples when the source does not depend on the
// sample) into a buffer with `fill(k, s, e0, len, m)`, then blends it into
// every repetition (and sample) it applies to: a mask value is computed once
// per (k, position), not once per output element.
template <typename scalar_t, typename Fill>
void masked_batch_cpu(const scalar_t* x, const scalar_t* base, scalar_t* out, int64_t n_masks, int64_t samples,
                      int64_t row, int64_t period, bool per_sample, const Fill& fill) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t reps = row / period;
  const int64_t runs = (period + kMaskRun - 1) / kMaskRun;
  const int64_t groups = per_sample ? samples : 1;  // sample groups sharing one fill
  const int64_t per_group = per_sample ? 1 : samples;
  const int64_t work = std::min(period, kMaskRun) * reps * per_group;
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, work));
  at::parallel_for(0, n_masks * groups * runs, grain, [&](int64_t begin, int64_t end) {
    opmath_t m[kMaskRun];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t run = task % runs;
      const int64_t group = (task / runs) % groups;
      const int64_t k = task / (runs * groups);
      const int64_t e0 = run * kMaskRun;
      const int64_t len = std::min(kMaskRun, period - e0);
      fill(k, group, e0, len, m);
      for (int64_t s = group * per_group; s < (group + 1) * per_group; ++s) {
        for (int64_t rep = 0; rep < reps; ++rep) {
          const int64_t offset = s * row + rep * period + e0;
          const scalar_t* xs = x + offset;
          const scalar_t* bs = base + offset;
          scalar_t* os = out + k * samples * row + offset;
          for (int64_t i = 0; i < len; ++i) os[i] = masks::blend<scalar_t, opmath_t>(xs[i], bs[i], m[i]);
        }
      }
    }
  });
}

// RISE: the taps of every up-sampled row and column, computed once per call
// with the device kernels' own function (so both read the same weights); the
// mask value of a pixel is then four grid reads and three lerps, once per
// pixel and mask.
template <typename T>
struct RiseFill {
  masks::RiseCrop<T> crop;
  int64_t channels;  // C for channels_last (a pixel's C values are adjacent), else 1
  int64_t width;
  std::vector<AxisTap<T>> row_taps, col_taps;

  RiseFill(const masks::RiseCrop<T>& crop_, int64_t channels_, int64_t width_)
      : crop(crop_), channels(channels_), width(width_), row_taps(crop_.up_h), col_taps(crop_.up_w) {
    for (int64_t u = 0; u < crop.up_h; ++u) row_taps[u] = masks::axis_tap<T>(u, crop.gh, crop.up_h, crop.mode);
    for (int64_t u = 0; u < crop.up_w; ++u) col_taps[u] = masks::axis_tap<T>(u, crop.gw, crop.up_w, crop.mode);
  }

  void operator()(int64_t k, int64_t /*s*/, int64_t e0, int64_t len, T* m) const {
    const int64_t g = crop.grid_index[k];
    const int64_t shift_r = crop.shifts[2 * k];
    const int64_t shift_c = crop.shifts[2 * k + 1];
    const bool grid_ok = g >= 0 && g < crop.n_grids;
    const T* grid = grid_ok ? crop.grids + g * crop.gh * crop.gw : nullptr;
    const int64_t p0 = e0 / channels;
    int64_t c = e0 % channels;
    int64_t h = p0 / width;
    int64_t w = p0 % width;
    for (int64_t i = 0; i < len; ++h, w = 0) {
      const int64_t r = shift_r + h;
      const bool row_ok = grid_ok && r >= 0 && r < crop.up_h;
      const AxisTap<T> rt = row_ok ? row_taps[r] : AxisTap<T>{0, 0, T(0)};
      for (; w < width && i < len; ++w) {
        const int64_t col = shift_c + w;
        const T v = row_ok && col >= 0 && col < crop.up_w ? masks::bilerp(grid, crop.gw, rt, col_taps[col])
                                                          : masks::quiet_nan<T>();
        const int64_t n = std::min(channels - c, len - i);
        for (int64_t j = 0; j < n; ++j) m[i + j] = v;
        i += n;
        c = 0;
      }
    }
  }
};

template <typename T>
struct SegmentFill {
  masks::SegmentMaskSource<T> source;

  void operator()(int64_t k, int64_t s, int64_t e0, int64_t len, T* m) const {
    for (int64_t i = 0; i < len; ++i) m[i] = source(k, s, e0 + i);
  }
};

// Windows: runs along the innermost memory dimension, each 1 / 0 / 1.
template <typename T>
struct WindowFill {
  masks::WindowGeometry geo;

  void operator()(int64_t k, int64_t /*s*/, int64_t e0, int64_t len, T* m) const {
    int64_t lo[3];
    geo.corner(k, lo);
    int64_t mem_lo[3], mem_hi[3];
    for (int i = 0; i < 3; ++i) {
      mem_lo[i] = lo[geo.mem_dim[i]];
      mem_hi[i] = mem_lo[i] + geo.window[geo.mem_dim[i]];
    }
    const int64_t inner = geo.mem_size[2];
    int64_t c2 = e0 % inner;
    int64_t rest = e0 / inner;
    int64_t c1 = rest % geo.mem_size[1];
    int64_t c0 = rest / geo.mem_size[1];
    for (int64_t i = 0; i < len;) {
      const int64_t n = std::min(inner - c2, len - i);
      const bool outer_inside = c0 >= mem_lo[0] && c0 < mem_hi[0] && c1 >= mem_lo[1] && c1 < mem_hi[1];
      for (int64_t j = 0; j < n; ++j) {
        const int64_t c = c2 + j;
        m[i + j] = outer_inside && c >= mem_lo[2] && c < mem_hi[2] ? T(0) : T(1);
      }
      i += n;
      c2 = 0;
      if (++c1 == geo.mem_size[1]) {
        c1 = 0;
        ++c0;
      }
    }
  }
};

at::Tensor rise_masks_kernel(const at::Tensor& grids, const at::Tensor& grid_index, const at::Tensor& shifts,
                             c10::SymIntArrayRef size_sym, at::IntArrayRef up_size, c10::string_view mode) {
  const auto size = C10_AS_INTARRAYREF_SLOW(size_sym);
  check_rise_size(size);
  const RiseArgs args =
      check_rise_args("rise_masks", grids, grid_index, shifts, size[0], size[1], up_size, mode, grids, "grids");
  const int64_t n = grid_index.size(0), height = size[0], width = size[1];
  auto out = at::empty({n, height, width}, grids.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor index = grid_index.contiguous();
  const at::Tensor shift = shifts.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grids.scalar_type(), "rise_masks", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor g = grids.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    const masks::RiseCrop<opmath_t> crop{g.const_data_ptr<opmath_t>(), index.const_data_ptr<int64_t>(),
                                         shift.const_data_ptr<int64_t>(), args.n_grids, args.gh, args.gw,
                                         args.up_h, args.up_w, args.mode};
    const RiseFill<opmath_t> fill(crop, 1, width);
    const int64_t plane = height * width;
    const int64_t runs = (plane + kMaskRun - 1) / kMaskRun;
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / 8 / std::min(plane, kMaskRun));
    at::parallel_for(0, n * runs, grain, [&](int64_t begin, int64_t end) {
      opmath_t m[kMaskRun];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t k = task / runs;
        const int64_t e0 = (task % runs) * kMaskRun;
        const int64_t len = std::min(kMaskRun, plane - e0);
        fill(k, 0, e0, len, m);
        scalar_t* o = dst + k * plane + e0;
        for (int64_t i = 0; i < len; ++i) o[i] = static_cast<scalar_t>(m[i]);
      }
    });
  });
  return out;
}

at::Tensor rise_masked_batch_kernel(const at::Tensor& self, const at::Tensor& baseline, const at::Tensor& grids,
                                    const at::Tensor& grid_index, const at::Tensor& shifts, at::IntArrayRef up_size,
                                    c10::string_view mode) {
  check_rise_masked_batch_input(self, baseline);
  const RiseArgs args = check_rise_args("rise_masked_batch", grids, grid_index, shifts, self.size(2), self.size(3),
                                        up_size, mode, self, "input");
  BatchOperands ops = batch_operands(self, baseline, grid_index.size(0));
  if (ops.out.numel() == 0) return ops.out;
  const at::Tensor index = grid_index.contiguous();
  const at::Tensor shift = shifts.contiguous();
  const bool channels_last = ops.format == at::MemoryFormat::ChannelsLast;
  const int64_t channels = self.size(1), height = self.size(2), width = self.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), "rise_masked_batch", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor g = grids.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    const masks::RiseCrop<opmath_t> crop{g.const_data_ptr<opmath_t>(), index.const_data_ptr<int64_t>(),
                                         shift.const_data_ptr<int64_t>(), args.n_grids, args.gh, args.gw,
                                         args.up_h, args.up_w, args.mode};
    const RiseFill<opmath_t> fill(crop, channels_last ? channels : 1, width);
    // NCHW: the mask repeats over the C planes of H*W; NHWC: one period, each
    // pixel's value written C times in a row.
    const int64_t period = channels_last ? ops.row : height * width;
    masked_batch_cpu<scalar_t>(ops.x.const_data_ptr<scalar_t>(), ops.base.const_data_ptr<scalar_t>(),
                               ops.out.mutable_data_ptr<scalar_t>(), ops.masks, ops.samples, ops.row, period,
                               /*per_sample=*/false, fill);
  });
  return ops.out;
}

at::Tensor segment_masked_batch_kernel(const at::Tensor& self, const at::Tensor& baseline,
                                       const at::Tensor& segments, const at::Tensor& keep) {
  check_segment_masked_batch_args(self, baseline, segments, keep);
  BatchOperands ops = batch_operands(self, baseline, keep.size(0));
  if (ops.out.numel() == 0) return ops.out;
  const at::Tensor seg = segments.contiguous(ops.format);
  const bool per_sample = segments.size(0) != 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), "segment_masked_batch", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor kp = keep.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    const SegmentFill<opmath_t> fill{{kp.const_data_ptr<opmath_t>(), seg.const_data_ptr<int64_t>(), keep.size(1),
                                      per_sample ? ops.row : 0}};
    masked_batch_cpu<scalar_t>(ops.x.const_data_ptr<scalar_t>(), ops.base.const_data_ptr<scalar_t>(),
                               ops.out.mutable_data_ptr<scalar_t>(), ops.masks, ops.samples, ops.row, ops.row,
                               per_sample, fill);
  });
  return ops.out;
}

at::Tensor window_masked_batch_kernel(const at::Tensor& self, const at::Tensor& baseline, at::IntArrayRef window,
                                      at::IntArrayRef strides, int64_t start, int64_t count) {
  const std::vector<int64_t> counts = check_window_args(self, baseline, window, strides, start, count);
  BatchOperands ops = batch_operands(self, baseline, count);
  if (ops.out.numel() == 0) return ops.out;
  const masks::WindowGeometry geo = window_geometry(self, window, strides, counts, start, ops.format);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), "window_masked_batch", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    masked_batch_cpu<scalar_t>(ops.x.const_data_ptr<scalar_t>(), ops.base.const_data_ptr<scalar_t>(),
                               ops.out.mutable_data_ptr<scalar_t>(), ops.masks, ops.samples, ops.row, ops.row,
                               /*per_sample=*/false, WindowFill<opmath_t>{geo});
  });
  return ops.out;
}

// Block patches: each task writes one row (n, s): a copy of the sample, then
// the patch over its block (the only elements where M = 0). Exact copies, so
// a row equals the input bit for bit outside its block.
at::Tensor block_patch_batch_kernel(const at::Tensor& self, const at::Tensor& bank, const at::Tensor& patch_index,
                                    const at::Tensor& blocks) {
  check_block_patch_args(self, bank, patch_index, blocks);
  BatchOperands ops = batch_operands(self, self, patch_index.size(0));
  if (ops.out.numel() == 0) return ops.out;
  const at::Tensor index = patch_index.contiguous();
  const at::Tensor where = blocks.contiguous();
  const at::Tensor patches = bank.contiguous();
  const masks::BlockPatchGeometry geo{bank.size(0), self.size(1), self.size(2), self.size(3),
                                      bank.size(2), bank.size(3), ops.format == at::MemoryFormat::ChannelsLast};
  const int64_t rows = ops.masks * ops.samples;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, self.scalar_type(), "block_patch_batch", [&] {
    const scalar_t* x = ops.x.const_data_ptr<scalar_t>();
    const scalar_t* bk = patches.const_data_ptr<scalar_t>();
    const int64_t* idx = index.const_data_ptr<int64_t>();
    const int64_t* pos = where.const_data_ptr<int64_t>();
    scalar_t* out = ops.out.mutable_data_ptr<scalar_t>();
    const int64_t row = ops.row;
    const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, row));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / ops.samples;
        const int64_t s = task - n * ops.samples;
        scalar_t* o = out + task * row;
        const int64_t p = idx[n], r0 = pos[2 * n], c0 = pos[2 * n + 1];
        if (!geo.valid(p, r0, c0)) {
          std::fill(o, o + row, masks::quiet_nan<scalar_t>());
          continue;
        }
        std::memcpy(o, x + s * row, sizeof(scalar_t) * row);
        for (int64_t ch = 0; ch < geo.channels; ++ch) {
          for (int64_t i = 0; i < geo.bh; ++i) {
            const int64_t h = r0 + i;
            for (int64_t j = 0; j < geo.bw; ++j) {
              const int64_t w = c0 + j;
              const int64_t e = geo.channels_last ? (h * geo.width + w) * geo.channels + ch
                                                  : (ch * geo.height + h) * geo.width + w;
              o[e] = bk[geo.bank_offset(p, ch, i, j)];
            }
          }
        }
      }
    });
  });
  return ops.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CPU, m) {
  m.impl("rise_masks", &rise_masks_kernel);
  m.impl("rise_masked_batch", &rise_masked_batch_kernel);
  m.impl("segment_masked_batch", &segment_masked_batch_kernel);
  m.impl("window_masked_batch", &window_masked_batch_kernel);
  m.impl("block_patch_batch", &block_patch_batch_kernel);
}

}  // namespace fastattr
