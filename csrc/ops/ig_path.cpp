// Schemas of the integrated-gradients path ops.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastattr, m) {
  // Step-major path batch, shape (K * B, *self.shape[1:]):
  //   out[k*B + b] = baseline[b] + alphas[k] * (self[b] - baseline[b])      alphas (K,)
  //   out[k*B + b] = baseline[b] + alphas[k, b] * (self[b] - baseline[b])   alphas (K, B)
  // `alphas` is a floating tensor on self's device (no host round trip).
  m.def("ig_path_inputs(Tensor self, Tensor baseline, Tensor alphas) -> Tensor");
  // total[b] += sum_k weights[k(, b)] * grads[k*B + b], in place; weights (K,)
  // or (K, B) on total's device. `total` holds the accumulation dtype of
  // `grads` (float32 for float16/bfloat16 gradients).
  m.def("ig_accumulate_(Tensor(a!) total, Tensor grads, Tensor weights) -> ()");
}
