// CUDA kernels of the integrated-gradients path ops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <vector>

#include "../ops/ig_path.h"
#include "cuda_helpers.cuh"

namespace fastattr {
namespace {

// Multiply / add rounded as separate operations: nvcc would otherwise contract
// `b + a * d` into one FMA, which rounds once where PyTorch's two kernels (and
// the CPU kernel) round twice.
template <typename T>
__device__ __forceinline__ T mul_rn(T a, T b) { return a * b; }
template <>
__device__ __forceinline__ float mul_rn<float>(float a, float b) { return __fmul_rn(a, b); }
template <>
__device__ __forceinline__ double mul_rn<double>(double a, double b) { return __dmul_rn(a, b); }
template <typename T>
__device__ __forceinline__ T add_rn(T a, T b) { return a + b; }
template <>
__device__ __forceinline__ float add_rn<float>(float a, float b) { return __fadd_rn(a, b); }
template <>
__device__ __forceinline__ double add_rn<double>(double a, double b) { return __dadd_rn(a, b); }

// One thread per element of the input, writing that element's value for every
// step: the difference (x - baseline) is read once, written `steps` times.
// Rounds like `baseline + alpha * (input - baseline)` in PyTorch ops of
// scalar_t: alpha stays in opmath precision (as a Python-float scalar does),
// the difference, product and sum are each rounded to scalar_t. The node table
// is read from device memory (a few values every thread shares, served by the
// cache): no per-call host data, no limit on the step count.
template <typename scalar_t>
__global__ void ig_path_inputs_cuda_impl(const scalar_t* __restrict__ x,
                                         const scalar_t* __restrict__ base,
                                         const at::opmath_type<scalar_t>* __restrict__ alphas,
                                         int64_t steps, int64_t step_stride, int64_t batch_stride,
                                         scalar_t* __restrict__ out, int64_t n, int64_t row) {
  using opmath_t = at::opmath_type<scalar_t>;
  FASTATTR_KERNEL_LOOP(i, n) {
    const scalar_t b = base[i];
    const scalar_t diff = x[i] - b;
    const opmath_t* a = alphas + (i / row) * batch_stride;
    for (int64_t k = 0; k < steps; ++k) {
      const scalar_t step =
          static_cast<scalar_t>(mul_rn<opmath_t>(a[k * step_stride], static_cast<opmath_t>(diff)));
      out[k * n + i] = add_rn<scalar_t>(b, step);
    }
  }
}

template <typename scalar_t>
__global__ void ig_accumulate_cuda_impl(at::opmath_type<scalar_t>* __restrict__ total,
                                        const scalar_t* __restrict__ grads,
                                        const at::opmath_type<scalar_t>* __restrict__ weights,
                                        int64_t steps, int64_t step_stride, int64_t batch_stride,
                                        int64_t n, int64_t row) {
  using opmath_t = at::opmath_type<scalar_t>;
  FASTATTR_KERNEL_LOOP(i, n) {
    const opmath_t* w = weights + (i / row) * batch_stride;
    opmath_t acc = total[i];
    for (int64_t k = 0; k < steps; ++k) {
      acc += w[k * step_stride] * static_cast<opmath_t>(grads[k * n + i]);
    }
    total[i] = acc;
  }
}

// Both ops work on flat batch-major arrays: contiguous or channels_last (the
// batch dimension is outermost in either), in the suggested memory format of
// the tensor that sets the layout (input; total).
at::Tensor ig_path_inputs_kernel(const at::Tensor& self, const at::Tensor& baseline,
                                 const at::Tensor& alphas) {
  check_ig_path_inputs_args(self, baseline, alphas);
  c10::cuda::CUDAGuard guard(self.device());
  const auto format = self.suggest_memory_format();
  const at::Tensor x = self.contiguous(format);
  const at::Tensor base = baseline.contiguous(format);
  const int64_t steps = alphas.size(0);
  std::vector<int64_t> out_size(x.sizes().begin(), x.sizes().end());
  out_size[0] *= steps;
  auto out = at::empty(out_size, x.options().memory_format(format));
  const int64_t n = x.numel();
  if (n == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ig_path_inputs", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const StepTableView table = step_table(alphas, c10::CppTypeToScalarType<opmath_t>::value);
    ig_path_inputs_cuda_impl<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), base.const_data_ptr<scalar_t>(),
        table.values.const_data_ptr<opmath_t>(), steps, table.step_stride, table.batch_stride,
        out.mutable_data_ptr<scalar_t>(), n, n / x.size(0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void ig_accumulate_kernel(at::Tensor& total, const at::Tensor& grads, const at::Tensor& weights) {
  check_ig_accumulate_args(total, grads, weights);
  const int64_t n = total.numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(total.device());
  // grads are read in total's memory order.
  const at::Tensor g = grads.contiguous(total.suggest_memory_format());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "ig_accumulate_", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const StepTableView table = step_table(weights, c10::CppTypeToScalarType<opmath_t>::value);
    ig_accumulate_cuda_impl<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
        total.mutable_data_ptr<opmath_t>(), g.const_data_ptr<scalar_t>(),
        table.values.const_data_ptr<opmath_t>(), weights.size(0), table.step_stride,
        table.batch_stride, n, n / total.size(0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CUDA, m) {
  m.impl("ig_path_inputs", &ig_path_inputs_kernel);
  m.impl("ig_accumulate_", &ig_accumulate_kernel);
}

}  // namespace fastattr
