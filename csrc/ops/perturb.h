// Perturbation-mask ops: argument checks, the mask sources and the blend,
// shared by the CPU and CUDA kernels (csrc/cpu/perturb_kernel.cpp,
// csrc/cuda/perturb_kernel.cu).
//
// A masked batch is step-major like ig_path_inputs: for S samples and K masks,
//   out[k*S + s][e] = baseline[s][e] + M_k(s, e) * (input[s][e] - baseline[s][e])
// for every element e of a sample, in opmath precision. Each kernel writes it
// from a compact mask description; the masks are never stored. A mask source
// is a functor `M(k, s, e) -> opmath` over the flat memory order of a sample
// (contiguous or channels_last, the order of the input's suggested memory
// format); the CPU kernels wrap each source in a `fill` that writes a run of a
// mask into a small buffer.
//
// Entries that index out of range (a grid index outside [0, G), a crop outside
// the up-sampled map, a segment id outside [0, J)) are never read: the mask is
// NaN there, so the rows they touch are NaN. The Python wrappers
// (fastattr.ops) raise on such entries for direct callers.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "../checks.h"

#if defined(__CUDACC__)
#define FASTATTR_HOST_DEVICE __host__ __device__
#else
#define FASTATTR_HOST_DEVICE
#endif

namespace fastattr {
namespace masks {

// ---------------------------------------------------------------- arithmetic
// Products and sums rounded one by one: nvcc would contract `a + t * d` into
// one FMA, the host compiler does not, and CPU and CUDA results must be
// bit-identical.
template <typename T>
FASTATTR_HOST_DEVICE inline T mul_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, float>) return __fmul_rn(a, b);
  if constexpr (std::is_same_v<T, double>) return __dmul_rn(a, b);
#endif
  return a * b;
}

template <typename T>
FASTATTR_HOST_DEVICE inline T add_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, float>) return __fadd_rn(a, b);
  if constexpr (std::is_same_v<T, double>) return __dadd_rn(a, b);
#endif
  return a + b;
}

template <typename T>
FASTATTR_HOST_DEVICE inline T sub_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, float>) return __fsub_rn(a, b);
  if constexpr (std::is_same_v<T, double>) return __dsub_rn(a, b);
#endif
  return a - b;
}

template <typename T>
FASTATTR_HOST_DEVICE inline T quiet_nan() {
  return static_cast<T>(NAN);
}

// a + t (b - a), evaluated from the nearer end: t < 1/2 as a + t (b - a),
// otherwise as b - (1 - t) (b - a) (1 - t is then exact). So t = 0 gives a
// and t = 1 gives b exactly (a masked row equals the input where M = 1 and the
// baseline where M = 0, bit for bit, as Captum's x (1 - m) + b m does for a
// binary m), and the result stays between a and b. A NaN t gives NaN.
template <typename T>
FASTATTR_HOST_DEVICE inline T lerp_ends(T a, T b, T t) {
  const T d = sub_rn(b, a);
  return t < T(0.5) ? add_rn(a, mul_rn(t, d)) : sub_rn(b, mul_rn(sub_rn(T(1), t), d));
}

// The same value for loop bodies that should vectorize. On the host both ends
// are computed and selected bitwise: GCC turns a `?:` between them back into
// a branch (floating-point arithmetic may trap, so it is not speculated), and
// a loop with a branch is not vectorized. Scalar code keeps lerp_ends (a
// predictable branch is cheaper than both ends).
template <typename T>
FASTATTR_HOST_DEVICE inline T lerp_ends_branchless(T a, T b, T t) {
#if !defined(__CUDA_ARCH__)
  const T d = sub_rn(b, a);
  const T from_a = add_rn(a, mul_rn(t, d));
  const T from_b = sub_rn(b, mul_rn(sub_rn(T(1), t), d));
  using bits_t = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  bits_t bits_a, bits_b;
  std::memcpy(&bits_a, &from_a, sizeof(T));
  std::memcpy(&bits_b, &from_b, sizeof(T));
  const bits_t pick_a = bits_t(0) - static_cast<bits_t>(t < T(0.5));
  const bits_t bits = (bits_a & pick_a) | (bits_b & ~pick_a);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
#else
  return lerp_ends(a, b, t);
#endif
}

