// CPU kernels of the causal-ATE ops: the fused region outcome (one task per
// row) and the block ATE map (one task per image row of cells). See
// csrc/ops/causal.h for the arithmetic, shared with the CUDA kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../ops/causal.h"
#include "cpu_helpers.h"

namespace fastattr {
namespace {

at::Tensor region_outcome_kernel(const at::Tensor& output, const at::Tensor& roi, const at::Tensor& gt,
                                 int64_t channel, c10::string_view outcome, c10::string_view activation,
                                 double threshold, bool empty_is_one) {
  const causal::OutcomeArgs a =
      check_region_outcome_args(output, roi, gt, channel, outcome, activation, threshold, empty_is_one);
  auto out = at::empty({a.rows}, output.options());
  if (a.rows == 0) return out;
  // The RoI's pixels, once: rows then visit only them.
  const at::Tensor mask = roi.contiguous();
  const bool* m = mask.const_data_ptr<bool>();
  std::vector<int64_t> pixels;
  for (int64_t i = 0; i < a.height * a.width; ++i) {
    if (m[i]) pixels.push_back(i);
  }
  const at::Tensor g = gt.to(at::kDouble).contiguous();
  const double* gp = g.const_data_ptr<double>();
  const int64_t per_row = std::max<int64_t>(1, static_cast<int64_t>(pixels.size()) * (channel < 0 ? a.classes : 1));
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / 16 / per_row);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "region_outcome", [&] {
    const scalar_t* z = output.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, a.rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        causal::Sums acc{};
        for (const int64_t pix : pixels) causal::add_pixel(a, z, gp, r, pix / a.width, pix % a.width, acc);
        o[r] = static_cast<scalar_t>(causal::finish_outcome(a, acc));
      }
    });
  });
  return out;
}

at::Tensor causal_ate_map_kernel(const at::Tensor& screen, const at::Tensor& full, const at::Tensor& base,
                                 const at::Tensor& visited, at::IntArrayRef block, double tau) {
  const AteArgs a = check_causal_ate_map_args(screen, full, base, visited, block, tau);
  auto out = at::empty({a.images, a.gh * a.bh, a.gw * a.bw}, screen.options());
  if (out.numel() == 0) return out;
  const at::Tensor sc = screen.contiguous(), fu = full.contiguous(), bs = base.contiguous();
  const at::Tensor vis = visited.contiguous();
  const int64_t width = a.gw * a.bw;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, screen.scalar_type(), "causal_ate_map", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* s = sc.const_data_ptr<scalar_t>();
    const scalar_t* f = fu.const_data_ptr<scalar_t>();
    const scalar_t* b = bs.const_data_ptr<scalar_t>();
    const bool* v = vis.const_data_ptr<bool>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, a.images * a.gh, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t img = task / a.gh;
        const int64_t i = task - img * a.gh;
        for (int64_t j = 0; j < a.gw; ++j) {
          const int64_t cell = (img * a.gh + i) * a.gw + j;
          const opmath_t ate =
              v[cell] ? causal::cell_ate<opmath_t>(s + cell * a.n0, f + cell * a.n1, static_cast<opmath_t>(b[img]),
                                                   a.n0, a.n1, static_cast<opmath_t>(tau))
                      : opmath_t(0);
          const scalar_t value = static_cast<scalar_t>(ate);
          for (int64_t y = i * a.bh; y < (i + 1) * a.bh; ++y) {
            scalar_t* row = o + (img * a.gh * a.bh + y) * width + j * a.bw;
            std::fill(row, row + a.bw, value);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CPU, m) {
  m.impl("region_outcome", &region_outcome_kernel);
  m.impl("causal_ate_map", &causal_ate_map_kernel);
}

}  // namespace fastattr
