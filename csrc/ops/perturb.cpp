// Schemas of the perturbation-mask ops (RISE, MFPP, occlusion, feature
// ablation): batches of masked copies written straight from a compact mask
// description, and the RISE masks themselves. See csrc/ops/perturb.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastattr, m) {
  // RISE masks, (N, H, W) in grids' dtype: mask k is grid grid_index[k]
  // bilinearly up-sampled to up_size (half-pixel mapping; boundary by `mode`:
  // "mirror" = scikit-image resize(order=1, mode='reflect'), "clamp" =
  // F.interpolate(bilinear, align_corners=False)), cropped at
  // shifts[k] = (row, col) to size = (H, W). Only the crop is computed.
  m.def(
      "rise_masks(Tensor grids, Tensor grid_index, Tensor shifts, SymInt[2] size, "
      "int[2] up_size, str mode) -> Tensor");
  // Step-major masked batch (K*S, C, H, W) with the RISE mask of rise_masks
  // (size = self's H, W), shared by every channel:
  //   out[k*S + s] = baseline[s] + M_k * (self[s] - baseline[s])
  m.def(
      "rise_masked_batch(Tensor self, Tensor baseline, Tensor grids, Tensor grid_index, "
      "Tensor shifts, int[2] up_size, str mode) -> Tensor");
  // Step-major masked batch (K*S, *F) with M_k(s, e) = keep[k, segments[s or 0, e]];
  // segments (1 or S, *F) int64 ids in [0, J), keep (K, J) floating.
  m.def("segment_masked_batch(Tensor self, Tensor baseline, Tensor segments, Tensor keep) -> Tensor");
  // Step-major masked batch (count*S, *F) of Captum Occlusion windows over the
  // per-sample shape F (1 to 3 dims): M = 0 inside window start + k, 1 outside.
  // ceil((F_d - window_d) / strides_d) + 1 windows per dim at multiples of the
  // stride (the last clipped at the edge), enumerated row-major.
  m.def(
      "window_masked_batch(Tensor self, Tensor baseline, int[] window, int[] strides, "
      "int start, int count) -> Tensor");
  // Block intervention (causal ATE, spec §2.3): step-major batch (N*S, C, H, W),
  //   out[n*S + s] = self[s] with [:, r:r+bh, c:c+bw] := bank[patch_index[n]],
  // (r, c) = blocks[n]; bank (P, C, bh, bw) of self's dtype. A row with a patch
  // index outside [0, P) or a block not inside the image is NaN.
  m.def("block_patch_batch(Tensor self, Tensor bank, Tensor patch_index, Tensor blocks) -> Tensor");
}
