// CUDA kernels of ood_zoo::knn (launched from ops_cuda.cpp), usable by other ops too:
//   gemm_nt     the exact path for fp32/fp64: a 64x64-tiled shared-memory SIMT GEMM (each of 256
//               threads accumulates a 4x4 block with FMAs in the element type, no tensor cores)
//               C = (A - shift) B^T, with a fused epilogue that turns dot products into cosine
//               similarities or squared distances. bf16/fp16 banks use the tensor-core GEMM of
//               gemm_tc.cu instead, with the same epilogue;
//   row_norms   one warp per row: squared norms or clamped inverse norms;
//   topk_merge  one block per query: merges a tile's scores into the running top-k. A segment of
//               1024 scores is skipped unless one beats the current k-th best; otherwise it is
//               bitonic-sorted in shared memory and merged with the running list by rank
//               (merge path: rank = own position + number of better entries in the other list).
#include <cuda_runtime.h>

#include <cstdint>

#include "device_utils.cuh"
#include "kernels.h"

namespace ood_zoo::cuda {
namespace {

constexpr int kBlockM = 64;
constexpr int kBlockN = 64;
constexpr int kBlockK = 16;
constexpr int kThreadM = 4;
constexpr int kThreadN = 4;
constexpr int kGemmThreads = (kBlockM / kThreadM) * (kBlockN / kThreadN);  // 256
constexpr int kGroupsN = kBlockN / kThreadN;                                 // 16

template <typename T>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_nt_kernel(const T* __restrict__ a, const T* __restrict__ a_shift,
                   const T* __restrict__ b, T* __restrict__ c, int64_t m, int64_t n, int64_t kdim,
                   int64_t lda, int64_t ldb, int64_t ldc, Epilogue epi,
                   const T* __restrict__ row_term, const T* __restrict__ col_term) {
  // k-major tiles; the +1 pad keeps the transposing stores free of bank conflicts.
  __shared__ T as[kBlockK][kBlockM + 1];
  __shared__ T bs[kBlockK][kBlockN + 1];
  const int tid = threadIdx.x;
  const int tx = tid % kGroupsN;  // this thread's columns: tx + 16 j
  const int ty = tid / kGroupsN;  // this thread's rows:    ty + 16 i
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kBlockM;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kBlockN;

  T acc[kThreadM][kThreadN];
#pragma unroll
  for (int i = 0; i < kThreadM; ++i) {
#pragma unroll
    for (int j = 0; j < kThreadN; ++j) {
      acc[i][j] = T(0);
    }
  }

  for (int64_t k0 = 0; k0 < kdim; k0 += kBlockK) {
    // 64 x 16 elements of each operand, 4 per thread; consecutive threads read consecutive k.
#pragma unroll
    for (int r = 0; r < (kBlockM * kBlockK) / kGemmThreads; ++r) {
      const int e = tid + r * kGemmThreads;
      const int i = e / kBlockK;
      const int kk = e % kBlockK;
      const int64_t gk = k0 + kk;
      T va = T(0);
      T vb = T(0);
      if (gk < kdim) {
        if (row0 + i < m) {
          va = a[(row0 + i) * lda + gk];
          if (a_shift != nullptr) {
            va -= a_shift[gk];
          }
        }
        if (col0 + i < n) {
          vb = b[(col0 + i) * ldb + gk];
        }
      }
      as[kk][i] = va;
      bs[kk][i] = vb;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBlockK; ++kk) {
      T av[kThreadM];
      T bv[kThreadN];
#pragma unroll
      for (int i = 0; i < kThreadM; ++i) {
        av[i] = as[kk][ty + i * (kBlockM / kThreadM)];
      }
#pragma unroll
      for (int j = 0; j < kThreadN; ++j) {
        bv[j] = bs[kk][tx + j * kGroupsN];
      }
#pragma unroll
      for (int i = 0; i < kThreadM; ++i) {
#pragma unroll
        for (int j = 0; j < kThreadN; ++j) {
          acc[i][j] = fma(av[i], bv[j], acc[i][j]);
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kThreadM; ++i) {
    const int64_t gi = row0 + ty + i * (kBlockM / kThreadM);
    if (gi >= m) {
      continue;
    }
#pragma unroll
    for (int j = 0; j < kThreadN; ++j) {
      const int64_t gj = col0 + tx + j * kGroupsN;
      if (gj >= n) {
        continue;
      }
      T v = acc[i][j];
      switch (epi) {
        case Epilogue::kCosine:
          v = v * row_term[gi] * col_term[gj];
          break;
        case Epilogue::kSqDist:
          v = row_term[gi] + col_term[gj] - T(2) * v;
          break;
        case Epilogue::kSqDistClamped:
          v = max(row_term[gi] + col_term[gj] - T(2) * v, T(0));
          break;
        default:
          break;
      }
      c[gi * ldc + gj] = v;
    }
  }
}

constexpr int kNormThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    row_norms_kernel(const T* __restrict__ a, int64_t rows, int64_t cols, int64_t lda,
                     bool inverse, T* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kNormThreads / kWarp) +
                      threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) {
    return;
  }
  const T* r = a + row * lda;
  double acc = 0.0;
  for (int64_t j = lane; j < cols; j += kWarp) {
    const double v = static_cast<double>(r[j]);
    acc = fma(v, v, acc);
  }
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
    acc += __shfl_down_sync(0xffffffffu, acc, off);
  }
  if (lane == 0) {
    out[row] = inverse ? static_cast<T>(1.0 / max(sqrt(acc), 1e-12)) : static_cast<T>(acc);
  }
}

template <typename T>
__global__ void topk_init_kernel(T* __restrict__ values, int64_t* __restrict__ indices,
                                 int64_t count, bool largest) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) {
    values[i] = largest ? -positive_infinity<T>() : positive_infinity<T>();
    indices[i] = kNoIndex;
  }
}

