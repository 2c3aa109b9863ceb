// Schema and dispatch of ood_zoo::mahalanobis.
//
// mahalanobis(queries [Q, d], whitening W [d, r], class_means [C, d], center m [d], tile_rows)
//   -> (min_d2 [Q], argmin [Q])
//
// With the precision matrix factored as P = W W^T (Lee et al., NeurIPS 2018, use a shared
// covariance), the squared distance of x to class c is
//   d2_c(x) = |z|^2 + |n_c|^2 - 2 z . n_c,   z = (x - m) W,   n_c = (mu_c - m) W,
// one whitening GEMM and one class GEMM per tile of tile_rows queries. min_d2 = max(0, min_c d2_c)
// and argmin is the first class attaining the minimum. Values are float64 for float64 queries and
// float32 otherwise.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops.h"

namespace ood_zoo {

std::tuple<at::Tensor, at::Tensor> mahalanobis(const at::Tensor& queries,
                                               const at::Tensor& whitening,
                                               const at::Tensor& class_means,
                                               const at::Tensor& center, int64_t tile_rows) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ood_zoo::mahalanobis", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, int64_t)>();
  return op.call(queries, whitening, class_means, center, tile_rows);
}

}  // namespace ood_zoo

TORCH_LIBRARY_FRAGMENT(ood_zoo, m) {
  m.def(
      "mahalanobis(Tensor queries, Tensor whitening, Tensor class_means, Tensor center, "
      "int tile_rows) -> (Tensor min_d2, Tensor argmin)");
}
