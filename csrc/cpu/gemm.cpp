// Provider of ood_zoo::gemm_nt (gemm.h): ATen's mm (MKL or oneDNN, whichever torch dispatches to).
#include "gemm.h"

#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

namespace ood_zoo {

void gemm_nt(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
             int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0) {
    return;
  }
  const auto options = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor ta = at::from_blob(const_cast<float*>(a), {m, k}, {lda, 1}, options);
  const at::Tensor tb = at::from_blob(const_cast<float*>(b), {n, k}, {ldb, 1}, options);
  at::Tensor tc = at::from_blob(c, {m, n}, {ldc, 1}, options);
  at::mm_out(tc, ta, tb.t());
}

}  // namespace ood_zoo
