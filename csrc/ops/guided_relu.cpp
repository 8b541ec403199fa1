// Schemas of the guided ReLU-family op and its fused backward.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastattr, m) {
  // Forward of ReLU (upper=None) or ReLU6 (upper=6): clamp(self, 0, upper).
  // Its gradient follows `mode` ("guided" or "deconvnet") instead of the chain rule.
  m.def("guided_relu(Tensor self, str mode, float? upper=None) -> Tensor");
  // One pass over (grad_output, result):
  //   guided:    grad_output * 1[0 < result < upper] * 1[grad_output > 0]
  //   deconvnet: relu(grad_output)
  // `result` is the forward output; 0 < result < upper <=> 0 < self < upper,
  // so the in-place forms need not keep the input alive.
  m.def(
      "_guided_relu_backward(Tensor grad_output, Tensor result, str mode, "
      "float? upper=None) -> Tensor");
}
