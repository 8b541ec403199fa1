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

// Steps per launch: the node/weight table travels as a kernel argument (no
// host-to-device copy, so the op stays capturable in CUDA graphs).
constexpr int kMaxStepsPerLaunch = 64;

template <typename T>
struct StepTable {
  T values[kMaxStepsPerLaunch];
};

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
// the difference, product and sum are each rounded to scalar_t.
template <typename scalar_t>
__global__ void ig_path_inputs_cuda_impl(const scalar_t* __restrict__ x,
                                         const scalar_t* __restrict__ base,
                                         StepTable<at::opmath_type<scalar_t>> alphas,
                                         int64_t steps, scalar_t* __restrict__ out, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  FASTATTR_KERNEL_LOOP(i, n) {
    const scalar_t b = base[i];
    const scalar_t diff = x[i] - b;
    for (int64_t k = 0; k < steps; ++k) {
      const scalar_t step =
          static_cast<scalar_t>(mul_rn<opmath_t>(alphas.values[k], static_cast<opmath_t>(diff)));
      out[k * n + i] = add_rn<scalar_t>(b, step);
    }
  }
}

template <typename scalar_t>
__global__ void ig_accumulate_cuda_impl(at::opmath_type<scalar_t>* __restrict__ total,
                                        const scalar_t* __restrict__ grads,
                                        StepTable<at::opmath_type<scalar_t>> weights,
                                        int64_t steps, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  FASTATTR_KERNEL_LOOP(i, n) {
    opmath_t acc = total[i];
    for (int64_t k = 0; k < steps; ++k) {
      acc += weights.values[k] * static_cast<opmath_t>(grads[k * n + i]);
    }
    total[i] = acc;
  }
}

at::Tensor ig_path_inputs_kernel(const at::Tensor& self, const at::Tensor& baseline,
                                 at::ArrayRef<double> alphas) {
  check_ig_path_inputs_args(self, baseline, alphas);
  c10::cuda::CUDAGuard guard(self.device());
  auto x = self.contiguous();
  auto base = baseline.contiguous();
  const int64_t steps = static_cast<int64_t>(alphas.size());
  std::vector<int64_t> out_size(x.sizes().begin(), x.sizes().end());
  out_size[0] *= steps;
  auto out = at::empty(out_size, x.options());
  const int64_t n = x.numel();
  if (n == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ig_path_inputs", [&] {
    for (int64_t k0 = 0; k0 < steps; k0 += kMaxStepsPerLaunch) {
      const int64_t chunk = std::min<int64_t>(kMaxStepsPerLaunch, steps - k0);
      StepTable<at::opmath_type<scalar_t>> table;
      for (int64_t k = 0; k < chunk; ++k) {
        table.values[k] = static_cast<at::opmath_type<scalar_t>>(alphas[k0 + k]);
      }
      ig_path_inputs_cuda_impl<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), base.const_data_ptr<scalar_t>(), table, chunk,
          out.mutable_data_ptr<scalar_t>() + k0 * n, n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

void ig_accumulate_kernel(at::Tensor& total, const at::Tensor& grads,
                          at::ArrayRef<double> weights) {
  check_ig_accumulate_args(total, grads, weights);
  const int64_t n = total.numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(total.device());
  auto g = grads.contiguous();
  const int64_t steps = static_cast<int64_t>(weights.size());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "ig_accumulate_", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    for (int64_t k0 = 0; k0 < steps; k0 += kMaxStepsPerLaunch) {
      const int64_t chunk = std::min<int64_t>(kMaxStepsPerLaunch, steps - k0);
      StepTable<opmath_t> table;
      for (int64_t k = 0; k < chunk; ++k) table.values[k] = static_cast<opmath_t>(weights[k0 + k]);
      ig_accumulate_cuda_impl<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, stream>>>(
          total.mutable_data_ptr<opmath_t>(), g.const_data_ptr<scalar_t>() + k0 * n, table, chunk,
          n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CUDA, m) {
  m.impl("ig_path_inputs", &ig_path_inputs_kernel);
  m.impl("ig_accumulate_", &ig_accumulate_kernel);
}

}  // namespace fastattr
