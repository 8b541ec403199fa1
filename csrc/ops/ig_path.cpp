// Schemas of the integrated-gradients path ops.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastattr, m) {
  // Step-major path batch: out[k*B + b] = baseline[b] + alphas[k] * (self[b] - baseline[b]),
  // shape (len(alphas) * B, *self.shape[1:]).
  m.def("ig_path_inputs(Tensor self, Tensor baseline, float[] alphas) -> Tensor");
  // total[b] += sum_k weights[k] * grads[k*B + b], in place. `total` holds the
  // accumulation dtype of `grads` (float32 for float16/bfloat16 gradients).
  m.def("ig_accumulate_(Tensor(a!) total, Tensor grads, float[] weights) -> ()");
}
