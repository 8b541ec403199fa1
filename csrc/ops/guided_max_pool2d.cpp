// Schemas of the guided max-pool op and its fused backward.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastattr, m) {
  // Forward of nn.MaxPool2d (output, flat argmax indices per plane); the
  // gradient follows `mode` ("reference": GNL rule, "window": positive
  // gradients routed per window).
  m.def(
      "guided_max_pool2d(Tensor self, int[2] kernel_size, int[2] stride, "
      "int[2] padding, int[2] dilation, bool ceil_mode, str mode) "
      "-> (Tensor, Tensor)");
  // Gathers, for each input element, the gradients of the windows whose argmax
  // it is, and applies the rule in the same pass (deterministic: no atomics).
  m.def(
      "_guided_max_pool2d_backward(Tensor grad_output, Tensor indices, "
      "SymInt[] input_size, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, str mode) -> Tensor");
}
