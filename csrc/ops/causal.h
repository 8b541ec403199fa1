// Causal-ATE ops (PdCR, spec §2): the fused region outcome of segmentation
// rows and the block ATE map. Argument checks and the per-element arithmetic,
// shared by the CPU and CUDA kernels (csrc/cpu/causal_kernel.cpp,
// csrc/cuda/causal_kernel.cu); the block intervention itself is the
// block_patch_batch builder (csrc/ops/perturb.h).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "../checks.h"
#include "perturb.h"

namespace fastattr {
namespace causal {

// ---------------------------------------------------------------- region outcome
// Per row r of a segmentation output z (R, K, H, W), over the pixels of the
// RoI and the selected channels (one channel c, or all K):
//   p   = activation(z)        none: z; sigmoid; softmax over the K channels
//   dice      100 * 2 Σ q g / (Σ q + Σ g + 1e-10),  q = 1[p > threshold]
//   soft_dice 100 * 2 Σ p g / (Σ p + Σ g + 1e-10)
//   mean_prob 100 * Σ p / (number of RoI pixels x selected channels)
// g is the ground truth (one map per selected channel). With both sums zero,
// (soft) Dice is 0 (the reference), or 100 with empty_is_one. Sums in double.
enum class Outcome : int { Dice = 0, SoftDice = 1, MeanProb = 2 };
enum class Activation : int { None = 0, Sigmoid = 1, Softmax = 2 };

inline Outcome parse_outcome(c10::string_view s) {
  if (s == "dice") return Outcome::Dice;
  if (s == "soft_dice") return Outcome::SoftDice;
  if (s == "mean_prob") return Outcome::MeanProb;
  TORCH_CHECK_VALUE(false, "fastattr.region_outcome: outcome must be 'dice', 'soft_dice' or 'mean_prob', got '",
              std::string(s), "'");
}

inline Activation parse_activation(c10::string_view s) {
  if (s == "none") return Activation::None;
  if (s == "sigmoid") return Activation::Sigmoid;
  if (s == "softmax") return Activation::Softmax;
  TORCH_CHECK_VALUE(false, "fastattr.region_outcome: activation must be 'none', 'sigmoid' or 'softmax', got '",
              std::string(s), "'");
}

constexpr double kDiceEps = 1e-10;

struct OutcomeArgs {
  int64_t rows, classes, height, width;
  int64_t channel;  // -1: every channel
  Outcome outcome;
  Activation activation;
  double threshold;
  bool empty_is_one;
  int64_t s_row, s_class, s_h, s_w;  // strides of the output
};

// Sums of one row: [Σ q g, Σ q, Σ g] for (soft) Dice, [Σ p, count] for
// mean_prob, accumulated over one pixel at a time.
struct Sums {
  double pg, p, g, n;  // a plain aggregate (it lives in CUDA shared memory): zero it with Sums{}
  FASTATTR_HOST_DEVICE void add(const Sums& o) {
    pg += o.pg;
    p += o.p;
    g += o.g;
    n += o.n;
  }
};

// Adds pixel (h, w) of row r to `acc` (the caller skips pixels outside the
// RoI). z: the output's data; gt: (G, H, W) contiguous in double.
template <typename scalar_t>
FASTATTR_HOST_DEVICE inline void add_pixel(const OutcomeArgs& a, const scalar_t* z, const double* gt, int64_t r,
                                           int64_t h, int64_t w, Sums& acc) {
  const scalar_t* zp = z + r * a.s_row + h * a.s_h + w * a.s_w;
  double zmax = 0, denom = 1;
  if (a.activation == Activation::Softmax) {
    zmax = static_cast<double>(zp[0]);
    for (int64_t k = 1; k < a.classes; ++k) zmax = fmax(zmax, static_cast<double>(zp[k * a.s_class]));
    denom = 0;
    for (int64_t k = 0; k < a.classes; ++k) denom += exp(static_cast<double>(zp[k * a.s_class]) - zmax);
  }
  const int64_t k0 = a.channel < 0 ? 0 : a.channel;
  const int64_t k1 = a.channel < 0 ? a.classes : a.channel + 1;
  const int64_t plane = a.height * a.width;
  for (int64_t k = k0; k < k1; ++k) {
    const double v = static_cast<double>(zp[k * a.s_class]);
    double p = v;
    if (a.activation == Activation::Sigmoid) p = 1.0 / (1.0 + exp(-v));
    if (a.activation == Activation::Softmax) p = exp(v - zmax) / denom;
    const double g = gt[(k - k0) * plane + h * a.width + w];
    if (a.outcome == Outcome::MeanProb) {
      acc.p += p;
      acc.n += 1;
      continue;
    }
    const double q = a.outcome == Outcome::Dice ? (p > a.threshold ? 1.0 : 0.0) : p;
    acc.pg += q * g;
    acc.p += q;
    acc.g += g;
  }
}

FASTATTR_HOST_DEVICE inline double finish_outcome(const OutcomeArgs& a, const Sums& s) {
  if (a.outcome == Outcome::MeanProb) return s.n > 0 ? 100.0 * s.p / s.n : 0.0;
  const double total = s.p + s.g;
  if (total == 0 && a.empty_is_one) return 100.0;
  return 100.0 * (2.0 * s.pg) / (total + kDiceEps);
}

// ---------------------------------------------------------------- ATE map
// Cell (i, j) of image b, visited: with d = outcome - base[b],
//   screening passes iff some |screen[b,i,j,t] - base| >= tau (t < n0);
//   ate = mean_s (full[b,i,j,s] - base) (s < n1), kept iff |ate| >= tau;
// the map is ate on the cell's bh x bw pixels when both hold, else 0.
// Unvisited cells (the RoI) are 0. Opmath arithmetic, as the reference's
// (Y - base).mean() in the outcome's dtype.
template <typename opmath_t, typename scalar_t>
FASTATTR_HOST_DEVICE inline opmath_t cell_ate(const scalar_t* screen, const scalar_t* full, opmath_t base,
                                              int64_t n0, int64_t n1, opmath_t tau) {
  bool pass = false;
  for (int64_t t = 0; t < n0; ++t) {
    const opmath_t d = static_cast<opmath_t>(screen[t]) - base;
    pass = pass || !(fabs(d) < tau);
  }
  if (!pass) return opmath_t(0);
  opmath_t sum = 0;
  for (int64_t s = 0; s < n1; ++s) sum += static_cast<opmath_t>(full[s]) - base;
  const opmath_t ate = sum / static_cast<opmath_t>(n1);
  return fabs(ate) < tau ? opmath_t(0) : ate;
}

}  // namespace causal

// ---------------------------------------------------------------- checks
// The fake kernels (python/fastattr/_meta.py) state the same conditions with
// the same messages.

inline causal::OutcomeArgs check_region_outcome_args(const at::Tensor& output, const at::Tensor& roi,
                                                     const at::Tensor& gt, int64_t channel, c10::string_view outcome,
                                                     c10::string_view activation, double threshold,
                                                     bool empty_is_one) {
  constexpr const char* op = "region_outcome";
  check_floating(output, "output");
  TORCH_CHECK_VALUE(output.dim() == 4 && output.size(1) >= 1,
              "fastattr.region_outcome: output must be a segmentation map (R, K, H, W) with K >= 1, got shape ",
              output.sizes());
  const int64_t classes = output.size(1);
  TORCH_CHECK_VALUE(channel >= -1 && channel < classes, "fastattr.region_outcome: channel must be -1 (every channel) or in [0, ",
              classes, ") for an output with ", classes, " channels, got ", channel);
  causal::OutcomeArgs a{};
  a.outcome = causal::parse_outcome(outcome);
  a.activation = causal::parse_activation(activation);
  TORCH_CHECK_TYPE(roi.scalar_type() == at::kBool, "fastattr.region_outcome: roi must be a bool tensor, got ",
              dtype_name(roi.scalar_type()));
  TORCH_CHECK_VALUE(roi.dim() == 2 && roi.size(0) == output.size(2) && roi.size(1) == output.size(3),
              "fastattr.region_outcome: roi must have shape (H, W) = [", output.size(2), ", ", output.size(3),
              "], got shape ", roi.sizes());
  check_on_device(op, roi, "roi", output, "output");
  const int64_t selected = channel < 0 ? classes : 1;
  TORCH_CHECK_TYPE(at::isFloatingType(gt.scalar_type()), "fastattr.region_outcome: gt must be a floating-point tensor, got ",
              dtype_name(gt.scalar_type()));
  TORCH_CHECK_VALUE(gt.dim() == 3 && gt.size(0) == selected && gt.size(1) == output.size(2) && gt.size(2) == output.size(3),
              "fastattr.region_outcome: gt must have shape (G, H, W) = [", selected, ", ", output.size(2), ", ",
              output.size(3), "] (G = 1 for one channel, K for every channel), got shape ", gt.sizes());
  check_on_device(op, gt, "gt", output, "output");
  a.rows = output.size(0);
  a.classes = classes;
  a.height = output.size(2);
  a.width = output.size(3);
  a.channel = channel;
  a.threshold = threshold;
  a.empty_is_one = empty_is_one;
  a.s_row = output.stride(0);
  a.s_class = output.stride(1);
  a.s_h = output.stride(2);
  a.s_w = output.stride(3);
  return a;
}

struct AteArgs {
  int64_t images, gh, gw, n0, n1, bh, bw;
};

inline AteArgs check_causal_ate_map_args(const at::Tensor& screen, const at::Tensor& full, const at::Tensor& base,
                                         const at::Tensor& visited, at::IntArrayRef block, double tau) {
  constexpr const char* op = "causal_ate_map";
  check_floating(screen, "screen");
  TORCH_CHECK_VALUE(screen.dim() == 4 && screen.size(3) >= 1,
              "fastattr.causal_ate_map: screen must have shape (B, gh, gw, n_screen) with n_screen >= 1, got shape ",
              screen.sizes());
  TORCH_CHECK_VALUE(full.dim() == 4 && full.sizes().slice(0, 3) == screen.sizes().slice(0, 3) && full.size(3) >= 1,
              "fastattr.causal_ate_map: full must have shape (B, gh, gw, n_samples) = [", screen.size(0), ", ",
              screen.size(1), ", ", screen.size(2), ", n_samples] with n_samples >= 1, got shape ", full.sizes());
  check_same_dtype(screen, "screen", full, "full");
  check_same_device(screen, "screen", full, "full");
  TORCH_CHECK_VALUE(base.dim() == 1 && base.size(0) == screen.size(0), "fastattr.causal_ate_map: base must have shape (B,) = [",
              screen.size(0), "], got shape ", base.sizes());
  check_same_dtype(screen, "screen", base, "base");
  check_on_device(op, base, "base", screen, "screen");
  TORCH_CHECK_TYPE(visited.scalar_type() == at::kBool, "fastattr.causal_ate_map: visited must be a bool tensor, got ",
              dtype_name(visited.scalar_type()));
  TORCH_CHECK_VALUE(visited.dim() == 3 && visited.sizes() == screen.sizes().slice(0, 3),
              "fastattr.causal_ate_map: visited must have shape (B, gh, gw) = ", screen.sizes().slice(0, 3),
              ", got shape ", visited.sizes());
  check_on_device(op, visited, "visited", screen, "screen");
  TORCH_CHECK_VALUE(block.size() == 2 && block[0] >= 1 && block[1] >= 1,
              "fastattr.causal_ate_map: block must be two positive ints (bh, bw), got ", block);
  TORCH_CHECK_VALUE(std::isfinite(tau) && tau >= 0, "fastattr.causal_ate_map: tau must be finite and >= 0, got ", tau);
  return {screen.size(0), screen.size(1), screen.size(2), screen.size(3), full.size(3), block[0], block[1]};
}

}  // namespace fastattr
