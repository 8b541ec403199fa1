// Launch helpers shared by the CUDA kernels.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

namespace fastattr {

constexpr int kThreadsPerBlock = 256;

// Grid for a grid-stride loop over n elements: enough blocks to fill every SM
// several times over, never more than needed.
inline dim3 grid_for(int64_t n) {
  const int64_t blocks = (n + kThreadsPerBlock - 1) / kThreadsPerBlock;
  const int64_t cap =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return dim3(static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, cap))));
}

#define FASTATTR_KERNEL_LOOP(i, n)                                                  \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// 16-byte vector access for the purely elementwise kernels. A scalar loop
// keeps only 2 (half/bfloat16) or 4 (float) bytes per thread in flight, too few
// to saturate HBM (an H100 measured half/bfloat16 at 27-68% of copy bandwidth,
// float32 at 79-92%); one 128-bit load/store per thread moves 8 half, 4 float
// or 2 double values per instruction and keeps 16 bytes per thread in flight.
constexpr int kVectorBytes = 16;

template <typename T>
constexpr int vector_width() {
  static_assert(sizeof(T) <= kVectorBytes && kVectorBytes % sizeof(T) == 0);
  return static_cast<int>(kVectorBytes / sizeof(T));
}

// kWidth values of T, aligned so that a copy of the whole struct compiles to
// one 128-bit global load or store (LDG.E.128 / STG.E.128).
template <typename T, int kWidth>
struct alignas(sizeof(T) * kWidth) Vector {
  T v[kWidth];
};

inline bool vector_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0;
}

// The vector width an elementwise kernel over `ptrs` (all of element type T)
// may use: vector_width<T>() when every pointer is 16-byte aligned, else 1
// (the scalar loop; e.g. a view at an odd storage offset). The element count
// need not be a multiple of the width: the kernels finish the tail in scalars.
template <typename T>
int elementwise_vector_width(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (!vector_aligned(p)) return 1;
  }
  return vector_width<T>();
}

// Whether `threads` threads (one per vector) fill every SM to its thread
// limit. Below that, a loop over steps with one vector per thread keeps fewer
// memory operations in flight than the scalar loop's one thread per element:
// on an H200, ig_accumulate_ with 16-byte vectors over 4 x 3x224x224 floats
// (150k vectors) reached 44% of copy bandwidth, the scalar loop 82% on an H100.
inline bool fills_device(int64_t threads) {
  const cudaDeviceProp* p = at::cuda::getCurrentDeviceProperties();
  return threads >= static_cast<int64_t>(p->multiProcessorCount) * p->maxThreadsPerMultiProcessor;
}

// Grid for a grid-stride loop over the n / width whole vectors of n elements
// (at least one block, whose first threads also take the scalar tail).
inline dim3 grid_for_vectors(int64_t n, int width) { return grid_for(n / width); }

// Calls launch(std::integral_constant<int, W>{}) with W the vector width of T
// when `divisible` holds and every pointer is 16-byte aligned, else W = 1:
// each kernel is compiled for both.
template <typename T, typename Launch>
void with_vector_width(bool divisible, std::initializer_list<const void*> ptrs, Launch&& launch) {
  if (divisible && elementwise_vector_width<T>(ptrs) == vector_width<T>()) {
    launch(std::integral_constant<int, vector_width<T>()>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

template <typename T, typename Launch>
void with_vector_width(std::initializer_list<const void*> ptrs, Launch&& launch) {
  with_vector_width<T>(true, ptrs, std::forward<Launch>(launch));
}

}  // namespace fastattr
