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
//
// kWidth > 1 (rows a multiple of the vector width, every pointer 16-byte
// aligned): a thread takes kWidth consecutive elements of one row, read and
// written as 16-byte vectors, for bandwidth (see cuda_helpers.cuh); each lane
// is computed exactly as in the scalar loop (kWidth == 1).
template <typename scalar_t, int kWidth>
__global__ void ig_path_inputs_cuda_impl(const scalar_t* __restrict__ x,
                                         const scalar_t* __restrict__ base,
                                         const at::opmath_type<scalar_t>* __restrict__ alphas,
                                         int64_t steps, int64_t step_stride, int64_t batch_stride,
                                         scalar_t* __restrict__ out, int64_t n, int64_t row) {
  using opmath_t = at::opmath_type<scalar_t>;
  using vec_t = Vector<scalar_t, kWidth>;
  const vec_t* __restrict__ xv = reinterpret_cast<const vec_t*>(x);
  const vec_t* __restrict__ bv = reinterpret_cast<const vec_t*>(base);
  vec_t* __restrict__ ov = reinterpret_cast<vec_t*>(out);
  const int64_t n_vec = n / kWidth;  // n % kWidth == 0 (row is a multiple)
  FASTATTR_KERNEL_LOOP(i, n_vec) {
    const vec_t b = bv[i];
    const vec_t xi = xv[i];
    vec_t diff;
#pragma unroll
    for (int l = 0; l < kWidth; ++l) diff.v[l] = xi.v[l] - b.v[l];
    const opmath_t* a = alphas + (i * kWidth / row) * batch_stride;
    for (int64_t k = 0; k < steps; ++k) {
      const opmath_t alpha = a[k * step_stride];
      vec_t res;
#pragma unroll
      for (int l = 0; l < kWidth; ++l) {
        const scalar_t step =
            static_cast<scalar_t>(mul_rn<opmath_t>(alpha, static_cast<opmath_t>(diff.v[l])));
        res.v[l] = add_rn<scalar_t>(b.v[l], step);
      }
      ov[k * n_vec + i] = res;
    }
  }
}

// Same vector split as ig_path_inputs: kWidth elements of one row per
// thread, grads read as one 16-byte vector per step, `total` (opmath) as
// kWidth opmath values; each lane accumulates exactly as the scalar loop.
template <typename scalar_t, int kWidth>
__global__ void ig_accumulate_cuda_impl(at::opmath_type<scalar_t>* __restrict__ total,
                                        const scalar_t* __restrict__ grads,
                                        const at::opmath_type<scalar_t>* __restrict__ weights,
                                        int64_t steps, int64_t step_stride, int64_t batch_stride,
                                        int64_t n, int64_t row) {
  using opmath_t = at::opmath_type<scalar_t>;
  using vec_t = Vector<scalar_t, kWidth>;
  using acc_vec_t = Vector<opmath_t, kWidth>;
  const vec_t* __restrict__ gv = reinterpret_cast<const vec_t*>(grads);
  acc_vec_t* __restrict__ tv = reinterpret_cast<acc_vec_t*>(total);
  const int64_t n_vec = n / kWidth;  // n % kWidth == 0 (row is a multiple)
  FASTATTR_KERNEL_LOOP(i, n_vec) {
    const opmath_t* w = weights + (i * kWidth / row) * batch_stride;
    acc_vec_t acc = tv[i];
    for (int64_t k = 0; k < steps; ++k) {
      const opmath_t wk = w[k * step_stride];
      const vec_t g = gv[k * n_vec + i];
#pragma unroll
      for (int l = 0; l < kWidth; ++l) acc.v[l] += wk * static_cast<opmath_t>(g.v[l]);
    }
    tv[i] = acc;
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
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    const scalar_t* base_ptr = base.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    const int64_t row = n / x.size(0);
    // 16-byte vectors (for bandwidth) when rows split into whole vectors and
    // every pointer is aligned; else the scalar loop.
    // Each thread loops over the steps, so vectors only pay when there are
    // enough of them to fill the device (fills_device).
    constexpr int kVec = vector_width<scalar_t>();
    with_vector_width<scalar_t>(row % kVec == 0 && fills_device(n / kVec), {x_ptr, base_ptr, out_ptr},
                                [&](auto width) {
      constexpr int kWidth = decltype(width)::value;
      ig_path_inputs_cuda_impl<scalar_t, kWidth>
          <<<grid_for_vectors(n, kWidth), kThreadsPerBlock, 0, stream>>>(
              x_ptr, base_ptr, table.values.const_data_ptr<opmath_t>(), steps, table.step_stride,
              table.batch_stride, out_ptr, n, row);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
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
    opmath_t* total_ptr = total.mutable_data_ptr<opmath_t>();
    const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
    const int64_t row = n / total.size(0);
    constexpr int kVec = vector_width<scalar_t>();
    // 16-byte vectors of grads (for bandwidth) when rows split into whole
    // vectors, grads is 16-byte aligned and total aligned to kVec opmath
    // values (32 bytes for half/bfloat16); else the scalar loop.
    const bool total_aligned =
        reinterpret_cast<uintptr_t>(total_ptr) % (sizeof(opmath_t) * kVec) == 0;
    with_vector_width<scalar_t>(row % kVec == 0 && total_aligned && fills_device(n / kVec), {g_ptr},
                                [&](auto width) {
      constexpr int kWidth = decltype(width)::value;
      ig_accumulate_cuda_impl<scalar_t, kWidth>
          <<<grid_for_vectors(n, kWidth), kThreadsPerBlock, 0, stream>>>(
              total_ptr, g_ptr, table.values.const_data_ptr<opmath_t>(), weights.size(0),
              table.step_stride, table.batch_stride, n, row);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattr, CUDA, m) {
  m.impl("ig_path_inputs", &ig_path_inputs_kernel);
  m.impl("ig_accumulate_", &ig_accumulate_kernel);
}

}  // namespace fastattr
