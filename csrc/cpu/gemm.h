// The fp32 GEMM behind the CPU kNN kernels' tiles: C[m, n] = A[m, k] · B[n, k]ᵀ, row-major, with
// leading dimensions lda, ldb, ldc (elements). Every CPU kernel that multiplies tiles calls this,
// so the provider is chosen in one place (gemm.cpp).
#pragma once

#include <cstdint>

namespace ood_zoo {

void gemm_nt(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
             int64_t m, int64_t n, int64_t k);

}  // namespace ood_zoo
