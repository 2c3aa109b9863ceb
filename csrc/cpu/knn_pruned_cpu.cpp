// CPU kernels of ood_zoo::KNNIndex (ops.py): exact kNN pruned by a principal-subspace bound.
//
// With V an orthonormal [d, p] basis, a = Vᵀq, c = Vᵀb and the residual norms r_q = |q - Va|,
// r_b = |b - Vc|, Cauchy–Schwarz gives  <q, b> = <a, c> + <q⊥, b⊥> <= <a, c> + r_q r_b.
// Per bank tile, one [Q, p] x [p, tile] GEMM (gemm.h) gives <a, c> for every pair; a pair is
// scored exactly only if its bound, widened by the caller's rounding margin, can still reach the
// query's threshold: the larger (cosine) or smaller (l2) of the caller's seed `tau` and the k-th
// best exact score so far. Survivors are scored from the bank rows themselves (converted to fp32
// a tile at a time, which stays in cache) and offered to caller-owned top-k heaps (topk_heap.h).
//
//   knn_pruned_update(seed=false): the pruned exact pass described above;
//   knn_pruned_update(seed=true):  the heaps collect the rows with the best *approximate* scores
//                                  <a, c> instead (no residual, no exact scores), so that the
//                                  caller can seed `tau` from rows scored exactly;
//   knn_pruned_rescore:            exact scores of given (query, row) pairs, same arithmetic.
//
// Exact scores: s = fl(<q, b>) accumulated in fp32 over 16 lanes (each lane sums ceil(d/16)
// products with FMA, then a 4-level tree), so |s - <q, b>| <= gamma_(ceil(d/16)+4) |q| |b|
// with gamma_m = m u / (1 - m u), u = 2^-24. cosine: value s * inv_b (queries normalised by the
// caller); l2: max(0, |q|^2 + |b|^2 - 2 s), squared. The margin that covers these roundings and
// those of the bound is derived in ops.KNNIndex's docstring and passed in.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../common.h"
#include "gemm.h"
#include "topk_heap.h"

namespace ood_zoo {
namespace {

constexpr int kLanes = 16;
// Rows screened before the survivors are scored and the threshold refreshed.
constexpr int64_t kScreenRows = 64;

inline float tree_sum(float* acc) {
  for (int width = kLanes / 2; width >= 1; width /= 2) {
    for (int l = 0; l < width; ++l) {
      acc[l] += acc[l + width];
    }
  }
  return acc[0];
}

// Four dot products sharing the query's loads: out[r] = <q, b_r>, 16-lane fp32 FMA accumulation.
OOD_ZOO_CLONES void dot_x4(const float* q, const float* const* b, int64_t d, float* out) {
  float a0[kLanes] = {}, a1[kLanes] = {}, a2[kLanes] = {}, a3[kLanes] = {};
  const float *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3];
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float x = q[j + l];
      a0[l] = std::fma(x, b0[j + l], a0[l]);
      a1[l] = std::fma(x, b1[j + l], a1[l]);
      a2[l] = std::fma(x, b2[j + l], a2[l]);
      a3[l] = std::fma(x, b3[j + l], a3[l]);
    }
  }
  for (int l = 0; j + l < d; ++l) {
    const float x = q[j + l];
    a0[l] = std::fma(x, b0[j + l], a0[l]);
    a1[l] = std::fma(x, b1[j + l], a1[l]);
    a2[l] = std::fma(x, b2[j + l], a2[l]);
    a3[l] = std::fma(x, b3[j + l], a3[l]);
  }
  out[0] = tree_sum(a0);
  out[1] = tree_sum(a1);
  out[2] = tree_sum(a2);
  out[3] = tree_sum(a3);
}

// The same accumulation for one pair (bit-identical to one lane of dot_x4).
OOD_ZOO_CLONES float dot_x1(const float* q, const float* b, int64_t d) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      acc[l] = std::fma(q[j + l], b[j + l], acc[l]);
    }
  }
  for (int l = 0; j + l < d; ++l) {
    acc[l] = std::fma(q[j + l], b[j + l], acc[l]);
  }
  return tree_sum(acc);
}

