// CPU kernel of ood_zoo::knn: a GEMM per bank tile fused with a running top-k per query, so that
// only a [Q, tile_rows] block of similarities exists at any time. fp32 tiles go through
// ood_zoo::gemm_nt (gemm.h: ATen, oneDNN or OpenBLAS, chosen by measurement); fp64 uses ATen mm.
//
// Per tile, the epilogue turns the raw dot products s = <q, b> into ranking values on the fly:
//   cosine: s * (1 / max(|b|, eps)) with the queries normalised beforehand;
//   l2:     max(0, |q|^2 + |b|^2 - 2 s), square-rooted only for the k survivors.
// Each query keeps a bounded heap of its k best candidates (worst at the root). Candidates arrive
// in increasing bank order, so once the heap is full a candidate enters only if its value is
// strictly better than the root's: one comparison per element on the common path.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common.h"
#include "gemm.h"
#include "row_ops.h"
#include "topk_heap.h"

namespace ood_zoo {
namespace {

// Candidates are screened a block at a time: one vectorised best-of-block against the heap's
// worst entry skips most blocks. The block helpers evaluate exactly the per-element expressions
// of knn_kernel (a lone product; a sum whose -2 s term is exact), so screening never changes
// which candidate enters.
constexpr int64_t kScreenBlock = 64;

template <typename T>
OOD_ZOO_CLONES T block_max_scaled(const T* s, const T* scale, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) {
    m = std::max(m, s[j] * scale[j]);
  }
  return m;
}

template <typename T>
OOD_ZOO_CLONES T block_min_l2(const T* s, const T* bb, T qq, int64_t n) {
  T m = std::numeric_limits<T>::infinity();
#pragma omp simd reduction(min : m)
  for (int64_t j = 0; j < n; ++j) {
    m = std::min(m, std::max(qq + bb[j] - T(2) * s[j], T(0)));
  }
  return m;
}

// Offer candidates offset + j (j < n, value score(j)) to one query's heap holding `filled` entries;
// block_best(j, len) is the best score(j .. j + len - 1).
template <typename T, bool Largest, typename Score, typename BlockBest>
inline void offer_tile(const Score& score, const BlockBest& block_best, int64_t n, int64_t offset,
                       T* hv, int64_t* hi, int64_t k, int64_t filled) {
  int64_t j = 0;
  for (; j < n && filled < k; ++j, ++filled) {
    heap_push<T, Largest>(hv, hi, filled, score(j), offset + j);
  }
  if (j == n) {
    return;
  }
  T worst = hv[0];
  while (j < n) {
    const int64_t end = std::min(n, j + kScreenBlock);
    const T best = block_best(j, end - j);
    // A later candidate never wins a tie, so a strict comparison decides entry.
    if (!(Largest ? best > worst : best < worst)) {
      j = end;
      continue;
    }
    for (; j < end; ++j) {
      const T v = score(j);
      if (Largest ? v > worst : v < worst) {
        heap_replace_root<T, Largest>(hv, hi, k, v, offset + j);
        worst = hv[0];
      }
    }
  }
}

// out[i] = |row i|^2 (accumulated in double), or 1 / max(|row i|, eps) when `inverse`. Returns the
// first row that holds NaN or Inf and the first whose norm is beyond the safe range (kMaxNormSq),
// or -1: the bank's finiteness and range checks come for free here instead of costing
// ops/dense.py a separate pass over the bank.
struct BadRows {
  int64_t not_finite = -1;
  int64_t too_large = -1;
};

template <typename T>
BadRows row_norms(const T* a, int64_t rows, int64_t cols, bool inverse, T* out) {
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::atomic<int64_t> first_bad[2] = {kNone, kNone};
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t r = begin; r < end; ++r) {
                       const double acc = sum_sq<T>(a + r * cols, cols);
                       const RowRange range = row_range<T>(acc, a + r * cols, cols);
                       if (range != RowRange::kOk) {
                         std::atomic<int64_t>& slot = first_bad[range == RowRange::kTooLarge];
                         int64_t seen = slot.load();
                         while (r < seen && !slot.compare_exchange_weak(seen, r)) {
                         }
                       }
                       out[r] = inverse ? static_cast<T>(1.0 / std::max(std::sqrt(acc), kNormEps))
                                        : static_cast<T>(acc);
                     }
                   });
  const int64_t not_finite = first_bad[0].load(), too_large = first_bad[1].load();
  return {not_finite == kNone ? -1 : not_finite, too_large == kNone ? -1 : too_large};
}

// Bank rows per fp32 GEMM call; OOD_ZOO_KNN_GEMM_COLS overrides it (read per call, for
// benchmarking).
int64_t knn_gemm_cols() {
  const char* v = std::getenv("OOD_ZOO_KNN_GEMM_COLS");
  const long long parsed = v == nullptr ? 0 : std::atoll(v);
  return parsed > 0 ? static_cast<int64_t>(parsed) : int64_t{2048};
}

