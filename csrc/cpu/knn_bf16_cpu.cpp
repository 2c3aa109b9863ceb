// CPU kernel of ood_zoo::knn_bf16_update: exact kNN with the GEMM in bf16 and an exact re-rank.
//
// Per bank tile, S~ = bf16(q~) @ bf16(b~)^T runs as one ATen bf16 matmul (oneDNN; bf16 products
// are exact in fp32, accumulation in fp32, output rounded to bf16). Every approximate score gets a
// rigorous error bound (below); per query a fused two-pass scan over the tile then
//   1. builds the k best *guaranteed* bounds of the tile (lower bounds for cosine, upper bounds of
//      squared distances for l2), which with the running exact top-k gives a threshold L;
//   2. re-scores exactly (double accumulation, from the bank rows in their stored precision) every
//      candidate whose optimistic bound can still reach L, and offers it to the exact top-k heap.
// A candidate is skipped only if k other rows provably beat it, so the result equals the top-k of
// the exactly computed scores (ties: lower index). A query that needs more than max_rescore exact
// re-scores is marked (counts = -1) and left to the caller's fp32 path.
//
// Error bound, cosine (q^ = q / |q| exactly, b a bank row, tildes the bf16 roundings, d features):
//   |q^.b - fl32(q~.b~)| <= |q^ - q~| |b| + |q~| |b - b~| + 2 gamma_d |q~| |b~|,
// gamma_d = d u / (1 - d u), u = 2^-24 (fp32 accumulation, doubled for the dot-product
// instruction's internal rounding); the bf16 output rounding adds 2^-8 |s~| and the fp32 epilogue a
// few ulps (slack). |q^ - q~|, |q~| per query and |b|, |b - b~|, |b~| per bank row are computed
// exactly (in double) here, so the bound is per row, not a worst case. l2 uses
// |q-b|^2 = |q|^2 + |b|^2 - 2 q.b with the same bound on q.b, doubled, plus the fp32 rounding of
// the sum. Assumption (documented in ops/dense.py): the bf16 matmul accumulates each dot product
// in fp32. The bounds hold for rows inside the safe range (common.h, kMaxNormSq): a bank row beyond
// it raises "... is outside the safe range", and ood_zoo.ops.knn then rescales the call.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../common.h"
#include "topk_heap.h"

namespace ood_zoo {
namespace {

constexpr float kU = 5.9604645e-08f;           // 2^-24, fp32 unit roundoff
constexpr float kOutRound = 0.00390625f;        // 2^-8 >= bf16 output rounding relative to it
constexpr double kInflate = 1.0 + 1.0 / 1024;  // safety factor on every bound
constexpr double kCosEps = 1e-9;                // bound on the double re-score's error (cosine)
constexpr double kL2Rel = 3e-10;                // relative bound on it (squared l2)

inline float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// ------------------------------------------------------------------ vectorised row helpers

OOD_ZOO_CLONES double dot_f32(const float* a, const float* b, int64_t d) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < d; ++i) {
    acc += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  }
  return acc;
}

OOD_ZOO_CLONES double dot_f32_bf16(const float* a, const uint16_t* b, int64_t d) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < d; ++i) {
    acc += static_cast<double>(a[i]) * static_cast<double>(bf16_to_float(b[i]));
  }
  return acc;
}

OOD_ZOO_CLONES double sqdist_f32(const float* a, const float* b, int64_t d) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < d; ++i) {
    const double t = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    acc += t * t;
  }
  return acc;
}

OOD_ZOO_CLONES double sqdist_f32_bf16(const float* a, const uint16_t* b, int64_t d) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < d; ++i) {
    const double t = static_cast<double>(a[i]) - static_cast<double>(bf16_to_float(b[i]));
    acc += t * t;
  }
  return acc;
}

// |x|^2, |x - x~|^2, |x~|^2 of a float row and its bf16 rounding, in double.
OOD_ZOO_CLONES void row_stats(const float* x, const uint16_t* xt, int64_t d, double* out) {
  double nn = 0.0, rr = 0.0, tt = 0.0;
#pragma omp simd reduction(+ : nn, rr, tt)
  for (int64_t i = 0; i < d; ++i) {
    const double v = x[i];
    const double w = bf16_to_float(xt[i]);
    nn += v * v;
    rr += (v - w) * (v - w);
    tt += w * w;
  }
  out[0] = nn;
  out[1] = rr;
  out[2] = tt;
}

OOD_ZOO_CLONES double sqnorm_bf16(const uint16_t* x, int64_t d) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < d; ++i) {
    const double v = bf16_to_float(x[i]);
    acc += v * v;
  }
  return acc;
}