OOD_ZOO_CLONES float block_max(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) {
    m = std::max(m, x[j]);
  }
  return m;
}

// min_j |q|^2 + |b_j|^2 - 2 s_j, the seed pass's best approximate squared distance of a block
OOD_ZOO_CLONES float block_min_l2(const float* s, const float* bb, float qq, int64_t n) {
  float m = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(min : m)
  for (int64_t j = 0; j < n; ++j) {
    m = std::min(m, qq + bb[j] - 2.0f * s[j]);
  }
  return m;
}

// The ranking value of an exact dot product s: cosine s * inv_b, l2 the squared distance.
template <bool Cosine>
inline float exact_value(float s, float q_sq, float b_term) {
  if constexpr (Cosine) {
    return s * b_term;
  } else {
    return std::max(q_sq + b_term - 2.0f * s, 0.0f);
  }
}

// Exact dot products of query q with rows[0..n) (pointers), four at a time.
inline void dot_rows(const float* q, const float* const* rows, int64_t n, int64_t d, float* out) {
  int64_t r = 0;
  for (; r + 4 <= n; r += 4) {
    dot_x4(q, rows + r, d, out + r);
  }
  for (; r < n; ++r) {
    out[r] = dot_x1(q, rows[r], d);
  }
}

struct Inputs {
  const float* q;       // [Q, d] queries (unit rows for cosine)
  const float* q_proj;  // [Q, p]
  const float* q_res;   // [Q] residual norms, rounded up
  const float* q_sq;    // [Q] |q|^2 (l2 only)
  const float* b_proj;  // [n, p]
  const float* b_res;   // [n]
  const float* b_term;  // [n] 1 / max(|b|, eps) (cosine) or |b|^2 (l2)
  const float* tau;     // [Q] seed thresholds
  int64_t nq, d, p, k;
  float margin;
};

