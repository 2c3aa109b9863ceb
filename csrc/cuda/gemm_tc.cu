// Tensor-core tile GEMM of ood_zoo::knn for 16-bit banks (launched from ops_cuda.cpp):
//
//   C[i, j] = epilogue(sum_k A[i, k] * B[j, k])     A: [m, kdim], B: [n, kdim], both bf16 or fp16
//
// Arithmetic: WMMA 16x16x16 fragments (mma.sync on sm_80+), 16-bit inputs, fp32 accumulation.
// A product of two bf16 (8-bit significand) or two fp16 (11-bit) values is exact in fp32, so the
// only rounding is that of the fp32 sums, as in an fp32 GEMM of the upcast inputs.
//
// Tiling: a block of 256 threads (8 warps, 2 x 4) computes a 128 x 128 tile of C; each warp owns
// 64 x 32 of it (4 x 2 accumulator fragments). The k loop walks 32 columns at a time: the next
// 128 x 32 slices of A and B are fetched into registers (16-byte loads when rows are 16-byte
// aligned, bounds-checked scalar loads otherwise, zero outside the matrices) while the tensor
// cores consume the current slices from shared memory (rows padded by 8 elements against bank
// conflicts). The epilogue goes through a 16 x 16 fp32 staging tile per warp, applies the
// Epilogue of kernels.h (cosine scaling or squared distance) and writes the in-range entries.
// The fused top-k (topk_merge in knn_cuda.cu) then reads the tile, so the [Q, N] matrix never
// exists.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "kernels.h"

namespace ood_zoo::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kTcBlockM = 128;
constexpr int kTcBlockN = 128;
constexpr int kTcBlockK = 32;
constexpr int kTcPad = 8;                      // elements; keeps 32-byte fragment alignment
constexpr int kTcLd = kTcBlockK + kTcPad;      // 40 elements = 80 bytes per shared row
constexpr int kTcWarpsM = 2;
constexpr int kTcWarpsN = 4;
constexpr int kTcThreads = 32 * kTcWarpsM * kTcWarpsN;  // 256
constexpr int kTcWarpM = kTcBlockM / kTcWarpsM;         // 64
constexpr int kTcWarpN = kTcBlockN / kTcWarpsN;         // 32
constexpr int kFrag = 16;
constexpr int kFragsM = kTcWarpM / kFrag;  // 4
constexpr int kFragsN = kTcWarpN / kFrag;  // 2
constexpr int kVec = 8;                    // 16-bit elements per 16-byte load
// 16-byte chunks per operand slice, and per thread.
constexpr int kChunks = kTcBlockM * kTcBlockK / kVec;  // 512
constexpr int kChunksPerThread = kChunks / kTcThreads;  // 2
static_assert(kTcBlockM == kTcBlockN, "A and B slices share one loader");
static_assert(kChunks % kTcThreads == 0, "every thread loads whole chunks");

// Rows [row0, row0 + 128) x columns [k0, k0 + 32) of a 16-bit matrix, as the 16-byte chunks this
// thread owns; zero outside [0, rows) x [0, kdim).
template <bool Vec>
__device__ __forceinline__ void load_slice(const uint16_t* __restrict__ src, int64_t rows,
                                           int64_t kdim, int64_t ld, int64_t row0, int64_t k0,
                                           uint4 (&regs)[kChunksPerThread]) {
#pragma unroll
  for (int r = 0; r < kChunksPerThread; ++r) {
    const int e = threadIdx.x + r * kTcThreads;
    const int64_t row = row0 + e / (kTcBlockK / kVec);
    const int64_t col = k0 + (e % (kTcBlockK / kVec)) * kVec;
    if (row >= rows) {
      regs[r] = make_uint4(0, 0, 0, 0);
      continue;
    }
    const uint16_t* p = src + row * ld + col;
    if (Vec && col + kVec <= kdim) {
      regs[r] = *reinterpret_cast<const uint4*>(p);
    } else {
      alignas(16) uint16_t tmp[kVec];
#pragma unroll
      for (int t = 0; t < kVec; ++t) {
        tmp[t] = col + t < kdim ? p[t] : uint16_t(0);
      }
      regs[r] = *reinterpret_cast<const uint4*>(tmp);
    }
  }
}