// One output element of a masked batch: baseline + m (input - baseline).
template <typename scalar_t, typename opmath_t>
FASTATTR_HOST_DEVICE inline scalar_t blend(scalar_t x, scalar_t base, opmath_t m) {
  return static_cast<scalar_t>(lerp_ends_branchless(static_cast<opmath_t>(base), static_cast<opmath_t>(x), m));
}

// ---------------------------------------------------------------- RISE grids
// Boundary rule of the bilinear up-sampling: "mirror" (scikit-image
// resize(order=1, mode='reflect'): index -1 -> 1, n -> n - 2) or "clamp"
// (F.interpolate(mode="bilinear", align_corners=False)).
enum class GridMode : int { Mirror = 0, Clamp = 1 };

inline GridMode parse_grid_mode(c10::string_view mode) {
  if (mode == "mirror") return GridMode::Mirror;
  if (mode == "clamp") return GridMode::Clamp;
  TORCH_CHECK_VALUE(false, "fastattr: mode must be 'mirror' or 'clamp', got '", std::string(mode), "'");
}

// The two grid cells an up-sampled coordinate reads along one axis, and the
// weight of the second.
template <typename T>
struct AxisTap {
  int64_t lo;
  int64_t hi;
  T t;
};

// Taps of up-sampled coordinate `dst` (0 <= dst < up) on an axis of `cells`
// grid cells, with the half-pixel mapping src = (dst + 0.5) cells / up - 0.5
// computed in double. src lies in (-0.5, cells - 0.5) for every up >= 1, so
// mirror only ever reflects -1 and `cells` (it needs cells >= 2).
template <typename T>
FASTATTR_HOST_DEVICE inline AxisTap<T> axis_tap(int64_t dst, int64_t cells, int64_t up, GridMode mode) {
  double src = (static_cast<double>(dst) + 0.5) * static_cast<double>(cells) / static_cast<double>(up) - 0.5;
  if (mode == GridMode::Clamp) {
    if (src < 0) src = 0;
    int64_t lo = static_cast<int64_t>(src);  // floor: src >= 0
    if (lo > cells - 1) lo = cells - 1;
    const int64_t hi = lo < cells - 1 ? lo + 1 : lo;
    return {lo, hi, static_cast<T>(src - static_cast<double>(lo))};
  }
  const double f = floor(src);
  int64_t lo = static_cast<int64_t>(f);
  int64_t hi = lo + 1;
  if (lo < 0) lo = -lo;
  if (hi > cells - 1) hi = 2 * (cells - 1) - hi;
  return {lo, hi, static_cast<T>(src - f)};
}

// Bilinear value of a (gh, gw) grid (row-major, gw columns) at taps r, c.
template <typename T>
FASTATTR_HOST_DEVICE inline T bilerp(const T* grid, int64_t gw, const AxisTap<T>& r, const AxisTap<T>& c) {
  const T* top = grid + r.lo * gw;
  const T* bottom = grid + r.hi * gw;
  return lerp_ends(lerp_ends(top[c.lo], top[c.hi], c.t), lerp_ends(bottom[c.lo], bottom[c.hi], c.t), r.t);
}

// Mask k of a RISE batch at crop pixel (h, w): grid grid_index[k] up-sampled
// to (up_h, up_w), read at (shifts[k, 0] + h, shifts[k, 1] + w). Only the
// crop window is ever computed. NaN where the grid index or the position is
// out of range.
template <typename T>
struct RiseCrop {
  const T* grids;               // (G, gh, gw), contiguous
  const int64_t* grid_index;    // (N,)
  const int64_t* shifts;        // (N, 2), contiguous
  int64_t n_grids, gh, gw, up_h, up_w;
  GridMode mode;

  FASTATTR_HOST_DEVICE T at(int64_t k, int64_t h, int64_t w) const {
    const int64_t g = grid_index[k];
    const int64_t r = shifts[2 * k] + h;
    const int64_t c = shifts[2 * k + 1] + w;
    if (g < 0 || g >= n_grids || r < 0 || r >= up_h || c < 0 || c >= up_w) return quiet_nan<T>();
    return bilerp(grids + g * gh * gw, gw, axis_tap<T>(r, gh, up_h, mode), axis_tap<T>(c, gw, up_w, mode));
  }
};