constexpr int kSelectThreads = 256;
constexpr int kSegment = 1024;  // scores sorted at once; must be >= kMaxFusedK
static_assert(kSegment >= kMaxFusedK, "a sorted segment must hold a whole top-k");

template <typename T, bool Largest>
__device__ __forceinline__ bool better(T av, int64_t ai, T bv, int64_t bi) {
  if (av != bv) {
    return Largest ? av > bv : av < bv;
  }
  return ai < bi;
}

template <typename T, bool Largest>
__global__ void __launch_bounds__(kSelectThreads)
    topk_merge_kernel(const T* __restrict__ scores, int64_t cols, int64_t ld, int64_t offset,
                      int64_t k, T* __restrict__ best_values, int64_t* __restrict__ best_indices) {
  __shared__ T seg_v[kSegment];
  __shared__ int64_t seg_i[kSegment];
  __shared__ T run_v[kMaxFusedK];
  __shared__ int64_t run_i[kMaxFusedK];
  const T worst_value = Largest ? -positive_infinity<T>() : positive_infinity<T>();
  const int tid = threadIdx.x;
  const int64_t row = blockIdx.x;
  const T* s = scores + row * ld;
  T* out_v = best_values + row * k;
  int64_t* out_i = best_indices + row * k;

  for (int64_t i = tid; i < k; i += kSelectThreads) {
    run_v[i] = out_v[i];
    run_i[i] = out_i[i];
  }
  __syncthreads();

  for (int64_t base = 0; base < cols; base += kSegment) {
    const T threshold = run_v[k - 1];
    bool hit = false;
    for (int p = tid; p < kSegment; p += kSelectThreads) {
      const int64_t j = base + p;
      T v = worst_value;
      int64_t idx = kNoIndex;
      if (j < cols) {
        v = s[j];
        idx = offset + j;
        // Candidates come after every running entry, so they must be strictly better.
        hit |= Largest ? v > threshold : v < threshold;
      }
      seg_v[p] = v;
      seg_i[p] = idx;
    }
    if (!__syncthreads_or(hit)) {
      continue;
    }

    // Bitonic sort of the segment, best first.
    for (int size = 2; size <= kSegment; size <<= 1) {
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        for (int t = tid; t < kSegment / 2; t += kSelectThreads) {
          const int lo = 2 * t - (t & (stride - 1));
          const int hi = lo + stride;
          const bool forward = (lo & size) == 0;
          const bool hi_better = better<T, Largest>(seg_v[hi], seg_i[hi], seg_v[lo], seg_i[lo]);
          if (hi_better == forward) {
            const T tv = seg_v[lo];
            const int64_t ti = seg_i[lo];
            seg_v[lo] = seg_v[hi];
            seg_i[lo] = seg_i[hi];
            seg_v[hi] = tv;
            seg_i[hi] = ti;
          }
        }
        __syncthreads();
      }
    }

    // Merge the running list A (k) with the segment's head B (kb): an entry's rank is its own
    // position plus the number of entries of the other list ahead of it; on equal keys A goes
    // first. Entries ranked below k are written straight to the output.
    const int64_t kb = k < kSegment ? k : kSegment;
    for (int64_t i = tid; i < k; i += kSelectThreads) {
      const T v = run_v[i];
      const int64_t idx = run_i[i];
      int64_t lo = 0;
      int64_t hi = kb;  // first position in B not strictly better than A[i]
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (better<T, Largest>(seg_v[mid], seg_i[mid], v, idx)) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
      const int64_t rank = i + lo;
      if (rank < k) {
        out_v[rank] = v;
        out_i[rank] = idx;
      }
    }
    for (int64_t j = tid; j < kb; j += kSelectThreads) {
      const T v = seg_v[j];
      const int64_t idx = seg_i[j];
      int64_t lo = 0;
      int64_t hi = k;  // first position in A strictly worse than B[j]
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (!better<T, Largest>(v, idx, run_v[mid], run_i[mid])) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
      const int64_t rank = j + lo;
      if (rank < k) {
        out_v[rank] = v;
        out_i[rank] = idx;
      }
    }
    __syncthreads();
    for (int64_t i = tid; i < k; i += kSelectThreads) {
      run_v[i] = out_v[i];
      run_i[i] = out_i[i];
    }
    __syncthreads();
  }
}

