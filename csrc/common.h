// Argument checks and dtype rules shared by the CPU and CUDA implementations of the ood_zoo ops.
// Light on purpose: only ATen/core headers, so that every kernel TU stays cheap to compile.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

// Hot CPU loops get AVX-512 (x86-64-v4) and AVX2/FMA (x86-64-v3) clones beside the baseline,
// picked at load time.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define OOD_ZOO_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OOD_ZOO_CLONES
#endif

namespace ood_zoo {

//! Smallest norm treated as non-zero when normalising for cosine similarity (as in
//! ood_zoo/ops/streaming.py).
constexpr double kNormEps = 1e-12;

//! Largest squared row norm the kernels take, per compute type T: the square of MAX_NORM in
//! ood_zoo/ops/magnitude.py (2^62 for float, 2^510 for double). Below it every squared norm, dot
//! product and |q|^2 + |b|^2 - 2 q.b of T is finite; ood_zoo.ops rescales inputs beyond it.
template <typename T>
constexpr double kMaxNormSq = std::is_same_v<T, double> ? 0x1p1020 : 0x1p124;

//! Where a row's squared norm (accumulated in double) stands: inside the safe range, holding
//! NaN or Inf, or finite but beyond kMaxNormSq<T> (a double sum of squares may overflow to Inf).
enum class RowRange { kOk, kNotFinite, kTooLarge };

template <typename T, typename V>
RowRange row_range(double squared_norm, const V* row, int64_t n) {
  if (squared_norm <= kMaxNormSq<T>) {
    return RowRange::kOk;
  }
  for (int64_t j = 0; j < n; ++j) {
    if (!std::isfinite(static_cast<double>(row[j]))) {
      return RowRange::kNotFinite;
    }
  }
  return RowRange::kTooLarge;
}

//! The message Python's ood_zoo.ops matches ("is outside the safe range") to rescale the call.
constexpr const char* kOutOfRange =
    " is outside the safe range (squared norm above 2^124 for float32, 2^1020 for float64); "
    "ood_zoo.ops rescales such inputs";

//! Accumulation dtype: float64 stays float64, every other floating dtype computes in float32.
inline at::ScalarType compute_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_feature_matrix(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be a 2-D matrix, got a ", t.dim(),
              "-D tensor of shape ", t.sizes());
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
                  dtype == at::kHalf,
              op, ": ", name, " must be float32, float64, bfloat16 or float16, got ", dtype);
}

//! Returns true for "cosine" (rank by largest similarity), false for "l2" (smallest distance).
inline bool metric_is_cosine(c10::string_view metric) {
  TORCH_CHECK(metric == "cosine" || metric == "l2",
              "knn: metric must be 'cosine' or 'l2', got '", metric, "'");
  return metric == "cosine";
}

inline void check_knn_args(const at::Tensor& queries, const at::Tensor& bank, int64_t k,
                           int64_t tile_rows) {
  check_feature_matrix(queries, "knn", "queries");
  check_feature_matrix(bank, "knn", "bank");
  TORCH_CHECK(queries.device() == bank.device(), "knn: queries are on ", queries.device(),
              " but the bank is on ", bank.device());
  TORCH_CHECK(queries.size(1) == bank.size(1), "knn: queries have ", queries.size(1),
              " features but the bank has ", bank.size(1));
  TORCH_CHECK(k >= 1 && k <= bank.size(0), "knn: k must be in [1, N] for a bank of N=",
              bank.size(0), " rows, got k=", k);
  TORCH_CHECK(tile_rows >= 1, "knn: tile_rows must be positive, got ", tile_rows);
}

inline void check_mahalanobis_args(const at::Tensor& queries, const at::Tensor& whitening,
                                   const at::Tensor& class_means, const at::Tensor& center,
                                   int64_t tile_rows) {
  check_feature_matrix(queries, "mahalanobis", "queries");
  check_feature_matrix(whitening, "mahalanobis", "whitening");
  check_feature_matrix(class_means, "mahalanobis", "class_means");
  const int64_t d = queries.size(1);
  TORCH_CHECK(whitening.size(0) == d, "mahalanobis: queries have ", d,
              " features but whitening has shape ", whitening.sizes(), " (expected [", d,
              ", r])");
  TORCH_CHECK(class_means.size(1) == d && class_means.size(0) >= 1, "mahalanobis: queries have ",
              d, " features but class_means has shape ", class_means.sizes(),
              " (expected [C >= 1, ", d, "])");
  TORCH_CHECK(center.dim() == 1 && center.size(0) == d, "mahalanobis: center must have shape [",
              d, "], got ", center.sizes());
  TORCH_CHECK(center.is_floating_point(), "mahalanobis: center must be floating point, got ",
              center.scalar_type());
  for (const at::Tensor* t : {&whitening, &class_means, &center}) {
    TORCH_CHECK(t->device() == queries.device(), "mahalanobis: queries are on ",
                queries.device(), " but an operand is on ", t->device());
  }
  TORCH_CHECK(tile_rows >= 1, "mahalanobis: tile_rows must be positive, got ", tile_rows);
}

}  // namespace ood_zoo