// max_j s_j * binv_j over a block (cosine approximate scores).
OOD_ZOO_CLONES float block_max_cos(const uint16_t* s, const float* binv, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) {
    m = std::max(m, bf16_to_float(s[j]) * binv[j]);
  }
  return m;
}

// min_j (bb_j - 2 s_j - c |s_j|) and min_j (bb_j - 2 s_j + c |s_j|) over a block (l2).
OOD_ZOO_CLONES void block_min_l2(const uint16_t* s, const float* bb, int64_t n, float c,
                                 float* lo, float* hi) {
  float ml = std::numeric_limits<float>::infinity();
  float mh = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(min : ml, mh)
  for (int64_t j = 0; j < n; ++j) {
    const float v = bf16_to_float(s[j]);
    const float base = bb[j] - 2.0f * v;
    ml = std::min(ml, base - c * std::fabs(v));
    mh = std::min(mh, base + c * std::fabs(v));
  }
  *lo = ml;
  *hi = mh;
}

// ------------------------------------------------------------------ heaps

// Bounded heap of floats keeping the k best bounds (largest if Largest), worst at the root.
template <bool Largest>
struct BoundHeap {
  std::vector<float> h;
  int64_t k = 0, size = 0;
  void reset(int64_t kk) {
    k = kk;
    size = 0;
    h.resize(static_cast<size_t>(kk));
  }
  static bool worse(float a, float b) { return Largest ? a < b : a > b; }
  bool full() const { return size == k; }
  float root() const { return h[0]; }
  void offer(float v) {
    if (size < k) {
      int64_t pos = size++;
      while (pos > 0) {
        const int64_t parent = (pos - 1) / 2;
        if (!worse(v, h[parent])) {
          break;
        }
        h[pos] = h[parent];
        pos = parent;
      }
      h[pos] = v;
      return;
    }
    if (!worse(h[0], v)) {
      return;
    }
    int64_t pos = 0;
    while (true) {
      int64_t child = 2 * pos + 1;
      if (child >= k) {
        break;
      }
      if (child + 1 < k && worse(h[child + 1], h[child])) {
        ++child;
      }
      if (!worse(h[child], v)) {
        break;
      }
      h[pos] = h[child];
      pos = child;
    }
    h[pos] = v;
  }
};

inline float round_down(double x) {
  const float f = static_cast<float>(x);
  return static_cast<double>(f) > x ? std::nextafter(f, -std::numeric_limits<float>::infinity())
                                    : f;
}

inline float round_up(double x) {
  const float f = static_cast<float>(x);
  return static_cast<double>(f) < x ? std::nextafter(f, std::numeric_limits<float>::infinity()) : f;
}

constexpr int64_t kBlock = 64;

// Per-query data for one call.
struct QueryPrep {
  at::Tensor q_bf16;          // [Q, d] the GEMM operand (normalised for cosine)
  std::vector<double> scale;  // cosine: 1 / max(|q|, eps); l2: |q|^2
  std::vector<float> err;     // |q^ - q~| (cosine) or |q - q~| (l2)
  std::vector<float> norm_t;  // |q~|
};

QueryPrep prepare_queries(const at::Tensor& q, bool cosine) {
  const int64_t nq = q.size(0), d = q.size(1);
  QueryPrep p;
  p.q_bf16 = at::empty({nq, d}, q.options().dtype(at::kBFloat16));
  p.scale.resize(static_cast<size_t>(nq));
  p.err.resize(static_cast<size_t>(nq));
  p.norm_t.resize(static_cast<size_t>(nq));
  const float* qp = q.const_data_ptr<float>();
  auto* qt = reinterpret_cast<uint16_t*>(p.q_bf16.data_ptr<at::BFloat16>());
  std::atomic<bool> out_of_range{false};
  at::parallel_for(0, nq, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = qp + r * d;
      uint16_t* out = qt + r * d;
      double nn = 0.0;
      for (int64_t c = 0; c < d; ++c) {
        nn += static_cast<double>(row[c]) * row[c];
      }
      if (!(nn <= kMaxNormSq<float>)) {
        out_of_range = true;
      }
      const double inv = 1.0 / std::max(std::sqrt(nn), kNormEps);
      double rr = 0.0, tt = 0.0;
      for (int64_t c = 0; c < d; ++c) {
        const double exact = cosine ? row[c] * inv : static_cast<double>(row[c]);
        const c10::BFloat16 b(static_cast<float>(exact));
        out[c] = b.x;
        const double w = static_cast<float>(b);
        rr += (exact - w) * (exact - w);
        tt += w * w;
      }
      p.scale[r] = cosine ? inv : nn;
      p.err[r] = round_up(std::sqrt(rr) * kInflate);
      p.norm_t[r] = round_up(std::sqrt(tt) * kInflate);
    }
  });
  TORCH_CHECK(!out_of_range, "knn_bf16_update: a query row is not finite or", kOutOfRange);
  return p;
}