template <typename T>
cudaError_t gemm_nt_impl(const T* a, const T* a_shift, const T* b, T* c, int64_t m, int64_t n,
                         int64_t kdim, int64_t lda, int64_t ldb, int64_t ldc, Epilogue epi,
                         const T* row_term, const T* col_term, cudaStream_t stream) {
  if (m == 0 || n == 0) {
    return cudaSuccess;
  }
  const int64_t grid_y = (m + kBlockM - 1) / kBlockM;
  if (grid_y > 65535) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>((n + kBlockN - 1) / kBlockN),
                  static_cast<unsigned>(grid_y));
  gemm_nt_kernel<T><<<grid, kGemmThreads, 0, stream>>>(a, a_shift, b, c, m, n, kdim, lda, ldb,
                                                        ldc, epi, row_term, col_term);
  return cudaGetLastError();
}

template <typename T>
cudaError_t row_norms_impl(const T* a, int64_t rows, int64_t cols, int64_t lda, bool inverse,
                           T* out, cudaStream_t stream) {
  if (rows == 0) {
    return cudaSuccess;
  }
  const int64_t rows_per_block = kNormThreads / kWarp;
  const auto blocks = static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block);
  row_norms_kernel<T><<<blocks, kNormThreads, 0, stream>>>(a, rows, cols, lda, inverse, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t topk_init_impl(T* values, int64_t* indices, int64_t count, bool largest,
                           cudaStream_t stream) {
  if (count == 0) {
    return cudaSuccess;
  }
  const auto blocks = static_cast<unsigned>((count + 255) / 256);
  topk_init_kernel<T><<<blocks, 256, 0, stream>>>(values, indices, count, largest);
  return cudaGetLastError();
}

template <typename T>
cudaError_t topk_merge_impl(const T* scores, int64_t rows, int64_t cols, int64_t ld,
                            int64_t offset, bool largest, int64_t k, T* best_values,
                            int64_t* best_indices, cudaStream_t stream) {
  if (k < 1 || k > kMaxFusedK) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0 || cols == 0) {
    return cudaSuccess;
  }
  const auto blocks = static_cast<unsigned>(rows);
  if (largest) {
    topk_merge_kernel<T, true><<<blocks, kSelectThreads, 0, stream>>>(
        scores, cols, ld, offset, k, best_values, best_indices);
  } else {
    topk_merge_kernel<T, false><<<blocks, kSelectThreads, 0, stream>>>(
        scores, cols, ld, offset, k, best_values, best_indices);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t gemm_nt(const float* a, const float* a_shift, const float* b, float* c, int64_t m,
                    int64_t n, int64_t kdim, int64_t lda, int64_t ldb, int64_t ldc, Epilogue epi,
                    const float* row_term, const float* col_term, cudaStream_t stream) {
  return gemm_nt_impl(a, a_shift, b, c, m, n, kdim, lda, ldb, ldc, epi, row_term, col_term,
                      stream);
}
cudaError_t gemm_nt(const double* a, const double* a_shift, const double* b, double* c, int64_t m,
                    int64_t n, int64_t kdim, int64_t lda, int64_t ldb, int64_t ldc, Epilogue epi,
                    const double* row_term, const double* col_term, cudaStream_t stream) {
  return gemm_nt_impl(a, a_shift, b, c, m, n, kdim, lda, ldb, ldc, epi, row_term, col_term,
                      stream);
}

cudaError_t row_norms(const float* a, int64_t rows, int64_t cols, int64_t lda, bool inverse,
                      float* out, cudaStream_t stream) {
  return row_norms_impl(a, rows, cols, lda, inverse, out, stream);
}
cudaError_t row_norms(const double* a, int64_t rows, int64_t cols, int64_t lda, bool inverse,
                      double* out, cudaStream_t stream) {
  return row_norms_impl(a, rows, cols, lda, inverse, out, stream);
}

cudaError_t topk_init(float* best_values, int64_t* best_indices, int64_t count, bool largest,
                      cudaStream_t stream) {
  return topk_init_impl(best_values, best_indices, count, largest, stream);
}
cudaError_t topk_init(double* best_values, int64_t* best_indices, int64_t count, bool largest,
                      cudaStream_t stream) {
  return topk_init_impl(best_values, best_indices, count, largest, stream);
}

cudaError_t topk_merge(const float* scores, int64_t rows, int64_t cols, int64_t ld, int64_t offset,
                       bool largest, int64_t k, float* best_values, int64_t* best_indices,
                       cudaStream_t stream) {
  return topk_merge_impl(scores, rows, cols, ld, offset, largest, k, best_values, best_indices,
                         stream);
}
cudaError_t topk_merge(const double* scores, int64_t rows, int64_t cols, int64_t ld,
                       int64_t offset, bool largest, int64_t k, double* best_values,
                       int64_t* best_indices, cudaStream_t stream) {
  return topk_merge_impl(scores, rows, cols, ld, offset, largest, k, best_values, best_indices,
                         stream);
}

}  // namespace ood_zoo::cuda