// RISE mask of a masked batch: pixel (h, w) of element e of a (C, H, W)
// sample, shared by every channel and sample.
template <typename T>
struct RiseMaskSource {
  RiseCrop<T> crop;
  int64_t channels, height, width;
  bool channels_last;

  FASTATTR_HOST_DEVICE T operator()(int64_t k, int64_t /*s*/, int64_t e) const {
    const int64_t p = channels_last ? e / channels : e % (height * width);
    const int64_t h = p / width;
    return crop.at(k, h, p - h * width);
  }
};

// ---------------------------------------------------------------- segments
// M_k(s, e) = keep[k, segments[s or 0, e]] (keep: (K, J), contiguous).
template <typename T>
struct SegmentMaskSource {
  const T* keep;
  const int64_t* segments;  // (1 or S, row) in the batch's memory order
  int64_t n_segments;       // J
  int64_t sample_stride;    // row, or 0 for a map shared by all samples

  FASTATTR_HOST_DEVICE T operator()(int64_t k, int64_t s, int64_t e) const {
    const int64_t id = segments[s * sample_stride + e];
    return id >= 0 && id < n_segments ? keep[k * n_segments + id] : quiet_nan<T>();
  }
};

// ---------------------------------------------------------------- windows
// Captum Occlusion windows over a sample of 1 to 3 dimensions, padded to 3
// with leading size-1 dimensions. Captum places ceil((F_d - window_d) /
// stride_d) + 1 windows along dimension d, at multiples of the stride, the
// last one clipped at the edge: window j (row-major over that grid, last
// dimension fastest) covers [i_d stride_d, min(i_d stride_d + window_d, F_d))
// in each dimension d. M = 0 inside window start + k, 1 outside.
struct WindowGeometry {
  int64_t window[3], stride[3], counts[3];  // logical dimension order
  int64_t mem_dim[3];                        // memory position (outermost first) -> logical dimension
  int64_t mem_size[3];                       // sizes in memory order
  int64_t start;

  // Lower corner of window start + k, per logical dimension.
  FASTATTR_HOST_DEVICE void corner(int64_t k, int64_t lo[3]) const {
    int64_t j = start + k;
    for (int d = 2; d >= 0; --d) {
      lo[d] = (j % counts[d]) * stride[d];
      j /= counts[d];
    }
  }
};

template <typename T>
struct WindowMaskSource {
  WindowGeometry geo;

  FASTATTR_HOST_DEVICE T operator()(int64_t k, int64_t /*s*/, int64_t e) const {
    int64_t lo[3];
    geo.corner(k, lo);
    bool inside = true;
    for (int m = 2; m >= 0; --m) {
      const int64_t c = e % geo.mem_size[m];
      e /= geo.mem_size[m];
      const int64_t d = geo.mem_dim[m];
      inside = inside && c >= lo[d] && c < lo[d] + geo.window[d];
    }
    return inside ? T(0) : T(1);
  }
};

// ---------------------------------------------------------------- block patches
// The block intervention of causal ATE (spec §2.3): row n of a batch is the
// input with the block at blocks[n] = (row, col) replaced by the patch
// bank[patch_index[n]] (P, C, bh, bw). In the builder's terms the mask is 0
// inside the block and 1 outside, and the replacement ("baseline") comes from
// the bank instead of a per-sample tensor; M is 0 or 1 so the blend is an exact
// copy and is written as one. A row whose patch index lies outside [0, P) or
// whose block does not lie inside the image is NaN throughout.
struct BlockPatchGeometry {
  int64_t n_patches, channels, height, width, bh, bw;
  bool channels_last;

  FASTATTR_HOST_DEVICE bool valid(int64_t p, int64_t r, int64_t c) const {
    return p >= 0 && p < n_patches && r >= 0 && c >= 0 && r + bh <= height && c + bw <= width;
  }

  // (channel, row, col) of element e of a sample in memory order.
  FASTATTR_HOST_DEVICE void coords(int64_t e, int64_t& ch, int64_t& h, int64_t& w) const {
    if (channels_last) {
      ch = e % channels;
      const int64_t p = e / channels;
      h = p / width;
      w = p - h * width;
    } else {
      const int64_t plane = height * width;
      ch = e / plane;
      const int64_t p = e - ch * plane;
      h = p / width;
      w = p - h * width;
    }
  }