template <bool Cosine>
void update_kernel(const at::Tensor& q, const at::Tensor& bank, int64_t offset,
                   at::Tensor& values, at::Tensor& indices, at::Tensor& counts,
                   int64_t tile_rows, int64_t max_rescore) {
  constexpr bool Largest = Cosine;
  const int64_t nq = q.size(0), d = q.size(1), k = values.size(1);
  const int64_t n_bank = bank.size(0);
  const int64_t tile = std::max<int64_t>(1, std::min(tile_rows, n_bank));
  const bool bank_bf16 = bank.scalar_type() == at::kBFloat16;
  const double gamma = 2.0 * (d * static_cast<double>(kU)) / (1.0 - d * static_cast<double>(kU));

  const QueryPrep qp = prepare_queries(q, Cosine);
  const float* qf = q.const_data_ptr<float>();
  double* heap_v = values.data_ptr<double>();
  int64_t* heap_i = indices.data_ptr<int64_t>();
  int64_t* cnt = counts.data_ptr<int64_t>();

  // Per bank row of a tile. Cosine: binv = 1 / max(|b|, eps), a = |b| binv,
  // bt = (|b - b~| + (2 gamma + 4u) |b~|) binv. l2: bb = |b|^2, a = 2 |b|,
  // bt = 2 |b - b~| + (4 gamma + 16u) |b~|, cc = 8u |b|^2.
  std::vector<float> binv(tile), bb(tile), ra(tile), rb(tile), rc(tile);
  std::vector<double> binv_d(tile);

  for (int64_t start = 0; start < n_bank; start += tile) {
    const int64_t n = std::min(tile, n_bank - start);
    at::Tensor src = bank.narrow(0, start, n);
    at::Tensor b_f, b_t;  // exact rows (float), GEMM rows (bf16)
    if (bank_bf16) {
      b_t = src.contiguous();
    } else {
      b_f = src.to(at::kFloat).contiguous();
      b_t = b_f.to(at::kBFloat16);
    }
    const float* bfp = bank_bf16 ? nullptr : b_f.const_data_ptr<float>();
    const auto* btp = reinterpret_cast<const uint16_t*>(b_t.const_data_ptr<at::BFloat16>());
    float max_a = 0.f, max_b = 0.f, max_c = 0.f;
    // first row holding NaN or Inf, first row beyond the safe range (finite float rows never
    // overflow their double sum of squares, so a finite sum above kMaxNormSq is the latter)
    std::atomic<int64_t> first_bad[2] = {std::numeric_limits<int64_t>::max(),
                                         std::numeric_limits<int64_t>::max()};
    {
      std::vector<float> pa(n), pb(n), pc(n);
      at::parallel_for(0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)),
                       [&](int64_t begin, int64_t end) {
                         for (int64_t j = begin; j < end; ++j) {
                           double st[3];
                           if (bank_bf16) {
                             st[0] = st[2] = sqnorm_bf16(btp + j * d, d);
                             st[1] = 0.0;
                           } else {
                             row_stats(bfp + j * d, btp + j * d, d, st);
                           }
                           if (!(st[0] <= kMaxNormSq<float>)) {
                             std::atomic<int64_t>& slot = first_bad[std::isfinite(st[0])];
                             int64_t seen = slot.load();
                             while (j < seen && !slot.compare_exchange_weak(seen, j)) {
                             }
                           }
                           const double nb = std::sqrt(st[0]), rr = std::sqrt(st[1]),
                                        nt = std::sqrt(st[2]);
                           if (Cosine) {
                             const double inv = 1.0 / std::max(nb, kNormEps);
                             binv[j] = static_cast<float>(inv);
                             binv_d[j] = inv;
                             pa[j] = round_up(nb * inv * kInflate);
                             pb[j] = round_up((rr + (2 * gamma + 4 * kU) * nt) * inv * kInflate);
                             pc[j] = 0.f;
                           } else {
                             bb[j] = static_cast<float>(st[0]);
                             pa[j] = round_up(2 * nb * kInflate);
                             pb[j] = round_up((2 * rr + (4 * gamma + 16 * kU) * nt) * kInflate);
                             pc[j] = round_up(8 * kU * st[0] * kInflate);
                           }
                         }
                       });
      for (int64_t j = 0; j < n; ++j) {
        ra[j] = pa[j];
        rb[j] = pb[j];
        rc[j] = pc[j];
        max_a = std::max(max_a, pa[j]);
        max_b = std::max(max_b, pb[j]);
        max_c = std::max(max_c, pc[j]);
      }
    }
    TORCH_CHECK(first_bad[0].load() == std::numeric_limits<int64_t>::max(), "knn: bank row ",
                offset + start + first_bad[0].load(), " is not finite (NaN or Inf)");
    TORCH_CHECK(first_bad[1].load() == std::numeric_limits<int64_t>::max(), "knn: bank row ",
                offset + start + first_bad[1].load(), kOutOfRange);
    const at::Tensor s = qp.q_bf16.mm(b_t.t());  // [nq, n] bf16, fp32 accumulation
    const auto* sp = reinterpret_cast<const uint16_t*>(s.const_data_ptr<at::BFloat16>());
    const int64_t base = offset + start;

    at::parallel_for(0, nq, 1, [&](int64_t begin, int64_t end) {
      BoundHeap<Largest> bounds;
      const int64_t n_blocks = (n + kBlock - 1) / kBlock;
      std::vector<float> blk_lo(n_blocks), blk_hi(n_blocks);
      for (int64_t r = begin; r < end; ++r) {
        if (cnt[r] < 0) {
          continue;  // overflowed: the caller recomputes this query
        }
        const uint16_t* srow = sp + r * n;
        double* hv = heap_v + r * k;
        int64_t* hi = heap_i + r * k;
        const float* qrow = qf + r * d;
        const float qe = qp.err[r], qn = qp.norm_t[r];
        // Uniform per-(query, tile) bound; the per-row one is checked before each re-score.
        float beta, qterm = 0.f;
        if (Cosine) {
          beta = round_up((qe * static_cast<double>(max_a) + qn * static_cast<double>(max_b)) *
                              kInflate +
                          1e-6);
        } else {
          qterm = round_up(8 * kU * qp.scale[r] * kInflate);
          beta = round_up((qe * static_cast<double>(max_a) + qn * static_cast<double>(max_b) +
                           max_c + qterm) *
                          kInflate);
        }
        const float qq = Cosine ? 0.f : static_cast<float>(qp.scale[r]);
        const float c_out = Cosine ? kOutRound : 2 * kOutRound + 16 * kU;
        // Threshold from the exact heap: L (cosine: lower bound on the k-th best) or U (l2).
        auto exact_threshold = [&]() -> float {
          const double root = hv[0];
          if (Cosine) {
            return std::isinf(root) ? -std::numeric_limits<float>::infinity()
                                    : round_down(root - kCosEps);
          }
          return std::isinf(root) ? std::numeric_limits<float>::infinity()
                                  : round_up(root * (1 + kL2Rel));
        };
        float thr = exact_threshold();

        // Pass 1: block summaries and the k best guaranteed bounds of this tile.
        bounds.reset(k);
        for (int64_t bi = 0; bi < n_blocks; ++bi) {
          const int64_t j0 = bi * kBlock, len = std::min(kBlock, n - j0);
          float lo_best;  // the best guaranteed bound in the block
          if (Cosine) {
            const float m = block_max_cos(srow + j0, binv.data() + j0, len);
            blk_hi[bi] = m + c_out * std::fabs(m) + beta;
            lo_best = m - c_out * std::fabs(m) - beta;
          } else {
            float ml, mh;
            block_min_l2(srow + j0, bb.data() + j0, len, c_out, &ml, &mh);
            blk_lo[bi] = qq + ml - beta;  // smallest lower bound in the block
            lo_best = qq + mh + beta;     // smallest upper bound in the block
          }
          if (Cosine ? lo_best <= thr : lo_best >= thr) {
            continue;
          }
          for (int64_t j = j0; j < j0 + len; ++j) {
            const float v = bf16_to_float(srow[j]);
            float bound;
            if (Cosine) {
              const float sc = v * binv[j];
              bound = sc - c_out * std::fabs(sc) - beta;
            } else {
              bound = qq + bb[j] - 2.0f * v + c_out * std::fabs(v) + beta;
            }
            if (Cosine ? bound > thr : bound < thr) {
              bounds.offer(bound);
              if (bounds.full()) {
                // minus the re-score's own error, so that skipping is decided on exact values
                thr = Cosine ? std::max(thr, round_down(bounds.root() - kCosEps))
                             : std::min(thr, round_up(bounds.root() * (1 + kL2Rel)));
              }
            }
          }
        }

        // Pass 2: exact re-score of every row whose optimistic bound reaches the threshold.
        for (int64_t bi = 0; bi < n_blocks && cnt[r] >= 0; ++bi) {
          if (Cosine ? blk_hi[bi] < thr : blk_lo[bi] > thr) {
            continue;
          }
          const int64_t j0 = bi * kBlock, len = std::min(kBlock, n - j0);
          for (int64_t j = j0; j < j0 + len; ++j) {
            const float v = bf16_to_float(srow[j]);
            bool keep;
            if (Cosine) {
              const float sc = v * binv[j];
              const float b_row = qe * ra[j] + qn * rb[j];
              keep = sc + c_out * std::fabs(sc) + b_row * 1.0009766f + 1e-6f >= thr;
            } else {
              const float b_row = qe * ra[j] + qn * rb[j] + rc[j] + qterm;
              keep = qq + bb[j] - 2.0f * v - c_out * std::fabs(v) - b_row * 1.0009766f <= thr;
            }
            if (!keep) {
              continue;
            }
            if (++cnt[r] > max_rescore) {
              cnt[r] = -1;
              break;
            }
            double exact;
            if (Cosine) {
              const double dot = bank_bf16 ? dot_f32_bf16(qrow, btp + j * d, d)
                                           : dot_f32(qrow, bfp + j * d, d);
              exact = dot * qp.scale[r] * binv_d[j];
            } else {
              exact = bank_bf16 ? sqdist_f32_bf16(qrow, btp + j * d, d)
                                : sqdist_f32(qrow, bfp + j * d, d);
            }
            const int64_t idx = base + j;
            if (better<double, Largest>(exact, idx, hv[0], hi[0])) {
              heap_replace_root<double, Largest>(hv, hi, k, exact, idx);
              const float t = exact_threshold();
              thr = Cosine ? std::max(thr, t) : std::min(thr, t);
            }
          }
        }
      }
    });
  }
}

