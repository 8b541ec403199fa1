// C++ smoke test of libfastattr, no Python involved: load the library, find the
// ops through the dispatcher and run them on CPU tensors with known answers.
//
//   fastattr_smoke path/to/libfastattr.so
//
// Exit status 0 when every check passes.
#include <dlfcn.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

bool equal(const at::Tensor& a, const std::vector<float>& expected) {
  auto b = at::tensor(expected, at::kFloat).view(a.sizes());
  return a.scalar_type() == at::kFloat && at::equal(a, b);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s path/to/libfastattr.so\n", argv[0]);
    return 2;
  }
  auto& dispatcher = c10::Dispatcher::singleton();
  check(!dispatcher.findSchema({"fastattr::guided_relu", ""}).has_value(),
        "fastattr::guided_relu is not registered before the library is loaded");

  void* handle = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (handle == nullptr) {
    std::fprintf(stderr, "FAIL dlopen(%s): %s\n", argv[1], dlerror());
    return 1;
  }
  check(true, std::string("loaded ") + argv[1]);

  // guided_relu(Tensor self, str mode, float? upper=None) -> Tensor
  auto relu = dispatcher.findSchemaOrThrow("fastattr::guided_relu", "")
                  .typed<at::Tensor(const at::Tensor&, c10::string_view, std::optional<double>)>();
  auto x = at::tensor({-2.0f, 0.0f, 3.0f, 7.5f}, at::kFloat);
  check(equal(relu.call(x, "guided", std::nullopt), {0.0f, 0.0f, 3.0f, 7.5f}),
        "guided_relu(x) == relu(x)");
  auto y6 = relu.call(x, "guided", 6.0);
  check(equal(y6, {0.0f, 0.0f, 3.0f, 6.0f}), "guided_relu(x, upper=6) == relu6(x)");

  // _guided_relu_backward(Tensor grad_output, Tensor result, str mode, float? upper) -> Tensor
  auto relu_bwd =
      dispatcher.findSchemaOrThrow("fastattr::_guided_relu_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view,
                            std::optional<double>)>();
  auto g = at::tensor({1.0f, 1.0f, -1.0f, 2.0f}, at::kFloat);
  check(equal(relu_bwd.call(g, relu.call(x, "guided", std::nullopt), "guided", std::nullopt),
              {0.0f, 0.0f, 0.0f, 2.0f}),
        "guided rule g*(x>0)*(g>0)");
  check(equal(relu_bwd.call(g, y6, "guided", 6.0), {0.0f, 0.0f, 0.0f, 0.0f}),
        "guided ReLU6 rule drops x >= 6");
  check(equal(relu_bwd.call(g, y6, "deconvnet", 6.0), {1.0f, 1.0f, 0.0f, 2.0f}),
        "deconvnet rule relu(g)");

  // ig_path_inputs(Tensor self, Tensor baseline, Tensor alphas) -> Tensor
  auto path = dispatcher.findSchemaOrThrow("fastattr::ig_path_inputs", "")
                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  auto inp = at::tensor({4.0f, 8.0f}, at::kFloat).view({1, 2});
  auto base = at::zeros({1, 2}, at::kFloat);
  auto alphas = at::tensor({0.25, 1.0}, at::kDouble);
  auto batch = path.call(inp, base, alphas);
  check(equal(batch, {1.0f, 2.0f, 4.0f, 8.0f}), "ig_path_inputs step-major batch");

  // ig_accumulate_(Tensor(a!) total, Tensor grads, Tensor weights) -> ()
  auto acc = dispatcher.findSchemaOrThrow("fastattr::ig_accumulate_", "")
                 .typed<void(at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  auto total = at::ones({1, 2}, at::kFloat);
  acc.call(total, batch, at::tensor({0.5, 2.0}, at::kDouble));
  check(equal(total, {1.0f + 0.5f + 8.0f, 1.0f + 1.0f + 16.0f}), "ig_accumulate_ weighted sum in place");

  // window_masked_batch(Tensor self, Tensor baseline, int[] window, int[] strides, int start,
  //                     int count) -> Tensor: Captum Occlusion windows, step-major.
  auto windows = dispatcher.findSchemaOrThrow("fastattr::window_masked_batch", "")
                     .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                       at::IntArrayRef, int64_t, int64_t)>();
  auto row = at::tensor({1.0f, 2.0f, 3.0f, 4.0f, 5.0f}, at::kFloat).view({1, 5});
  // 5 elements, window 2, stride 2: windows at 0, 2 and 4 (the last clipped).
  auto occluded = windows.call(row, at::zeros({1, 5}, at::kFloat), {2}, {2}, 1, 2);
  check(equal(occluded, {1.0f, 2.0f, 0.0f, 0.0f, 5.0f, 1.0f, 2.0f, 3.0f, 4.0f, 0.0f}),
        "window_masked_batch occludes windows 1 and 2 (clipped at the edge)");

  // Errors surface as c10::Error with the argument named.
  bool threw = false;
  try {
    relu.call(x, "nonsense", std::nullopt);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("mode") != std::string::npos;
  }
  check(threw, "bad mode raises c10::Error naming `mode`");

  const auto cpu_ok = dispatcher.findSchemaOrThrow("fastattr::guided_max_pool2d", "")
                          .hasKernelForDispatchKey(c10::DispatchKey::CPU);
  check(cpu_ok, "guided_max_pool2d has a CPU kernel");
#ifdef FASTATTR_SMOKE_CUDA
  for (const char* name : {"fastattr::guided_relu", "fastattr::_guided_relu_backward",
                           "fastattr::guided_max_pool2d", "fastattr::_guided_max_pool2d_backward",
                           "fastattr::ig_path_inputs", "fastattr::ig_accumulate_",
                           "fastattr::rise_masks", "fastattr::rise_masked_batch",
                           "fastattr::segment_masked_batch", "fastattr::window_masked_batch"}) {
    check(dispatcher.findSchemaOrThrow(name, "").hasKernelForDispatchKey(c10::DispatchKey::CUDA),
          std::string(name) + " has a CUDA kernel");
  }
#endif

  std::printf("%s\n", failures == 0 ? "fastattr_smoke: all checks passed"
                                    : "fastattr_smoke: FAILED");
  return failures == 0 ? 0 : 1;
}
