// Schema and dispatch of ood_zoo::knn.
//
// knn(queries [Q, d], bank [N, d], k, metric, tile_rows) -> (values [Q, k], indices [Q, k])
//
// Exact brute-force k nearest neighbours (as used by the deep-kNN OOD score of Sun et al.,
// ICML 2022). metric="cosine": values are cosine similarities <q, b> / (|q| |b|), descending, with
// a zero vector at similarity 0; metric="l2": Euclidean distances |q - b|, ascending. The bank is
// processed tile_rows rows at a time, so the [Q, N] matrix never exists. Inputs may be float32,
// float64, bfloat16 or float16; values are float64 for float64 queries and float32 otherwise.
// Indices are int64 rows of the bank; equal values rank by the lower index. The CPU kernel raises
// "knn: bank row <i> is not finite" for a bank row holding NaN or Inf, and "... is outside the
// safe range" for one whose squared norm exceeds kMaxNormSq (common.h), both checked in its norm
// pass (query rows likewise); ood_zoo.ops.knn rescales such inputs by powers of two. l2 queries
// of tiny nonzero norm (below 2^-50 in float32) lose accuracy to underflow: ood_zoo.ops.knn
// rescales those too, the op does not check them.
//
// knn_bf16_update (csrc/cpu/knn_bf16_cpu.cpp) is the bf16-GEMM, exact-re-rank variant used by
// ops.knn(precision="bf16"): it updates caller-owned top-k heaps chunk by chunk.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops.h"

namespace ood_zoo {

std::tuple<at::Tensor, at::Tensor> knn(const at::Tensor& queries, const at::Tensor& bank,
                                       int64_t k, c10::string_view metric, int64_t tile_rows) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ood_zoo::knn", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, int64_t, c10::string_view,
                           int64_t)>();
  return op.call(queries, bank, k, metric, tile_rows);
}

}  // namespace ood_zoo

TORCH_LIBRARY_FRAGMENT(ood_zoo, m) {
  m.def(
      "knn(Tensor queries, Tensor bank, int k, str metric, int tile_rows) "
      "-> (Tensor values, Tensor indices)");
}