  // Offset of patch p's element (ch, i, j) in a contiguous (P, C, bh, bw) bank.
  FASTATTR_HOST_DEVICE int64_t bank_offset(int64_t p, int64_t ch, int64_t i, int64_t j) const {
    return ((p * channels + ch) * bh + i) * bw + j;
  }
};

}  // namespace masks

// ---------------------------------------------------------------- checks
// The fake kernels (python/fastattr/_meta.py) state the same conditions with
// the same messages.

inline void check_batch_operands(const char* op, const at::Tensor& input, const at::Tensor& baseline) {
  check_floating(input, "input");
  TORCH_CHECK_VALUE(input.dim() >= 1, "fastattr.", op, ": input must have a batch dimension, got a 0-D tensor");
  check_same_shape(input, "input", baseline, "baseline");
  check_same_dtype(input, "input", baseline, "baseline");
  check_same_device(input, "input", baseline, "baseline");
}

inline void check_on_device(const char* op, const at::Tensor& t, const char* name, const at::Tensor& like,
                            const char* like_name) {
  TORCH_CHECK_VALUE(t.device() == like.device(), "fastattr.", op, ": ", name, " must be on the device of ", like_name,
              " (", like.device(), "), got ", t.device());
}

inline void check_int64(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "fastattr.", op, ": ", name, " must be an int64 tensor, got ",
              dtype_name(t.scalar_type()));
}

struct RiseArgs {
  int64_t n_grids, gh, gw, up_h, up_w;
  masks::GridMode mode;
};

// grids (G, gh, gw), grid_index (N,), shifts (N, 2), all on the device of
// `like`; crops of `size` = (H, W) out of maps up-sampled to up_size.
inline RiseArgs check_rise_args(const char* op, const at::Tensor& grids, const at::Tensor& grid_index,
                                const at::Tensor& shifts, int64_t height, int64_t width, at::IntArrayRef up_size,
                                c10::string_view mode, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_TYPE(at::isFloatingType(grids.scalar_type()), "fastattr.", op,
              ": grids must be a floating-point tensor, got ", dtype_name(grids.scalar_type()));
  TORCH_CHECK_VALUE(grids.dim() == 3 && grids.size(0) >= 1 && grids.size(1) >= 1 && grids.size(2) >= 1, "fastattr.", op,
              ": grids must have shape (G, gh, gw) with G, gh, gw >= 1, got shape ", grids.sizes());
  const masks::GridMode grid_mode = masks::parse_grid_mode(mode);
  TORCH_CHECK_VALUE(grid_mode != masks::GridMode::Mirror || (grids.size(1) >= 2 && grids.size(2) >= 2), "fastattr.", op,
              ": mode 'mirror' needs grids of at least 2x2 cells (it reflects index -1 to 1), got shape ",
              grids.sizes());
  check_int64(op, grid_index, "grid_index");
  TORCH_CHECK_VALUE(grid_index.dim() == 1, "fastattr.", op, ": grid_index must have shape (N,), got shape ",
              grid_index.sizes());
  check_int64(op, shifts, "shifts");
  TORCH_CHECK_VALUE(shifts.dim() == 2 && shifts.size(0) == grid_index.size(0) && shifts.size(1) == 2, "fastattr.", op,
              ": shifts must have shape (N, 2) = [", grid_index.size(0), ", 2] (N = len(grid_index)), got shape ",
              shifts.sizes());
  check_on_device(op, grids, "grids", like, like_name);  // trivially true when like is grids
  check_on_device(op, grid_index, "grid_index", like, like_name);
  check_on_device(op, shifts, "shifts", like, like_name);
  TORCH_CHECK_VALUE(up_size.size() == 2 && up_size[0] >= 1 && up_size[1] >= 1 && up_size[0] >= height &&
                  up_size[1] >= width,
              "fastattr.", op, ": up_size must be two positive ints with up_size >= size = [", height, ", ", width,
              "], got ", up_size);
  return {grids.size(0), grids.size(1), grids.size(2), up_size[0], up_size[1], grid_mode};
}