template <typename T>
__device__ __forceinline__ void store_slice(T (*dst)[kTcLd], const uint4 (&regs)[kChunksPerThread]) {
#pragma unroll
  for (int r = 0; r < kChunksPerThread; ++r) {
    const int e = threadIdx.x + r * kTcThreads;
    *reinterpret_cast<uint4*>(&dst[e / (kTcBlockK / kVec)][(e % (kTcBlockK / kVec)) * kVec]) =
        regs[r];
  }
}

template <typename T, bool Vec>
__global__ void __launch_bounds__(kTcThreads)
    gemm_nt_tc_kernel(const uint16_t* __restrict__ a, const uint16_t* __restrict__ b,
                      float* __restrict__ c, int64_t m, int64_t n, int64_t kdim, int64_t lda,
                      int64_t ldb, int64_t ldc, Epilogue epi, const float* __restrict__ row_term,
                      const float* __restrict__ col_term) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16 WMMA needs sm_80+; the glue never launches this there (gemm_tc_supported)
#else
  __shared__ __align__(128) T as[kTcBlockM][kTcLd];
  __shared__ __align__(128) T bs[kTcBlockN][kTcLd];
  __shared__ __align__(128) float stage[kTcWarpsM * kTcWarpsN][kFrag * kFrag];

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int warp_m = warp / kTcWarpsN;
  const int warp_n = warp % kTcWarpsN;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTcBlockM;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kTcBlockN;

  wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float> acc[kFragsM][kFragsN];
#pragma unroll
  for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
    for (int j = 0; j < kFragsN; ++j) {
      wmma::fill_fragment(acc[i][j], 0.0f);
    }
  }

  uint4 a_regs[kChunksPerThread];
  uint4 b_regs[kChunksPerThread];
  load_slice<Vec>(a, m, kdim, lda, row0, 0, a_regs);
  load_slice<Vec>(b, n, kdim, ldb, col0, 0, b_regs);
  for (int64_t k0 = 0; k0 < kdim; k0 += kTcBlockK) {
    store_slice(as, a_regs);
    store_slice(bs, b_regs);
    __syncthreads();
    if (k0 + kTcBlockK < kdim) {  // fetch the next slices while this one is multiplied
      load_slice<Vec>(a, m, kdim, lda, row0, k0 + kTcBlockK, a_regs);
      load_slice<Vec>(b, n, kdim, ldb, col0, k0 + kTcBlockK, b_regs);
    }
#pragma unroll
    for (int kk = 0; kk < kTcBlockK; kk += kFrag) {
      wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, T, wmma::row_major> fa[kFragsM];
      // B is [n, k] row-major, i.e. B^T [k, n] column-major.
      wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, T, wmma::col_major> fb[kFragsN];
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
        wmma::load_matrix_sync(fa[i], &as[warp_m * kTcWarpM + i * kFrag][kk], kTcLd);
      }
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) {
        wmma::load_matrix_sync(fb[j], &bs[warp_n * kTcWarpN + j * kFrag][kk], kTcLd);
      }
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) {
          wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
      }
    }
    __syncthreads();
  }

  // Epilogue: each lane finishes 8 consecutive entries of one row of a 16 x 16 fragment.
  float* st = stage[warp];
  const int r = lane / 2;
  const int c_base = (lane % 2) * 8;
#pragma unroll
  for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
    for (int j = 0; j < kFragsN; ++j) {
      wmma::store_matrix_sync(st, acc[i][j], kFrag, wmma::mem_row_major);
      __syncwarp();
      const int64_t gi = row0 + warp_m * kTcWarpM + i * kFrag + r;
      const int64_t gj0 = col0 + warp_n * kTcWarpN + j * kFrag + c_base;
      if (gi < m) {
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          const int64_t gj = gj0 + t;
          if (gj < n) {
            float v = st[r * kFrag + c_base + t];
            switch (epi) {
              case Epilogue::kCosine:
                v = v * row_term[gi] * col_term[gj];
                break;
              case Epilogue::kSqDist:
                v = row_term[gi] + col_term[gj] - 2.0f * v;
                break;
              case Epilogue::kSqDistClamped:
                v = fmaxf(row_term[gi] + col_term[gj] - 2.0f * v, 0.0f);
                break;
              default:
                break;
            }
            c[gi * ldc + gj] = v;
          }
        }
      }
      __syncwarp();
    }
  }
