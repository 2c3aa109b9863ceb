// CPU kernel of ood_zoo::mahalanobis, tiled over the queries (Lee et al., NeurIPS 2018):
//   z = (x - m) W  and  G = z N^T  per tile (fp32: ood_zoo::gemm_nt of gemm.h, with W^T packed
//   once; fp64: ATen mm), with N = (mu - m) W computed once;
//   then, fused per row, d2_c = |z|^2 + |n_c|^2 - 2 G_c, its minimum (first index on ties),
//   clamped at 0. Only a [tile_rows, max(r, C)] block exists at any time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common.h"
#include "gemm.h"

namespace ood_zoo {
namespace {

template <typename T>
void mahalanobis_kernel(const at::Tensor& queries, const at::Tensor& w, const at::Tensor& mu,
                        const at::Tensor& m, int64_t tile_rows, at::Tensor& min_d2,
                        at::Tensor& argmin) {
  const int64_t nq = queries.size(0);
  const int64_t n_classes = mu.size(0);
  const int64_t r = w.size(1);
  const at::ScalarType dtype = w.scalar_type();

  const at::Tensor means_white = mu.sub(m).mm(w).contiguous();  // [C, r]
  std::vector<T> means_sq(static_cast<size_t>(n_classes));
  const T* nw = means_white.const_data_ptr<T>();
  for (int64_t c = 0; c < n_classes; ++c) {
    T acc = 0;
    for (int64_t j = 0; j < r; ++j) {
      acc += nw[c * r + j] * nw[c * r + j];
    }
    means_sq[c] = acc;
  }
  const at::Tensor means_white_t = means_white.t();
  const at::Tensor w_t = std::is_same_v<T, float> ? w.t().contiguous() : w;  // [r, d] for gemm_nt

  T* out_d2 = min_d2.data_ptr<T>();
  int64_t* out_arg = argmin.data_ptr<int64_t>();
  for (int64_t start = 0; start < nq; start += tile_rows) {
    const int64_t n = std::min(tile_rows, nq - start);
    const at::Tensor x = queries.narrow(0, start, n).to(dtype).sub(m).contiguous();
    at::Tensor z, g;  // [n, r], [n, C]
    if constexpr (std::is_same_v<T, float>) {
      z = at::empty({n, r}, x.options());
      g = at::empty({n, n_classes}, x.options());
      gemm_nt(x.const_data_ptr<float>(), x.size(1), w_t.const_data_ptr<float>(), w_t.size(1),
              z.data_ptr<float>(), r, n, r, x.size(1));
      gemm_nt(z.const_data_ptr<float>(), r, nw, r, g.data_ptr<float>(), n_classes, n, n_classes,
              r);
    } else {
      z = x.mm(w).contiguous();
      g = z.mm(means_white_t).contiguous();
    }
    const T* zp = z.const_data_ptr<T>();
    const T* gp = g.const_data_ptr<T>();
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(n_classes + r, 1));
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T zz = 0;
        for (int64_t j = 0; j < r; ++j) {
          zz += zp[i * r + j] * zp[i * r + j];
        }
        T best = zz + means_sq[0] - T(2) * gp[i * n_classes];
        int64_t best_c = 0;
        for (int64_t c = 1; c < n_classes; ++c) {
          const T v = zz + means_sq[c] - T(2) * gp[i * n_classes + c];
          if (v < best) {
            best = v;
            best_c = c;
          }
        }
        out_d2[start + i] = std::max(best, T(0));
        out_arg[start + i] = best_c;
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor> mahalanobis_cpu(const at::Tensor& queries,
                                                   const at::Tensor& whitening,
                                                   const at::Tensor& class_means,
                                                   const at::Tensor& center, int64_t tile_rows) {
  check_mahalanobis_args(queries, whitening, class_means, center, tile_rows);
  const at::ScalarType dtype = compute_dtype(queries.scalar_type());
  const at::Tensor w = whitening.to(dtype).contiguous();
  const at::Tensor mu = class_means.to(dtype).contiguous();
  const at::Tensor m = center.to(dtype).contiguous();
  at::Tensor min_d2 = w.new_empty({queries.size(0)});
  at::Tensor argmin = w.new_empty({queries.size(0)}, w.options().dtype(at::kLong));
  if (dtype == at::kDouble) {
    mahalanobis_kernel<double>(queries, w, mu, m, tile_rows, min_d2, argmin);
  } else {
    mahalanobis_kernel<float>(queries, w, mu, m, tile_rows, min_d2, argmin);
  }
  return {min_d2, argmin};
}

}  // namespace
}  // namespace ood_zoo

TORCH_LIBRARY_IMPL(ood_zoo, CPU, m) { m.impl("mahalanobis", &ood_zoo::mahalanobis_cpu); }