template <typename T, bool Largest>
void knn_kernel(const at::Tensor& queries, const at::Tensor& bank, int64_t k, int64_t tile_rows,
                at::Tensor& values, at::Tensor& indices) {
  const int64_t nq = queries.size(0);
  const int64_t d = queries.size(1);
  const int64_t n_bank = bank.size(0);
  const int64_t tile = std::min(tile_rows, n_bank);

  // Cosine: normalise the queries once. L2: keep |q|^2 for the expanded form.
  at::Tensor q = queries.contiguous();
  std::vector<T> q_term(static_cast<size_t>(nq));
  const BadRows bad_q = row_norms<T>(q.const_data_ptr<T>(), nq, d, /*inverse=*/Largest,
                                     q_term.data());
  TORCH_CHECK(bad_q.not_finite < 0, "knn: query row ", bad_q.not_finite,
              " is not finite (NaN or Inf)");
  TORCH_CHECK(bad_q.too_large < 0, "knn: query row ", bad_q.too_large, kOutOfRange);
  if (Largest) {
    q = q.clone();
    T* qp = q.data_ptr<T>();
    at::parallel_for(0, nq, std::max<int64_t>(1, 32768 / std::max<int64_t>(d, 1)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t r = begin; r < end; ++r) {
                         for (int64_t c = 0; c < d; ++c) {
                           qp[r * d + c] *= q_term[r];
                         }
                       }
                     });
  }

  std::vector<T> heap_v(static_cast<size_t>(nq * k));
  std::vector<int64_t> heap_i(static_cast<size_t>(nq * k));
  std::vector<T> b_term(static_cast<size_t>(tile));
  // fp32: the tile's GEMM runs in column blocks of gemm_cols bank rows, each followed by its
  // epilogue, so the [nq, gemm_cols] block is still in cache when the top-k pass reads it.
  const int64_t gemm_cols = std::is_same_v<T, float> ? std::min(tile, knn_gemm_cols()) : tile;
  at::Tensor s_buf;
  if constexpr (std::is_same_v<T, float>) {
    s_buf = at::empty({nq, gemm_cols}, q.options());
  }

  for (int64_t start = 0; start < n_bank; start += tile) {
    const int64_t n_tile = std::min(tile, n_bank - start);
    const at::Tensor b = bank.narrow(0, start, n_tile).to(q.scalar_type()).contiguous();
    const BadRows bad = row_norms<T>(b.const_data_ptr<T>(), n_tile, d, /*inverse=*/Largest,
                                     b_term.data());
    TORCH_CHECK(bad.not_finite < 0, "knn: bank row ", start + bad.not_finite,
                " is not finite (NaN or Inf)");
    TORCH_CHECK(bad.too_large < 0, "knn: bank row ", start + bad.too_large, kOutOfRange);
    for (int64_t col = 0; col < n_tile; col += gemm_cols) {
      const int64_t n = std::min(gemm_cols, n_tile - col);
      at::Tensor s;  // [nq, n], row-major
      if constexpr (std::is_same_v<T, float>) {
        gemm_nt(q.const_data_ptr<float>(), d, b.const_data_ptr<float>() + col * d, d,
                s_buf.data_ptr<float>(), n, nq, n, d);
        s = s_buf;
      } else {
        s = q.mm(b.t());
      }
      const T* sp = s.const_data_ptr<T>();
      const T* bt = b_term.data() + col;
      const int64_t offset = start + col;
      const int64_t filled = std::min(k, offset);
      at::parallel_for(0, nq, std::max<int64_t>(1, 16384 / n), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const T* row = sp + r * n;
          T* hv = heap_v.data() + r * k;
          int64_t* hi = heap_i.data() + r * k;
          if constexpr (Largest) {
            offer_tile<T, Largest>(
                [&](int64_t j) { return row[j] * bt[j]; },
                [&](int64_t j, int64_t len) { return block_max_scaled<T>(row + j, bt + j, len); },
                n, offset, hv, hi, k, filled);
          } else {
            const T qq = q_term[r];
            offer_tile<T, Largest>(
                [&](int64_t j) { return std::max(qq + bt[j] - T(2) * row[j], T(0)); },
                [&](int64_t j, int64_t len) { return block_min_l2<T>(row + j, bt + j, qq, len); },
                n, offset, hv, hi, k, filled);
          }
        }
      });
    }
  }

  // Sort each heap best-first and write it out (square-rooting distances).
  T* out_v = values.data_ptr<T>();
  int64_t* out_i = indices.data_ptr<int64_t>();
  at::parallel_for(0, nq, std::max<int64_t>(1, 4096 / k), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(static_cast<size_t>(k));
    for (int64_t r = begin; r < end; ++r) {
      const T* hv = heap_v.data() + r * k;
      const int64_t* hi = heap_i.data() + r * k;
      std::iota(order.begin(), order.end(), int64_t{0});
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return better<T, Largest>(hv[a], hi[a], hv[b], hi[b]);
      });
      for (int64_t j = 0; j < k; ++j) {
        const T v = hv[order[j]];
        out_v[r * k + j] = Largest ? v : std::sqrt(v);
        out_i[r * k + j] = hi[order[j]];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& queries, const at::Tensor& bank,
                                           int64_t k, c10::string_view metric,
                                           int64_t tile_rows) {
  check_knn_args(queries, bank, k, tile_rows);
  const bool cosine = metric_is_cosine(metric);
  const at::ScalarType dtype = compute_dtype(queries.scalar_type());
  const at::Tensor q = queries.to(dtype);
  at::Tensor values = q.new_empty({q.size(0), k});
  at::Tensor indices = q.new_empty({q.size(0), k}, q.options().dtype(at::kLong));
  if (q.size(0) == 0) {
    return {values, indices};
  }
  if (dtype == at::kDouble) {
    cosine ? knn_kernel<double, true>(q, bank, k, tile_rows, values, indices)
           : knn_kernel<double, false>(q, bank, k, tile_rows, values, indices);
  } else {
    cosine ? knn_kernel<float, true>(q, bank, k, tile_rows, values, indices)
           : knn_kernel<float, false>(q, bank, k, tile_rows, values, indices);
  }
  return {values, indices};
}

}  // namespace
}  // namespace ood_zoo

TORCH_LIBRARY_IMPL(ood_zoo, CPU, m) { m.impl("knn", &ood_zoo::knn_cpu); }
