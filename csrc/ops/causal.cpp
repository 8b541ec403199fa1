// Schemas of the causal-ATE ops (PdCR, spec §2): the fused region outcome and
// the block ATE map. See csrc/ops/causal.h. The block intervention is
// block_patch_batch (csrc/ops/perturb.cpp).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastattr, m) {
  // One outcome per row of a segmentation output (R, K, H, W), in its dtype
  // (sums in double), over the bool RoI (H, W) and channel `channel` (-1:
  // every channel) against gt (G, H, W): outcome "dice" (100 Dice of
  // activation(output) > threshold), "soft_dice" or "mean_prob" (100 x the
  // mean probability); activation "none", "sigmoid" or "softmax" (dim 1).
  m.def(
      "region_outcome(Tensor output, Tensor roi, Tensor gt, int channel, str outcome, str activation, "
      "float threshold, bool empty_is_one) -> Tensor");
  // ATE map (B, gh*bh, gw*bw) in screen's dtype from the outcomes of every
  // cell's screening rows (B, gh, gw, n0) and full rows (B, gh, gw, n1), the
  // factual outcomes base (B,) and the visited cells (B, gh, gw): a cell's
  // value is mean(full - base) when some |screen - base| >= tau and
  // |mean| >= tau, else 0; block-constant.
  m.def(
      "causal_ate_map(Tensor screen, Tensor full, Tensor base, Tensor visited, int[2] block, float tau) -> Tensor");
}