template <bool Cosine, bool Seed>
void pruned_kernel(const Inputs& in, const at::Tensor& bank, int64_t offset, at::Tensor& values,
                   at::Tensor& indices, int64_t tile_rows, at::Tensor& stats) {
  const int64_t n_bank = bank.size(0);
  const int64_t tile = std::min(tile_rows, n_bank);
  // Query block whose [block, tile] bound matrix stays within about 1 MB.
  const int64_t block = std::clamp<int64_t>((int64_t{1} << 18) / tile, 1, in.nq);
  std::vector<float> bound(static_cast<size_t>(block * tile));
  float* hv_all = values.data_ptr<float>();
  int64_t* hi_all = indices.data_ptr<int64_t>();
  std::atomic<int64_t> scored{0};
  const int64_t d = in.d, k = in.k;

  for (int64_t start = 0; start < n_bank; start += tile) {
    const int64_t n = std::min(tile, n_bank - start);
    at::Tensor rows;
    if constexpr (!Seed) {
      rows = bank.narrow(0, start, n).to(at::kFloat).contiguous();
    }
    const float* bp = rows.defined() ? rows.const_data_ptr<float>() : nullptr;
    const float* cp = in.b_proj + start * in.p;
    const float* br = in.b_res + start;
    const float* bt = in.b_term + start;
    for (int64_t q0 = 0; q0 < in.nq; q0 += block) {
      const int64_t nb = std::min(block, in.nq - q0);
      gemm_nt(in.q_proj + q0 * in.p, in.p, cp, in.p, bound.data(), n, nb, n, in.p);
      at::parallel_for(q0, q0 + nb, 1, [&](int64_t begin, int64_t end) {
        int64_t survivors[kScreenRows];
        const float* survivor_rows[kScreenRows];
        float dots[kScreenRows];
        int64_t local_scored = 0;
        for (int64_t i = begin; i < end; ++i) {
          const float* u = bound.data() + (i - q0) * n;
          float* hv = hv_all + i * k;
          int64_t* hi = hi_all + i * k;
          const float rq = in.q_res[i];
          const float qq = Cosine ? 0.0f : in.q_sq[i];
          const float* qrow = in.q + i * d;
          for (int64_t j0 = 0; j0 < n; j0 += kScreenRows) {
            const int64_t len = std::min(n, j0 + kScreenRows) - j0;
            if constexpr (Seed) {
              // Offer the approximate scores <a, c> (cosine: similarity; l2: squared distance);
              // whole blocks that cannot enter the heap are skipped after one vectorised
              // best-of-block.
              const float* uj = u + j0;
              if (Cosine ? block_max(uj, len) <= hv[0]
                         : block_min_l2(uj, bt + j0, qq, len) >= hv[0]) {
                continue;
              }
              for (int64_t j = 0; j < len; ++j) {
                const float v = Cosine ? uj[j] : qq + bt[j0 + j] - 2.0f * uj[j];
                if (Cosine ? v > hv[0] : v < hv[0]) {
                  heap_replace_root<float, Cosine>(hv, hi, k, v, offset + start + j0 + j);
                }
              }
              continue;
            }
            const float worst = hv[0];
            const float tau = Cosine ? std::max(in.tau[i], worst) : std::min(in.tau[i], worst);
            // branch-free compaction of the rows whose bound can still reach tau
            int64_t count = 0;
            if (Cosine) {
              const float need = tau - in.margin;
              for (int64_t j = j0; j < j0 + len; ++j) {
                survivors[count] = j;
                count += u[j] + rq * br[j] >= need;
              }
            } else {
              const float keep = 1.0f - in.margin;
              for (int64_t j = j0; j < j0 + len; ++j) {
                survivors[count] = j;
                count += (qq + bt[j]) * keep - 2.0f * (u[j] + rq * br[j]) <= tau;
              }
            }
            if (count == 0) {
              continue;
            }
            for (int64_t s = 0; s < count; ++s) {
              survivor_rows[s] = bp + survivors[s] * d;
            }
            dot_rows(qrow, survivor_rows, count, d, dots);
            local_scored += count;
            for (int64_t s = 0; s < count; ++s) {
              const int64_t j = survivors[s];
              const float v = exact_value<Cosine>(dots[s], qq, bt[j]);
              // Candidates arrive in increasing index order: a later one never wins a tie.
              if (Cosine ? v > hv[0] : v < hv[0]) {
                heap_replace_root<float, Cosine>(hv, hi, k, v, offset + start + j);
              }
            }
          }
        }
        scored.fetch_add(local_scored);
      });
    }
  }
  int64_t* st = stats.data_ptr<int64_t>();
  st[0] += in.nq * n_bank;
  st[1] += scored.load();
}

void check_float(const at::Tensor& t, const char* name, std::initializer_list<int64_t> shape) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(),
              "knn_pruned: ", name, " must be a contiguous CPU float32 tensor");
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "knn_pruned: ", name, " has shape ", t.sizes(),
              ", expected ", at::IntArrayRef(shape));
}

