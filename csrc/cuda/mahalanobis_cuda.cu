// CUDA kernel of ood_zoo::mahalanobis (launched from ops_cuda.cpp): the per-row minimum of a
// [rows, C] block of squared distances, one warp per row, ties to the lower class index. The
// whitening and class GEMMs reuse gemm_nt from knn_cuda.cu (Lee et al., NeurIPS 2018).
#include <cuda_runtime.h>

#include <cstdint>

#include "device_utils.cuh"
#include "kernels.h"

namespace ood_zoo::cuda {
namespace {

constexpr int kArgminThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kArgminThreads)
    row_argmin_kernel(const T* __restrict__ d, int64_t rows, int64_t cols, int64_t ld,
                      T* __restrict__ min_out, int64_t* __restrict__ arg_out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kArgminThreads / kWarp) +
                      threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) {
    return;
  }
  const T* r = d + row * ld;
  T best = positive_infinity<T>();
  long long arg = kNoIndex;
  for (int64_t j = lane; j < cols; j += kWarp) {
    const T v = r[j];
    if (v < best) {  // j increases per lane, so the first minimum is kept
      best = v;
      arg = j;
    }
  }
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const T other = __shfl_down_sync(0xffffffffu, best, off);
    const long long other_arg = __shfl_down_sync(0xffffffffu, arg, off);
    if (other < best || (other == best && other_arg < arg)) {
      best = other;
      arg = other_arg;
    }
  }
  if (lane == 0) {
    min_out[row] = max(best, T(0));
    arg_out[row] = arg;
  }
}

template <typename T>
cudaError_t row_argmin_impl(const T* d, int64_t rows, int64_t cols, int64_t ld, T* min_out,
                            int64_t* arg_out, cudaStream_t stream) {
  if (rows == 0) {
    return cudaSuccess;
  }
  if (cols < 1) {
    return cudaErrorInvalidValue;
  }
  const int64_t rows_per_block = kArgminThreads / kWarp;
  const auto blocks = static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block);
  row_argmin_kernel<T><<<blocks, kArgminThreads, 0, stream>>>(d, rows, cols, ld, min_out, arg_out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t row_argmin(const float* d, int64_t rows, int64_t cols, int64_t ld, float* min_out,
                       int64_t* arg_out, cudaStream_t stream) {
  return row_argmin_impl(d, rows, cols, ld, min_out, arg_out, stream);
}
cudaError_t row_argmin(const double* d, int64_t rows, int64_t cols, int64_t ld, double* min_out,
                       int64_t* arg_out, cudaStream_t stream) {
  return row_argmin_impl(d, rows, cols, ld, min_out, arg_out, stream);
}

}  // namespace ood_zoo::cuda