void knn_bf16_update_cpu(const at::Tensor& queries, const at::Tensor& bank, int64_t offset,
                         at::Tensor& values, at::Tensor& indices, at::Tensor& counts,
                         c10::string_view metric, int64_t tile_rows, int64_t max_rescore) {
  check_feature_matrix(queries, "knn_bf16_update", "queries");
  check_feature_matrix(bank, "knn_bf16_update", "bank");
  const bool cosine = metric_is_cosine(metric);
  TORCH_CHECK(queries.scalar_type() == at::kFloat && queries.is_contiguous(),
              "knn_bf16_update: queries must be contiguous float32");
  TORCH_CHECK(queries.size(1) == bank.size(1), "knn_bf16_update: queries have ",
              queries.size(1), " features but the bank has ", bank.size(1));
  const int64_t nq = queries.size(0);
  TORCH_CHECK(values.dim() == 2 && values.size(0) == nq && values.scalar_type() == at::kDouble &&
                  values.is_contiguous() && values.size(1) >= 1,
              "knn_bf16_update: values must be a contiguous float64 [Q, k] heap");
  TORCH_CHECK(indices.sizes() == values.sizes() && indices.scalar_type() == at::kLong &&
                  indices.is_contiguous(),
              "knn_bf16_update: indices must be a contiguous int64 tensor shaped like values");
  TORCH_CHECK(counts.dim() == 1 && counts.size(0) == nq && counts.scalar_type() == at::kLong &&
                  counts.is_contiguous(),
              "knn_bf16_update: counts must be a contiguous int64 [Q] tensor");
  TORCH_CHECK(tile_rows >= 1, "knn_bf16_update: tile_rows must be positive, got ", tile_rows);
  TORCH_CHECK(max_rescore >= 1, "knn_bf16_update: max_rescore must be positive");
  if (nq == 0 || bank.size(0) == 0) {
    return;
  }
  cosine ? update_kernel<true>(queries, bank, offset, values, indices, counts, tile_rows,
                               max_rescore)
         : update_kernel<false>(queries, bank, offset, values, indices, counts, tile_rows,
                                max_rescore);
}

}  // namespace
}  // namespace ood_zoo

TORCH_LIBRARY_FRAGMENT(ood_zoo, m) {
  m.def(
      "knn_bf16_update(Tensor queries, Tensor bank, int offset, Tensor(a!) values, "
      "Tensor(b!) indices, Tensor(c!) counts, str metric, int tile_rows, int max_rescore) -> ()");
}

TORCH_LIBRARY_IMPL(ood_zoo, CPU, m) {
  m.impl("knn_bf16_update", &ood_zoo::knn_bf16_update_cpu);
}