inline void check_rise_size(at::IntArrayRef size) {
  TORCH_CHECK_VALUE(size.size() == 2 && size[0] >= 0 && size[1] >= 0,
              "fastattr.rise_masks: size must be two non-negative ints (H, W), got ", size);
}

inline void check_rise_masked_batch_input(const at::Tensor& input, const at::Tensor& baseline) {
  check_batch_operands("rise_masked_batch", input, baseline);
  TORCH_CHECK_VALUE(input.dim() == 4, "fastattr.rise_masked_batch: input must be 4-D (S, C, H, W), got a ", input.dim(),
              "-D tensor of shape ", input.sizes());
}

inline void check_segment_masked_batch_args(const at::Tensor& input, const at::Tensor& baseline,
                                            const at::Tensor& segments, const at::Tensor& keep) {
  constexpr const char* op = "segment_masked_batch";
  check_batch_operands(op, input, baseline);
  check_int64(op, segments, "segments");
  check_on_device(op, segments, "segments", input, "input");
  std::vector<int64_t> shared(input.sizes().begin(), input.sizes().end());
  shared[0] = 1;
  const bool same_rows = segments.dim() == input.dim() &&
                         segments.sizes().slice(1) == input.sizes().slice(1) &&
                         (segments.size(0) == 1 || segments.size(0) == input.size(0));
  TORCH_CHECK_VALUE(same_rows, "fastattr.segment_masked_batch: segments must have shape ", at::IntArrayRef(shared),
              " or ", input.sizes(), " (one map shared by all samples, or one per sample), got ",
              segments.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(keep.scalar_type()),
              "fastattr.segment_masked_batch: keep must be a floating-point tensor, got ",
              dtype_name(keep.scalar_type()));
  check_on_device(op, keep, "keep", input, "input");
  TORCH_CHECK_VALUE(keep.dim() == 2 && keep.size(0) >= 1 && keep.size(1) >= 1,
              "fastattr.segment_masked_batch: keep must have shape (K, J) with K >= 1 masks and J >= 1 segments, "
              "got shape ", keep.sizes());
}

// Number of windows along each dimension; checks the geometry.
inline std::vector<int64_t> check_window_args(const at::Tensor& input, const at::Tensor& baseline,
                                              at::IntArrayRef window, at::IntArrayRef strides, int64_t start,
                                              int64_t count) {
  check_batch_operands("window_masked_batch", input, baseline);
  const int64_t dims = input.dim() - 1;
  TORCH_CHECK_VALUE(dims >= 1 && dims <= 3,
              "fastattr.window_masked_batch: input must have 1 to 3 dimensions per sample (a 2-D to 4-D tensor), "
              "got a ", input.dim(), "-D tensor");
  TORCH_CHECK_VALUE(static_cast<int64_t>(window.size()) == dims && static_cast<int64_t>(strides.size()) == dims,
              "fastattr.window_masked_batch: window and strides must have one entry per sample dimension (", dims,
              "), got window ", window, " and strides ", strides);
  const auto sample = input.sizes().slice(1);
  bool fits = true, positive = true;
  for (int64_t d = 0; d < dims; ++d) {
    fits = fits && window[d] >= 1 && window[d] <= sample[d];
    positive = positive && strides[d] >= 1;
  }
  TORCH_CHECK_VALUE(fits, "fastattr.window_masked_batch: window must lie in [1, size] per dimension for samples of shape ",
              sample, ", got ", window);
  TORCH_CHECK_VALUE(positive, "fastattr.window_masked_batch: strides must be positive, got ", strides);
  std::vector<int64_t> counts(dims);
  int64_t total = 1;
  for (int64_t d = 0; d < dims; ++d) {
    counts[d] = (sample[d] - window[d] + strides[d] - 1) / strides[d] + 1;  // ceil((F - w) / s) + 1
    total *= counts[d];
  }
  TORCH_CHECK_VALUE(start >= 0 && count >= 1 && start + count <= total,
              "fastattr.window_masked_batch: start and count must select windows in [0, ", total,
              ") (start >= 0, count >= 1, start + count <= ", total, "), got start=", start, " count=", count);
  return counts;
}

