// The library's single TORCH_LIBRARY block and the Python module stub.
// Op schemas live next to each op in csrc/ops/<op>.cpp (TORCH_LIBRARY_FRAGMENT).
#ifdef WITH_PYTHON
#include <Python.h>
#endif

#include <torch/library.h>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace fastattr {

// CUDA runtime version the extension was built against (-1 for a CPU-only build),
// checked against torch.version.cuda at import time.
int64_t cuda_version() {
#ifdef WITH_CUDA
  return CUDART_VERSION;
#else
  return -1;
#endif
}

TORCH_LIBRARY(fastattr, m) {
  m.def("_cuda_version() -> int", &cuda_version);
}

}  // namespace fastattr

#ifdef WITH_PYTHON
// `import fastattr._C` loads this shared object, which runs the static
// registrations above. The module itself has no Python-level members.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
}
#endif
