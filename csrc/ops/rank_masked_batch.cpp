// Schema of the rank-based progressive-masking op (deletion / insertion
// metrics). See csrc/ops/rank_masked_batch.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastattr, m) {
  // Step-major batch (count*S, C, H, W) for self (S, C, H, W): block k is step
  // t = start + k, where every pixel with ranks[s or 0, h, w] < t * step takes
  // the baseline (all channels) and the others keep self.
  m.def("rank_masked_batch(Tensor self, Tensor baseline, Tensor ranks, int step, int start, int count) -> Tensor");
}