void knn_pruned_update_cpu(const at::Tensor& queries, const at::Tensor& q_proj,
                           const at::Tensor& q_res, const at::Tensor& q_sq, const at::Tensor& bank,
                           const at::Tensor& b_proj, const at::Tensor& b_res,
                           const at::Tensor& b_term, int64_t offset, at::Tensor& values,
                           at::Tensor& indices, const at::Tensor& tau, c10::string_view metric,
                           bool seed, double margin, int64_t tile_rows, at::Tensor& stats) {
  const bool cosine = metric_is_cosine(metric);
  check_feature_matrix(bank, "knn_pruned_update", "bank");
  const int64_t nq = queries.size(0), d = queries.size(1), p = q_proj.size(1);
  const int64_t n = bank.size(0), k = values.size(1);
  check_float(queries, "queries", {nq, d});
  check_float(q_proj, "q_proj", {nq, p});
  check_float(q_res, "q_res", {nq});
  if (!cosine) {
    check_float(q_sq, "q_sq", {nq});
  }
  TORCH_CHECK(bank.size(1) == d, "knn_pruned_update: queries have ", d,
              " features but the bank has ", bank.size(1));
  check_float(b_proj, "b_proj", {n, p});
  check_float(b_res, "b_res", {n});
  check_float(b_term, "b_term", {n});
  check_float(values, "values", {nq, k});
  check_float(tau, "tau", {nq});
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.is_contiguous() &&
                  indices.sizes() == values.sizes(),
              "knn_pruned_update: indices must be a contiguous int64 tensor shaped like values");
  TORCH_CHECK(stats.scalar_type() == at::kLong && stats.numel() == 2 && stats.is_contiguous(),
              "knn_pruned_update: stats must be a contiguous int64 [2] tensor");
  TORCH_CHECK(k >= 1 && tile_rows >= 1 && p >= 1, "knn_pruned_update: k, p and tile_rows must "
              "be positive");
  if (nq == 0 || n == 0) {
    return;
  }
  const Inputs in{queries.const_data_ptr<float>(),
                  q_proj.const_data_ptr<float>(),
                  q_res.const_data_ptr<float>(),
                  cosine ? nullptr : q_sq.const_data_ptr<float>(),
                  b_proj.const_data_ptr<float>(),
                  b_res.const_data_ptr<float>(),
                  b_term.const_data_ptr<float>(),
                  tau.const_data_ptr<float>(),
                  nq, d, p, k, static_cast<float>(margin)};
  if (cosine) {
    seed ? pruned_kernel<true, true>(in, bank, offset, values, indices, tile_rows, stats)
         : pruned_kernel<true, false>(in, bank, offset, values, indices, tile_rows, stats);
  } else {
    seed ? pruned_kernel<false, true>(in, bank, offset, values, indices, tile_rows, stats)
         : pruned_kernel<false, false>(in, bank, offset, values, indices, tile_rows, stats);
  }
}

// values[i, j] = the exact ranking value of query i and rows[i, j] (same arithmetic as above).
at::Tensor knn_pruned_rescore_cpu(const at::Tensor& queries, const at::Tensor& q_sq,
                                  const at::Tensor& rows, const at::Tensor& row_term,
                                  c10::string_view metric) {
  const bool cosine = metric_is_cosine(metric);
  const int64_t nq = queries.size(0), d = queries.size(1);
  TORCH_CHECK(rows.dim() == 3 && rows.size(0) == nq && rows.size(2) == d,
              "knn_pruned_rescore: rows must be [Q, k, d], got ", rows.sizes());
  const int64_t k = rows.size(1);
  check_float(queries, "queries", {nq, d});
  if (!cosine) {
    check_float(q_sq, "q_sq", {nq});
  }
  check_float(row_term, "row_term", {nq, k});
  const at::Tensor r = rows.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({nq, k}, queries.options());
  const float* qp = queries.const_data_ptr<float>();
  const float* rp = r.const_data_ptr<float>();
  const float* tp = row_term.const_data_ptr<float>();
  const float* qs = cosine ? nullptr : q_sq.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, nq, 1, [&](int64_t begin, int64_t end) {
    std::vector<const float*> ptrs(static_cast<size_t>(k));
    std::vector<float> dots(static_cast<size_t>(k));
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        ptrs[j] = rp + (i * k + j) * d;
      }
      dot_rows(qp + i * d, ptrs.data(), k, d, dots.data());
      for (int64_t j = 0; j < k; ++j) {
        op[i * k + j] = cosine ? exact_value<true>(dots[j], 0.0f, tp[i * k + j])
                               : exact_value<false>(dots[j], qs[i], tp[i * k + j]);
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace ood_zoo

TORCH_LIBRARY_FRAGMENT(ood_zoo, m) {
  m.def(
      "knn_pruned_update(Tensor queries, Tensor q_proj, Tensor q_res, Tensor q_sq, Tensor bank, "
      "Tensor b_proj, Tensor b_res, Tensor b_term, int offset, Tensor(a!) values, "
      "Tensor(b!) indices, Tensor tau, str metric, bool seed, float margin, int tile_rows, "
      "Tensor(c!) stats) -> ()");
  m.def(
      "knn_pruned_rescore(Tensor queries, Tensor q_sq, Tensor rows, Tensor row_term, str metric) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(ood_zoo, CPU, m) {
  m.impl("knn_pruned_update", &ood_zoo::knn_pruned_update_cpu);
  m.impl("knn_pruned_rescore", &ood_zoo::knn_pruned_rescore_cpu);
}