#endif
}

template <typename T>
cudaError_t launch_tc(const uint16_t* a, const uint16_t* b, float* c, int64_t m, int64_t n,
                      int64_t kdim, int64_t lda, int64_t ldb, int64_t ldc, Epilogue epi,
                      const float* row_term, const float* col_term, cudaStream_t stream) {
  const int64_t grid_y = (m + kTcBlockM - 1) / kTcBlockM;
  if (grid_y > 65535) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>((n + kTcBlockN - 1) / kTcBlockN),
                  static_cast<unsigned>(grid_y));
  const bool vec = lda % kVec == 0 && ldb % kVec == 0 &&
                   reinterpret_cast<uintptr_t>(a) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(b) % 16 == 0;
  if (vec) {
    gemm_nt_tc_kernel<T, true><<<grid, kTcThreads, 0, stream>>>(a, b, c, m, n, kdim, lda, ldb,
                                                                 ldc, epi, row_term, col_term);
  } else {
    gemm_nt_tc_kernel<T, false><<<grid, kTcThreads, 0, stream>>>(a, b, c, m, n, kdim, lda, ldb,
                                                                  ldc, epi, row_term, col_term);
  }
  return cudaGetLastError();
}

constexpr int kNormThreads = 256;

// One warp per row of a 16-bit matrix, accumulating in double (as row_norms does).
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    row_norms_16_kernel(const uint16_t* __restrict__ a, int64_t rows, int64_t cols, int64_t lda,
                        bool inverse, float* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kNormThreads / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) {
    return;
  }
  const T* r = reinterpret_cast<const T*>(a + row * lda);
  double acc = 0.0;
  for (int64_t j = lane; j < cols; j += 32) {
    const double v = static_cast<double>(static_cast<float>(r[j]));
    acc = fma(v, v, acc);
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    acc += __shfl_down_sync(0xffffffffu, acc, off);
  }
  if (lane == 0) {
    out[row] = inverse ? static_cast<float>(1.0 / max(sqrt(acc), 1e-12)) : static_cast<float>(acc);
  }
}

}  // namespace

bool gemm_tc_supported() {
  int device = 0;
  int major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    cudaGetLastError();  // clear it; the SIMT path will report a real problem
    return false;
  }
  return major >= 8;
}

cudaError_t gemm_nt_tc(const uint16_t* a, const uint16_t* b, float* c, int64_t m, int64_t n,
                       int64_t kdim, int64_t lda, int64_t ldb, int64_t ldc, HalfKind kind,
                       Epilogue epi, const float* row_term, const float* col_term,
                       cudaStream_t stream) {
  if (m == 0 || n == 0) {
    return cudaSuccess;
  }
  if (kind == HalfKind::kBFloat16) {
    return launch_tc<__nv_bfloat16>(a, b, c, m, n, kdim, lda, ldb, ldc, epi, row_term, col_term,
                                    stream);
  }
  return launch_tc<__half>(a, b, c, m, n, kdim, lda, ldb, ldc, epi, row_term, col_term, stream);
}

cudaError_t row_norms_16(const uint16_t* a, int64_t rows, int64_t cols, int64_t lda,
                         HalfKind kind, bool inverse, float* out, cudaStream_t stream) {
  if (rows == 0) {
    return cudaSuccess;
  }
  const int64_t rows_per_block = kNormThreads / 32;
  const auto blocks = static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block);
  if (kind == HalfKind::kBFloat16) {
    row_norms_16_kernel<__nv_bfloat16><<<blocks, kNormThreads, 0, stream>>>(a, rows, cols, lda,
                                                                            inverse, out);
  } else {
    row_norms_16_kernel<__half><<<blocks, kNormThreads, 0, stream>>>(a, rows, cols, lda, inverse,
                                                                     out);
  }
  return cudaGetLastError();
}

}  // namespace ood_zoo::cuda