// block_patch_batch: self (S, C, H, W); bank (P, C, bh, bw) of self's dtype
// and device, 1 <= bh <= H, 1 <= bw <= W; patch_index (N,) and blocks (N, 2)
// int64 on self's device.
inline void check_block_patch_args(const at::Tensor& self, const at::Tensor& bank, const at::Tensor& patch_index,
                                   const at::Tensor& blocks) {
  constexpr const char* op = "block_patch_batch";
  check_floating(self, "input");
  TORCH_CHECK_VALUE(self.dim() == 4, "fastattr.block_patch_batch: input must be 4-D (S, C, H, W), got a ", self.dim(),
              "-D tensor of shape ", self.sizes());
  TORCH_CHECK_VALUE(bank.dim() == 4 && bank.size(0) >= 1 && bank.size(1) == self.size(1) && bank.size(2) >= 1 &&
                  bank.size(3) >= 1 && bank.size(2) <= self.size(2) && bank.size(3) <= self.size(3),
              "fastattr.block_patch_batch: bank must have shape (P, C, bh, bw) with P >= 1, C = ", self.size(1),
              " (the input's channels) and 1 <= bh <= ", self.size(2), ", 1 <= bw <= ", self.size(3),
              ", got shape ", bank.sizes());
  check_same_dtype(self, "input", bank, "bank");
  check_on_device(op, bank, "bank", self, "input");
  check_int64(op, patch_index, "patch_index");
  TORCH_CHECK_VALUE(patch_index.dim() == 1, "fastattr.block_patch_batch: patch_index must have shape (N,), got shape ",
              patch_index.sizes());
  check_on_device(op, patch_index, "patch_index", self, "input");
  check_int64(op, blocks, "blocks");
  TORCH_CHECK_VALUE(blocks.dim() == 2 && blocks.size(0) == patch_index.size(0) && blocks.size(1) == 2,
              "fastattr.block_patch_batch: blocks must have shape (N, 2) = [", patch_index.size(0),
              ", 2] (N = len(patch_index)), got shape ", blocks.sizes());
  check_on_device(op, blocks, "blocks", self, "input");
}

// ---------------------------------------------------------------- operands
// Input and baseline in the input's suggested memory format (the batch
// dimension outermost, so each sample is a flat run of `row` elements) and the
// (masks * S, *input.shape[1:]) output in the same format.
struct BatchOperands {
  at::Tensor x, base, out;
  at::MemoryFormat format;
  int64_t samples, row, masks;
};

inline BatchOperands batch_operands(const at::Tensor& input, const at::Tensor& baseline, int64_t masks) {
  const auto format = input.suggest_memory_format();
  BatchOperands ops{input.contiguous(format), baseline.contiguous(format), at::Tensor(), format,
                    input.size(0), 1, masks};
  for (int64_t d = 1; d < input.dim(); ++d) ops.row *= input.size(d);
  std::vector<int64_t> out_size(input.sizes().begin(), input.sizes().end());
  out_size[0] *= masks;
  ops.out = at::empty(out_size, ops.x.options().memory_format(format));
  return ops;
}

inline masks::WindowGeometry window_geometry(const at::Tensor& input, at::IntArrayRef window,
                                             at::IntArrayRef strides, const std::vector<int64_t>& counts,
                                             int64_t start, at::MemoryFormat format) {
  masks::WindowGeometry geo{};
  const int64_t dims = input.dim() - 1;
  const int64_t pad = 3 - dims;
  int64_t size[3];
  for (int64_t d = 0; d < 3; ++d) {
    const bool real = d >= pad;
    size[d] = real ? input.size(d - pad + 1) : 1;
    geo.window[d] = real ? window[d - pad] : 1;
    geo.stride[d] = real ? strides[d - pad] : 1;
    geo.counts[d] = real ? counts[d - pad] : 1;
    geo.mem_dim[d] = d;
  }
  // channels_last (4-D input): a sample (C, H, W) is stored as (H, W, C).
  if (format == at::MemoryFormat::ChannelsLast && dims == 3) {
    geo.mem_dim[0] = 1;
    geo.mem_dim[1] = 2;
    geo.mem_dim[2] = 0;
  }
  for (int m = 0; m < 3; ++m) geo.mem_size[m] = size[geo.mem_dim[m]];
  geo.start = start;
  return geo;
}

}  // namespace fastattr
