// Small device helpers shared by the ood_zoo CUDA kernels (plain CUDA, no torch headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ood_zoo::cuda {

//! Index of an empty top-k slot: it loses every tie.
constexpr int64_t kNoIndex = INT64_MAX;
constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T positive_infinity();

template <>
__device__ __forceinline__ float positive_infinity<float>() {
  return __int_as_float(0x7f800000);
}

template <>
__device__ __forceinline__ double positive_infinity<double>() {
  return __longlong_as_double(0x7ff0000000000000LL);
}

}  // namespace ood_zoo::cuda
