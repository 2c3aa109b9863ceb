// Launchers of the ood_zoo CUDA kernels. Plain CUDA with raw pointers and a stream, no torch
// headers, so knn_cuda.cu and mahalanobis_cuda.cu compile standalone with nvcc in about a second;
// ops_cuda.cpp is the torch glue. Every matrix is row-major with the given leading dimension, and
// every launcher returns the launch status (cudaGetLastError).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace ood_zoo::cuda {

//! Largest k served by the fused top-k kernel; the glue falls back to torch ops above it.
constexpr int64_t kMaxFusedK = 1024;

//! How gemm_nt turns an accumulated dot product s_ij into its output.
enum class Epilogue : int {
  kPlain = 0,         //!< s
  kCosine = 1,        //!< s * row_term[i] * col_term[j]          (inverse norms)
  kSqDist = 2,        //!< row_term[i] + col_term[j] - 2 s         (squared norms)
  kSqDistClamped = 3  //!< max(0, row_term[i] + col_term[j] - 2 s)
};

//! C[i, j] = epilogue(sum_k (A[i, k] - a_shift[k]) * B[j, k]) for i < m, j < n (a_shift may be
//! null). Shared-memory tiled SIMT FMAs (64 x 64 tiles), accumulating in the element type, so
//! fp32 and fp64 stay exact to their own rounding; 16-bit operands go to gemm_nt_tc instead.
cudaError_t gemm_nt(const float* a, const float* a_shift, const float* b, float* c, int64_t m,
                    int64_t n, int64_t kdim, int64_t lda, int64_t ldb, int64_t ldc, Epilogue epi,
                    const float* row_term, const float* col_term, cudaStream_t stream);
cudaError_t gemm_nt(const double* a, const double* a_shift, const double* b, double* c, int64_t m,
                    int64_t n, int64_t kdim, int64_t lda, int64_t ldb, int64_t ldc, Epilogue epi,
                    const double* row_term, const double* col_term, cudaStream_t stream);

//! Which 16-bit floating format a `const uint16_t*` operand holds (raw bits, so that the torch
//! glue needs no cuda_bf16.h / cuda_fp16.h).
enum class HalfKind : int { kBFloat16 = 0, kFloat16 = 1 };

//! As gemm_nt (no shift) for 16-bit A and B of the same kind, on the tensor cores with fp32
//! accumulation and an fp32 C, row_term and col_term (gemm_tc.cu: 128 x 128 WMMA tiles).
cudaError_t gemm_nt_tc(const uint16_t* a, const uint16_t* b, float* c, int64_t m, int64_t n,
                       int64_t kdim, int64_t lda, int64_t ldb, int64_t ldc, HalfKind kind,
                       Epilogue epi, const float* row_term, const float* col_term,
                       cudaStream_t stream);

//! Whether the current device runs gemm_nt_tc (compute capability 8.0 or newer).
bool gemm_tc_supported();

//! row_norms of a 16-bit matrix (accumulated in double), written as fp32.
cudaError_t row_norms_16(const uint16_t* a, int64_t rows, int64_t cols, int64_t lda,
                         HalfKind kind, bool inverse, float* out, cudaStream_t stream);

//! out[i] = |A[i, :]|^2, or 1 / max(|A[i, :]|, 1e-12) when `inverse`.
cudaError_t row_norms(const float* a, int64_t rows, int64_t cols, int64_t lda, bool inverse,
                      float* out, cudaStream_t stream);
cudaError_t row_norms(const double* a, int64_t rows, int64_t cols, int64_t lda, bool inverse,
                      double* out, cudaStream_t stream);

//! Fill `count` running top-k slots with the worst possible entry (-inf or +inf, index INT64_MAX).
cudaError_t topk_init(float* best_values, int64_t* best_indices, int64_t count, bool largest,
                      cudaStream_t stream);
cudaError_t topk_init(double* best_values, int64_t* best_indices, int64_t count, bool largest,
                      cudaStream_t stream);

//! Merge the scores of one tile (rows x cols, bank offset `offset`) into each row's running top-k
//! (best_values/best_indices: rows x k, sorted best first). Largest first when `largest`, else
//! smallest; ties go to the lower index. Requires 1 <= k <= kMaxFusedK and increasing offsets.
cudaError_t topk_merge(const float* scores, int64_t rows, int64_t cols, int64_t ld, int64_t offset,
                       bool largest, int64_t k, float* best_values, int64_t* best_indices,
                       cudaStream_t stream);
cudaError_t topk_merge(const double* scores, int64_t rows, int64_t cols, int64_t ld,
                       int64_t offset, bool largest, int64_t k, double* best_values,
                       int64_t* best_indices, cudaStream_t stream);

//! min_out[i] = max(0, min_j D[i, j]) and arg_out[i] = the first j attaining it.
cudaError_t row_argmin(const float* d, int64_t rows, int64_t cols, int64_t ld, float* min_out,
                       int64_t* arg_out, cudaStream_t stream);
cudaError_t row_argmin(const double* d, int64_t rows, int64_t cols, int64_t ld, double* min_out,
                       int64_t* arg_out, cudaStream_t stream);

}  // namespace ood_zoo::cuda
