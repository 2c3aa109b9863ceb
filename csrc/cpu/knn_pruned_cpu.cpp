// CPU kernels of ood_zoo.ops.KNNIndex (ood_zoo/ops/index.py): exact kNN pruned by a
// principal-subspace bound.
//
// With V an orthonormal [d, p] basis, a = Vᵀq, c = Vᵀb and the residual norms r_q = |q - Va|,
// r_b = |b - Vc|, Cauchy–Schwarz gives  <q, b> = <a, c> + <q⊥, b⊥> <= <a, c> + r_q r_b.
// Per bank tile and block of 8 queries, a register-blocked micro-kernel gives <a, c> for 8 x 16
// pairs at a time (block_scores), screened at once; a pair is scored exactly only if its bound,
// widened by the caller's rounding margin, can still reach the query's threshold: the larger
// (cosine) or smaller (l2) of the caller's seed `tau` and the k-th best exact score at the start
// of the tile. A query's survivors in the tile are then scored from the bank rows themselves
// (converted to fp32 a run of tiles at a time, which stays in cache), several at a time, and
// offered to caller-owned top-k heaps (topk_heap.h). Each micro-kernel has an AVX-512 and an
// AVX2 register blocking with the same sums (see wide_kernels below).
//
//   knn_pruned_update(seed=false): the pruned exact pass described above;
//   knn_pruned_update(seed=true):  the heaps collect the rows with the best *approximate* scores
//                                  <a, c> instead (no residual, no exact scores), so that the
//                                  caller can seed `tau` from rows scored exactly;
//   knn_pruned_rescore:            exact scores of given (query, row) pairs, same arithmetic;
//   knn_pruned_project:            the projections and residual norms (float64, or an fp32
//                                  GEMM with a stated error bound for bank rows).
//
// Exact scores: s = fl(<q, b>) accumulated in fp32 over 32 lanes (each lane sums ceil(d/32)
// products with FMA, then a 5-level tree), so |s - <q, b>| <= gamma_(ceil(d/32)+5) |q| |b|
// with gamma_m = m u / (1 - m u), u = 2^-24. cosine: value s * inv_b (queries normalised by the
// caller); l2: max(0, |q|^2 + |b|^2 - 2 s), squared. The margin that covers these roundings and
// those of the bound is derived in ops.KNNIndex's docstring and passed in.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common.h"
#include "gemm.h"
#include "row_ops.h"
#include "topk_heap.h"

// The vector helpers below take and return vectors, so they must be inlined into each ISA
// variant of their callers: a shared out-of-line copy would see another calling convention.
#define OOD_ZOO_INLINE inline __attribute__((always_inline))
#pragma GCC diagnostic ignored "-Wpsabi"

// Two register blockings of each micro-kernel. GCC lowers a generic vector wider than the
// target's registers (a 16-float vector on AVX2) through the stack, element by element, so the
// 16-lane kernels written for AVX-512 ran several times slower on AVX2 CPUs than native 8-lane
// code. Hence:
//   wide   (x86-64-v4, AVX-512: 16-float vectors, 32 registers): dot_x4_wide, bound_scores_wide;
//   narrow (x86-64-v3, AVX2/FMA, or the baseline: 8-float vectors, 16 registers): dot_x2_narrow,
//          bound_scores_narrow (4 queries, run twice per block of 8).
// cpu_kernels() picks one per process. Every variant sums each lane in the same order, so the
// choice never changes a result, only its speed.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define OOD_ZOO_WIDE_ISA __attribute__((target("arch=x86-64-v4")))
#define OOD_ZOO_NARROW_ISA __attribute__((target_clones("arch=x86-64-v3", "default")))
#define OOD_ZOO_HAS_WIDE_ISA 1
#else
#define OOD_ZOO_WIDE_ISA
#define OOD_ZOO_NARROW_ISA
#define OOD_ZOO_HAS_WIDE_ISA 0
#endif

namespace ood_zoo {
namespace {

// fp32 vectors of 16 and 8 lanes (register-aligned), with unaligned loads and stores (memcpy,
// which GCC turns into one vector move) and the lane-wise FMA the kernels need. (The lane count
// is not a template parameter: GCC ignores a dependent vector_size.)
typedef float Float16 __attribute__((vector_size(16 * sizeof(float))));
typedef float Float8 __attribute__((vector_size(8 * sizeof(float))));

template <typename Vector>
struct Vec {
  using type = Vector;
  static constexpr int kWidth = sizeof(Vector) / sizeof(float);
  static OOD_ZOO_INLINE type load(const float* x) {
    type v;
    std::memcpy(&v, x, sizeof v);
    return v;
  }
  static OOD_ZOO_INLINE void store(float* x, type v) { std::memcpy(x, &v, sizeof v); }
  // c + a * b lane by lane, always fused (one rounding), whichever ISA the caller targets.
  static OOD_ZOO_INLINE type fma(type a, type b, type c) {
    for (int l = 0; l < kWidth; ++l) {
      c[l] = std::fma(a[l], b[l], c[l]);
    }
    return c;
  }
};
using V16 = Vec<Float16>;
using V8 = Vec<Float8>;

// Exact dot products accumulate in fp32 over kLanes = 32 lanes (lane l sums q[j] b[j] over
// j = l, l + 32, ... in that order, with FMA), then the d % 32 tail lane by lane in the same
// order, then a tree: lanes l and l + 16 first, then halving widths 8, 4, 2, 1.
constexpr int kLanes = 32;

OOD_ZOO_INLINE float finish_dot(float* lanes, const float* q, const float* b, int64_t j,
                                int64_t d) {
  for (int l = 0; j + l < d; ++l) {
    lanes[l] = std::fma(q[j + l], b[j + l], lanes[l]);
  }
  for (int width = kLanes / 2; width >= 1; width /= 2) {
    for (int l = 0; l < width; ++l) {
      lanes[l] += lanes[l + width];
    }
  }
  return lanes[0];
}

// Four dot products sharing the query's loads: out[r] = <q, b_r> (8 accumulators of 16 lanes).
OOD_ZOO_WIDE_ISA void dot_x4_wide(const float* q, const float* const* b, int64_t d, float* out) {
  V16::type l0 = {}, h0 = {}, l1 = {}, h1 = {}, l2 = {}, h2 = {}, l3 = {}, h3 = {};
  const float *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3];
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    const V16::type ql = V16::load(q + j), qh = V16::load(q + j + 16);
    l0 = V16::fma(ql, V16::load(b0 + j), l0);
    h0 = V16::fma(qh, V16::load(b0 + j + 16), h0);
    l1 = V16::fma(ql, V16::load(b1 + j), l1);
    h1 = V16::fma(qh, V16::load(b1 + j + 16), h1);
    l2 = V16::fma(ql, V16::load(b2 + j), l2);
    h2 = V16::fma(qh, V16::load(b2 + j + 16), h2);
    l3 = V16::fma(ql, V16::load(b3 + j), l3);
    h3 = V16::fma(qh, V16::load(b3 + j + 16), h3);
  }
  const V16::type acc[4][2] = {{l0, h0}, {l1, h1}, {l2, h2}, {l3, h3}};
  for (int r = 0; r < 4; ++r) {
    float lanes[kLanes];
    V16::store(lanes, acc[r][0]);
    V16::store(lanes + 16, acc[r][1]);
    out[r] = finish_dot(lanes, q, b[r], j, d);
  }
}

// Two dot products with 8 accumulators of 8 lanes (plus the query's 4: 12 of AVX2's 16 ymm).
OOD_ZOO_NARROW_ISA void dot_x2_narrow(const float* q, const float* const* b, int64_t d,
                                      float* out) {
  V8::type a0 = {}, a1 = {}, a2 = {}, a3 = {}, c0 = {}, c1 = {}, c2 = {}, c3 = {};
  const float *b0 = b[0], *b1 = b[1];
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    const V8::type x0 = V8::load(q + j), x1 = V8::load(q + j + 8);
    const V8::type x2 = V8::load(q + j + 16), x3 = V8::load(q + j + 24);
    a0 = V8::fma(x0, V8::load(b0 + j), a0);
    a1 = V8::fma(x1, V8::load(b0 + j + 8), a1);
    a2 = V8::fma(x2, V8::load(b0 + j + 16), a2);
    a3 = V8::fma(x3, V8::load(b0 + j + 24), a3);
    c0 = V8::fma(x0, V8::load(b1 + j), c0);
    c1 = V8::fma(x1, V8::load(b1 + j + 8), c1);
    c2 = V8::fma(x2, V8::load(b1 + j + 16), c2);
    c3 = V8::fma(x3, V8::load(b1 + j + 24), c3);
  }
  const V8::type acc[2][4] = {{a0, a1, a2, a3}, {c0, c1, c2, c3}};
  for (int r = 0; r < 2; ++r) {
    float lanes[kLanes];
    for (int h = 0; h < 4; ++h) {
      V8::store(lanes + 8 * h, acc[r][h]);
    }
    out[r] = finish_dot(lanes, q, b[r], j, d);
  }
}

// One dot product, the same sums (one row of either kernel above).
OOD_ZOO_NARROW_ISA float dot_x1(const float* q, const float* b, int64_t d) {
  V8::type a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    a0 = V8::fma(V8::load(q + j), V8::load(b + j), a0);
    a1 = V8::fma(V8::load(q + j + 8), V8::load(b + j + 8), a1);
    a2 = V8::fma(V8::load(q + j + 16), V8::load(b + j + 16), a2);
    a3 = V8::fma(V8::load(q + j + 24), V8::load(b + j + 24), a3);
  }
  float lanes[kLanes];
  V8::store(lanes, a0);
  V8::store(lanes + 8, a1);
  V8::store(lanes + 16, a2);
  V8::store(lanes + 24, a3);
  return finish_dot(lanes, q, b, j, d);
}

// The register blocking of this process: "avx512" (wide) where the CPU has x86-64-v4 and
// OOD_ZOO_CPU_KERNELS is unset or "auto", else "avx2" (narrow; "generic" on CPUs without AVX2,
// where the narrow kernels run their baseline variant). OOD_ZOO_CPU_KERNELS=avx2 forces the
// narrow kernels, to measure or test them on an AVX-512 CPU.
bool wide_kernels() {
  static const bool wide = [] {
    const char* forced = std::getenv("OOD_ZOO_CPU_KERNELS");
    const std::string choice = forced == nullptr ? "" : forced;
    TORCH_CHECK(choice.empty() || choice == "auto" || choice == "avx2",
                "OOD_ZOO_CPU_KERNELS must be auto or avx2, got '", choice, "'");
#if OOD_ZOO_HAS_WIDE_ISA
    return choice != "avx2" && __builtin_cpu_supports("x86-64-v4");
#else
    return false;
#endif
  }();
  return wide;
}

// The blocking wide_kernels() chose, as ops.cpu_kernels() reports it.
std::string cpu_kernels() {
  if (wide_kernels()) {
    return "avx512";
  }
#if OOD_ZOO_HAS_WIDE_ISA
  return __builtin_cpu_supports("x86-64-v3") ? "avx2" : "generic";
#else
  return "generic";
#endif
}

// Exact dot products of query q with rows[0..n) (pointers), four (narrow: two) at a time; a
// remainder of two or three rows also takes dot_x4_wide (padded with repeats), which hides the
// FMA latency better.
void dot_rows(const float* q, const float* const* rows, int64_t n, int64_t d, float* out) {
  int64_t r = 0;
  if (!wide_kernels()) {
    for (; r + 2 <= n; r += 2) {
      dot_x2_narrow(q, rows + r, d, out + r);
    }
  } else {
    for (; r + 4 <= n; r += 4) {
      dot_x4_wide(q, rows + r, d, out + r);
    }
    if (n - r >= 2) {
      const float* padded[4] = {rows[r], rows[r + 1], rows[n - 1], rows[n - 1]};
      float dots[4];
      dot_x4_wide(q, padded, d, dots);
      std::copy(dots, dots + (n - r), out + r);
      r = n;
    }
  }
  if (r < n) {
    out[r] = dot_x1(q, rows[r], d);
  }
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

struct Inputs {
  const float* q;       // [Q, d] queries (unit rows for cosine)
  const float* q_proj;  // [Q, p]
  const float* q_res;   // [Q] residual norms, rounded up
  const float* q_sq;    // [Q] |q|^2 (l2 only)
  const float* b_proj;  // [ceil(n / kGroup), p, kGroup]: rows grouped, transposed per group
  const float* b_res;   // [n]
  const float* b_term;  // [n] 1 / max(|b|, eps) (cosine) or |b|^2 (l2)
  const float* tau;     // [Q] seed thresholds
  int64_t nq, d, p, k;
  float margin;
};

// Bound GEMM micro-kernel: the approximate scores <a_r, c_l> of kQueries queries (a, row-major
// [kQueries, p]) against one group of kGroup bank rows (ct, transposed: [p, kGroup]), summed in
// fp32 over t = 0..p-1 in order (any contraction), so that |error| <= gamma_p |a_r| |c_l|. The
// scores stay in registers until the caller screens them: the [Q, N] matrix is never written.
constexpr int kQueries = 8;
constexpr int kGroup = 16;

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
// All 8 queries at once: 8 accumulators of 16 lanes.
OOD_ZOO_WIDE_ISA void bound_scores_wide(const float* a, const float* ct, int64_t p, float* out) {
  V16::type s0 = {}, s1 = {}, s2 = {}, s3 = {}, s4 = {}, s5 = {}, s6 = {}, s7 = {};
  for (int64_t t = 0; t < p; ++t) {
    const V16::type c = V16::load(ct + t * kGroup);
    s0 += a[0 * p + t] * c;
    s1 += a[1 * p + t] * c;
    s2 += a[2 * p + t] * c;
    s3 += a[3 * p + t] * c;
    s4 += a[4 * p + t] * c;
    s5 += a[5 * p + t] * c;
    s6 += a[6 * p + t] * c;
    s7 += a[7 * p + t] * c;
  }
  V16::store(out + 0 * kGroup, s0);
  V16::store(out + 1 * kGroup, s1);
  V16::store(out + 2 * kGroup, s2);
  V16::store(out + 3 * kGroup, s3);
  V16::store(out + 4 * kGroup, s4);
  V16::store(out + 5 * kGroup, s5);
  V16::store(out + 6 * kGroup, s6);
  V16::store(out + 7 * kGroup, s7);
}

// 4 queries: 8 accumulators of 8 lanes (the group's two halves are the other 2 registers).
OOD_ZOO_NARROW_ISA void bound_scores_narrow(const float* a, const float* ct, int64_t p,
                                            float* out) {
  V8::type l0 = {}, h0 = {}, l1 = {}, h1 = {}, l2 = {}, h2 = {}, l3 = {}, h3 = {};
  for (int64_t t = 0; t < p; ++t) {
    const V8::type lo = V8::load(ct + t * kGroup), hi = V8::load(ct + t * kGroup + 8);
    const float a0 = a[0 * p + t], a1 = a[1 * p + t], a2 = a[2 * p + t], a3 = a[3 * p + t];
    l0 += a0 * lo;
    h0 += a0 * hi;
    l1 += a1 * lo;
    h1 += a1 * hi;
    l2 += a2 * lo;
    h2 += a2 * hi;
    l3 += a3 * lo;
    h3 += a3 * hi;
  }
  // (stored one by one: through an array GCC keeps the accumulators on the stack)
  V8::store(out + 0 * 8, l0);
  V8::store(out + 1 * 8, h0);
  V8::store(out + 2 * 8, l1);
  V8::store(out + 3 * 8, h1);
  V8::store(out + 4 * 8, l2);
  V8::store(out + 5 * 8, h2);
  V8::store(out + 6 * 8, l3);
  V8::store(out + 7 * 8, h3);
}
#pragma GCC pop_options

// The bound scores of a block of kQueries queries against one group.
void block_scores(const float* a, const float* ct, int64_t p, float* out) {
  static_assert(kQueries == 8 && kGroup == 16, "the micro-kernels are written for 8 x 16");
  if (wide_kernels()) {
    bound_scores_wide(a, ct, p, out);
  } else {
    bound_scores_narrow(a, ct, p, out);
    bound_scores_narrow(a + 4 * p, ct, p, out + 4 * kGroup);
  }
}

// Scans bank rows [start, start + n) (one tile; ct its grouped projections) for the query
// blocks [block_begin, block_end), updating the heaps hv/hi ([Q, k]). Returns the pairs scored.
template <bool Cosine, bool Seed>
int64_t scan_tile(const Inputs& in, const float* rows, const float* ct, int64_t start, int64_t n,
                  int64_t offset, float* hv_all, int64_t* hi_all, int64_t block_begin,
                  int64_t block_end) {
  const int64_t d = in.d, k = in.k, p = in.p;
  const float* br = in.b_res + start;
  const float* bt = in.b_term + start;
  std::vector<float> a(static_cast<size_t>(kQueries * p));
  float approx[kQueries * kGroup];
  // Survivors of the whole tile per query, scored after the screening (four rows at a time);
  // the thresholds are those at the start of the tile.
  std::vector<int32_t> survivors(Seed ? 0 : static_cast<size_t>(kQueries * n));
  int64_t counts[kQueries];
  float need[kQueries];
  constexpr int64_t kBatch = 64;
  const float* batch_rows[kBatch];
  float dots[kBatch];
  int64_t scored = 0;
  for (int64_t blk = block_begin; blk < block_end; ++blk) {
    const int64_t q0 = blk * kQueries;
    const int64_t nb = std::min<int64_t>(kQueries, in.nq - q0);
    std::fill(a.begin(), a.end(), 0.0f);
    std::copy(in.q_proj + q0 * p, in.q_proj + (q0 + nb) * p, a.begin());
    for (int64_t r = 0; r < nb && !Seed; ++r) {
      const int64_t i = q0 + r;
      const float worst = hv_all[i * k];
      const float tau = Cosine ? std::max(in.tau[i], worst) : std::min(in.tau[i], worst);
      need[r] = Cosine ? tau - in.margin : tau;
      counts[r] = 0;
    }
    for (int64_t j0 = 0; j0 < n; j0 += kGroup) {
      const int64_t len = std::min<int64_t>(kGroup, n - j0);
      block_scores(a.data(), ct + j0 * p, p, approx);
      for (int64_t r = 0; r < nb; ++r) {
        const int64_t i = q0 + r;
        const float* u = approx + r * kGroup;
        const float qq = Cosine ? 0.0f : in.q_sq[i];
        if constexpr (Seed) {
          // Offer the approximate scores themselves (cosine: similarity; l2: squared
          // distance), after one best-of-group check against the heap's worst entry.
          float* hv = hv_all + i * k;
          int64_t* hi = hi_all + i * k;
          float best = Cosine ? u[0] : qq + bt[j0] - 2.0f * u[0];
          for (int64_t l = 1; l < len; ++l) {
            const float v = Cosine ? u[l] : qq + bt[j0 + l] - 2.0f * u[l];
            best = Cosine ? std::max(best, v) : std::min(best, v);
          }
          if (Cosine ? !(best > hv[0]) : !(best < hv[0])) {
            continue;
          }
          for (int64_t l = 0; l < len; ++l) {
            const float v = Cosine ? u[l] : qq + bt[j0 + l] - 2.0f * u[l];
            if (Cosine ? v > hv[0] : v < hv[0]) {
              heap_replace_root<float, Cosine>(hv, hi, k, v, offset + start + j0 + l);
            }
          }
        } else {
          // branch-free compaction of the rows whose bound can still reach the threshold
          const float rq = in.q_res[i];
          int32_t* list = survivors.data() + r * n;
          int64_t count = counts[r];
          if (Cosine) {
            for (int64_t l = 0; l < len; ++l) {
              list[count] = static_cast<int32_t>(j0 + l);
              count += u[l] + rq * br[j0 + l] >= need[r];
            }
          } else {
            const float keep = 1.0f - in.margin;
            for (int64_t l = 0; l < len; ++l) {
              list[count] = static_cast<int32_t>(j0 + l);
              count += (qq + bt[j0 + l]) * keep - 2.0f * (u[l] + rq * br[j0 + l]) <= need[r];
            }
          }
          counts[r] = count;
        }
      }
    }
    if constexpr (!Seed) {
      for (int64_t r = 0; r < nb; ++r) {
        const int64_t i = q0 + r;
        float* hv = hv_all + i * k;
        int64_t* hi = hi_all + i * k;
        const float qq = Cosine ? 0.0f : in.q_sq[i];
        const int32_t* list = survivors.data() + r * n;
        scored += counts[r];
        for (int64_t c0 = 0; c0 < counts[r]; c0 += kBatch) {
          const int64_t m = std::min(kBatch, counts[r] - c0);
          for (int64_t c = 0; c < m; ++c) {
            batch_rows[c] = rows + static_cast<int64_t>(list[c0 + c]) * d;
          }
          dot_rows(in.q + i * d, batch_rows, m, d, dots);
          for (int64_t c = 0; c < m; ++c) {
            const int64_t j = list[c0 + c];
            const float v = exact_value<Cosine>(dots[c], qq, bt[j]);
            // Candidates arrive in increasing index order: a later one never wins a tie.
            if (Cosine ? v > hv[0] : v < hv[0]) {
              heap_replace_root<float, Cosine>(hv, hi, k, v, offset + start + j);
            }
          }
        }
      }
    }
  }
  return scored;
}

// Bank rows (as fp32) per parallel region of pruned_kernel's many-query path.
constexpr int64_t kRegionBytes = int64_t{8} << 20;

// Runs scan_tile over the bank. Many queries: run of tiles by run of tiles, the query blocks
// split among the threads (the run's rows stay in cache for all of them). Few queries (online
// search): the tiles split among the threads, each with private copies of the heaps, merged at
// the end.
template <bool Cosine, bool Seed>
void pruned_kernel(const Inputs& in, const at::Tensor& bank, int64_t offset, at::Tensor& values,
                   at::Tensor& indices, int64_t tile_rows, at::Tensor& stats) {
  const int64_t n_bank = bank.size(0), k = in.k, p = in.p;
  const int64_t tile = std::min(n_bank, (std::max<int64_t>(tile_rows, 1) + kGroup - 1) /
                                            kGroup * kGroup);
  const int64_t n_tiles = (n_bank + tile - 1) / tile;
  const int64_t n_blocks = (in.nq + kQueries - 1) / kQueries;
  float* hv_all = values.data_ptr<float>();
  int64_t* hi_all = indices.data_ptr<int64_t>();
  auto tile_rows_f32 = [&](int64_t start, int64_t n) {
    return Seed ? at::Tensor() : bank.narrow(0, start, n).to(at::kFloat).contiguous();
  };
  auto data = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; };
  // a tile starts on a group boundary (tile is a multiple of kGroup)
  auto groups = [&](int64_t start) { return in.b_proj + start / kGroup * p * kGroup; };
  std::atomic<int64_t> scored{0};

  if (n_blocks >= 2 * at::get_num_threads() || n_tiles == 1) {
    // One parallel region per run of tiles whose fp32 rows take kRegionBytes (they stay in the
    // shared cache while every thread takes its query blocks through each tile of the run):
    // one region per tile cost more in thread wake-ups and barriers than a small tile's work.
    const int64_t region = std::max<int64_t>(1, kRegionBytes / (tile * in.d * 4)) * tile;
    for (int64_t r0 = 0; r0 < n_bank; r0 += region) {
      const int64_t rn = std::min(region, n_bank - r0);
      const at::Tensor rows = tile_rows_f32(r0, rn);
      const float* base = data(rows);
      at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
        int64_t local = 0;
        for (int64_t start = r0; start < r0 + rn; start += tile) {
          const int64_t n = std::min(tile, r0 + rn - start);
          const float* tile_data = base == nullptr ? nullptr : base + (start - r0) * in.d;
          local += scan_tile<Cosine, Seed>(in, tile_data, groups(start), start, n, offset,
                                           hv_all, hi_all, begin, end);
        }
        scored.fetch_add(local);
      });
    }
  } else {
    std::mutex merge;
    at::parallel_for(0, n_tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> hv(hv_all, hv_all + in.nq * k);
      std::vector<int64_t> hi(hi_all, hi_all + in.nq * k);
      int64_t local = 0;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t start = t * tile, n = std::min(tile, n_bank - start);
        const at::Tensor rows = tile_rows_f32(start, n);
        local += scan_tile<Cosine, Seed>(in, data(rows), groups(start), start, n, offset,
                                         hv.data(), hi.data(), 0, n_blocks);
      }
      const std::lock_guard<std::mutex> lock(merge);
      for (int64_t i = 0; i < in.nq * k; ++i) {
        float* root_v = hv_all + (i / k) * k;
        int64_t* root_i = hi_all + (i / k) * k;
        // ranges merge out of order, so ties are settled by index here
        if (better<float, Cosine>(hv[i], hi[i], root_v[0], root_i[0])) {
          bool present = false;
          for (int64_t j = 0; j < k; ++j) {
            present |= root_i[j] == hi[i];
          }
          if (!present) {
            heap_replace_root<float, Cosine>(root_v, root_i, k, hv[i], hi[i]);
          }
        }
      }
      scored.fetch_add(local);
    });
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

// ------------------------------------------------------------------ projections (build, queries)

// Row r of a bank of any floating dtype and layout, as fp32 (exact for fp16/bf16).
template <typename T>
void row_to_float(const at::Tensor& bank, int64_t r, float* out) {
  const T* base = bank.const_data_ptr<T>() + r * bank.stride(0);
  const int64_t step = bank.stride(1);
  if constexpr (std::is_same_v<T, float>) {
    if (step == 1) {
      std::memcpy(out, base, sizeof(float) * static_cast<size_t>(bank.size(1)));
      return;
    }
  }
  for (int64_t c = 0; c < bank.size(1); ++c) {
    out[c] = static_cast<float>(base[c * step]);
  }
}

// The same, for any of the four dtypes.
void row_as_float(const at::Tensor& bank, int64_t r, float* out) {
  switch (bank.scalar_type()) {
    case at::kFloat: row_to_float<float>(bank, r, out); break;
    case at::kDouble: row_to_float<double>(bank, r, out); break;
    case at::kHalf: row_to_float<c10::Half>(bank, r, out); break;
    default: row_to_float<c10::BFloat16>(bank, r, out); break;
  }
}


inline float round_up(double x) {
  const float f = static_cast<float>(x);
  return static_cast<double>(f) < x ? std::nextafter(f, std::numeric_limits<float>::infinity()) : f;
}

// Rows per block of knn_pruned_project: converted (the block stays in cache) and multiplied by
// the basis with one BLAS call.
constexpr int64_t kProjectBlock = 512;

// The residual norm rounded up, from |x̂|² and |c̃|² in float64: |x̂ - Vc| <= sqrt(max(0,
// |x̂|² - max(0, |c̃| - e |x̂|)²) + slack |x̂|²) when |c̃ - c| <= e |x̂| (e = 0: c̃ exact in float64,
// whose rounding the slack covers).
inline float residual_up(double xx, double cc, double e, double slack) {
  double low_sq = cc;
  if (e > 0) {
    const double low = std::max(0.0, std::sqrt(cc) - e * std::sqrt(xx));
    low_sq = low * low;
  }
  return round_up(std::sqrt(std::max(0.0, xx - low_sq) + slack * xx));
}

// Scales a row by 2^-e so that its peak |x_j| lies in [1/2, 1), and returns e (0 for a zero or
// non-finite row, left as it is). Exact except for entries that become subnormal.
OOD_ZOO_CLONES int scale_to_unit_peak(float* x, int64_t d) {
  float peak = 0.0f;
#pragma omp simd reduction(max : peak)
  for (int64_t j = 0; j < d; ++j) {
    peak = std::max(peak, std::fabs(x[j]));  // a NaN row keeps its NaN through the GEMM
  }
  int e = 0;
  if (!(std::isfinite(peak) && peak > 0.0f)) {
    return 0;
  }
  std::frexp(peak, &e);
  const double factor = std::ldexp(1.0, -e);  // up to 2^149: not a float, so via double
#pragma omp simd
  for (int64_t j = 0; j < d; ++j) {
    x[j] = static_cast<float>(static_cast<double>(x[j]) * factor);
  }
  return e;
}

// knn_pruned_project(rows [n, d] any float dtype (as fp32), basis [d, p] fp64, unit, slack,
// proj_error) -> (proj [n, p] fp32, residual norms [n] fp32 rounded up, term [n] fp32): c = Vᵀx̂,
// x̂ = x / max(|x|, eps) if unit (term = that inverse norm) else x (term = |x|²), |x|² in float64.
//   proj_error = 0 (queries): c in float64 (ATen's mm, a BLAS dgemm; the products of fp32
//     values and float64 basis entries accumulate in whatever order the BLAS takes, within
//     d 2^-53 |x| per entry, which the slack and the caller's margin cover).
//   proj_error = e > 0 (bank rows): c from one fp32 GEMM (gemm_nt) of the rows, each scaled by a
//     power of two to a peak in [1/2, 1) first, with the basis rounded to fp32; the caller
//     guarantees |c̃ - c| <= e |x̂| for that arithmetic (ops.KNNIndex: e = 1.01 sqrt(p)
//     (γ_(d+2) + d 2^-146), the last term for products, sums and scaled entries that
//     underflow), and the residual is widened to match.
// Returns the first non-finite row in `bad` (or -1).
std::tuple<at::Tensor, at::Tensor, at::Tensor, int64_t> knn_pruned_project_cpu(
    const at::Tensor& rows, const at::Tensor& basis, bool unit, double slack, double proj_error) {
  check_feature_matrix(rows, "knn_pruned_project", "rows");
  const int64_t n = rows.size(0), d = rows.size(1), p = basis.size(1);
  TORCH_CHECK(basis.scalar_type() == at::kDouble && basis.is_contiguous() && basis.dim() == 2 &&
                  basis.size(0) == d && p >= 1,
              "knn_pruned_project: basis must be a contiguous float64 [d, p] matrix");
  TORCH_CHECK(proj_error >= 0 && std::isfinite(proj_error),
              "knn_pruned_project: proj_error must be finite and >= 0");
  const bool fp32 = proj_error > 0;
  const auto f32 = rows.options().dtype(at::kFloat);
  const auto f64 = rows.options().dtype(at::kDouble);
  at::Tensor proj = at::empty({n, p}, f32);
  at::Tensor res = at::empty({n}, f32);
  at::Tensor term = at::empty({n}, f32);
  float* pp = proj.data_ptr<float>();
  float* rp = res.data_ptr<float>();
  float* tp = term.data_ptr<float>();
  const int64_t block = std::min(kProjectBlock, std::max<int64_t>(n, 1));
  at::Tensor xs = at::empty({block, d}, fp32 ? f32 : f64);  // the block as the GEMM reads it
  at::Tensor cs = at::empty({block, p}, fp32 ? f32 : f64);
  // fp32: the basis transposed ([p, d], as gemm_nt's B) and rounded; each row's power of two
  const at::Tensor basis_t = fp32 ? basis.t().to(at::kFloat).contiguous() : at::Tensor();
  std::vector<int> exponents(fp32 ? block : 0);
  std::vector<double> squares(block);  // |x|² of each row of the block, in float64
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  auto flag_bad = [&](int64_t r) {
    int64_t seen = first_bad.load();
    while (r < seen && !first_bad.compare_exchange_weak(seen, r)) {
    }
  };
  for (int64_t start = 0; start < n; start += block) {
    const int64_t m = std::min(block, n - start);
    // the rows as fp32 (exact for fp16/bf16; float64 rows are rounded, as the kernels read them)
    const at::Tensor block_rows = rows.narrow(0, start, m);
    at::Tensor xb = xs.narrow(0, 0, m);
    xb.copy_(block_rows.scalar_type() == at::kDouble ? block_rows.to(at::kFloat) : block_rows);
    if (fp32) {
      float* xp = xs.data_ptr<float>();
      at::parallel_for(0, m, 64, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          float* x = xp + i * d;
          squares[i] = sum_sq<float>(x, d);  // of the row as stored, before any scaling
          exponents[i] = scale_to_unit_peak(x, d);
        }
      });
      gemm_nt(xp, d, basis_t.const_data_ptr<float>(), d, cs.data_ptr<float>(), p, m, p, d);
    } else {
      at::Tensor cb = cs.narrow(0, 0, m);
      at::mm_out(cb, xb, basis);
      const double* xp = xs.const_data_ptr<double>();
      at::parallel_for(0, m, 64, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          squares[i] = sum_sq<double>(xp + i * d, d);
        }
      });
    }
    const float* c32 = fp32 ? cs.const_data_ptr<float>() : nullptr;
    const double* c64 = fp32 ? nullptr : cs.const_data_ptr<double>();
    at::parallel_for(0, m, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r = start + i;
        const double back = fp32 ? std::ldexp(1.0, exponents[i]) : 1.0;  // undoes the scaling
        double sq = squares[i];
        if (!std::isfinite(sq)) {
          flag_bad(r);
          sq = 0.0;
        }
        double scale = 1.0;
        if (unit) {
          scale = 1.0 / std::max(std::sqrt(sq), kNormEps);
          tp[r] = static_cast<float>(scale);
        } else {
          tp[r] = static_cast<float>(sq);
        }
        double cc = 0.0;
        for (int64_t j = 0; j < p; ++j) {
          const double c = fp32 ? static_cast<double>(c32[i * p + j]) * back : c64[i * p + j];
          const double v = c * scale;
          pp[r * p + j] = static_cast<float>(v);
          cc += v * v;
        }
        rp[r] = residual_up(sq * scale * scale, cc, proj_error, slack);
      }
    });
  }
  const int64_t bad = first_bad.load();
  return {proj, res, term, bad == std::numeric_limits<int64_t>::max() ? -1 : bad};
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
  check_float(b_proj, "b_proj", {(n + kGroup - 1) / kGroup, p, kGroup});
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
// out[i, j] = the exact ranking value of query i and bank row indices[i, j] - offset, for the
// entries that fall inside this shard [offset, offset + n); the others are left as they are.
void knn_pruned_rescore_cpu(const at::Tensor& queries, const at::Tensor& q_sq,
                            const at::Tensor& bank, int64_t offset, const at::Tensor& indices,
                            const at::Tensor& b_term, c10::string_view metric, at::Tensor& out) {
  const bool cosine = metric_is_cosine(metric);
  check_feature_matrix(bank, "knn_pruned_rescore", "bank");
  const int64_t nq = queries.size(0), d = queries.size(1), n = bank.size(0);
  TORCH_CHECK(bank.size(1) == d, "knn_pruned_rescore: queries have ", d,
              " features but the bank has ", bank.size(1));
  TORCH_CHECK(indices.dim() == 2 && indices.size(0) == nq && indices.scalar_type() == at::kLong &&
                  indices.is_contiguous(),
              "knn_pruned_rescore: indices must be a contiguous int64 [Q, w] tensor");
  const int64_t w = indices.size(1);
  check_float(queries, "queries", {nq, d});
  if (!cosine) {
    check_float(q_sq, "q_sq", {nq});
  }
  check_float(b_term, "b_term", {n});
  check_float(out, "out", {nq, w});
  const float* qp = queries.const_data_ptr<float>();
  const int64_t* ip = indices.const_data_ptr<int64_t>();
  const float* tp = b_term.const_data_ptr<float>();
  const float* qs = cosine ? nullptr : q_sq.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, nq, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(static_cast<size_t>(w * d));
    std::vector<const float*> ptrs(static_cast<size_t>(w));
    std::vector<int64_t> slots(static_cast<size_t>(w));
    std::vector<float> dots(static_cast<size_t>(w));
    for (int64_t i = begin; i < end; ++i) {
      int64_t m = 0;
      for (int64_t j = 0; j < w; ++j) {
        const int64_t r = ip[i * w + j] - offset;
        if (r < 0 || r >= n) {
          continue;
        }
        float* dst = rows.data() + m * d;
        row_as_float(bank, r, dst);
        ptrs[m] = dst;
        slots[m++] = j;
      }
      dot_rows(qp + i * d, ptrs.data(), m, d, dots.data());
      for (int64_t c = 0; c < m; ++c) {
        const int64_t j = slots[c];
        const float term = tp[ip[i * w + j] - offset];
        op[i * w + j] = cosine ? exact_value<true>(dots[c], 0.0f, term)
                               : exact_value<false>(dots[c], qs[i], term);
      }
    }
  });
}

}  // namespace
}  // namespace ood_zoo

TORCH_LIBRARY_FRAGMENT(ood_zoo, m) {
  m.def("cpu_kernels() -> str", &ood_zoo::cpu_kernels);
  m.def(
      "knn_pruned_update(Tensor queries, Tensor q_proj, Tensor q_res, Tensor q_sq, Tensor bank, "
      "Tensor b_proj, Tensor b_res, Tensor b_term, int offset, Tensor(a!) values, "
      "Tensor(b!) indices, Tensor tau, str metric, bool seed, float margin, int tile_rows, "
      "Tensor(c!) stats) -> ()");
  m.def(
      "knn_pruned_project(Tensor rows, Tensor basis, bool unit, float slack, float proj_error=0) "
      "-> (Tensor proj, Tensor res, Tensor term, int bad_row)");
  m.def(
      "knn_pruned_rescore(Tensor queries, Tensor q_sq, Tensor bank, int offset, Tensor indices, "
      "Tensor b_term, str metric, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(ood_zoo, CPU, m) {
  m.impl("knn_pruned_update", &ood_zoo::knn_pruned_update_cpu);
  m.impl("knn_pruned_rescore", &ood_zoo::knn_pruned_rescore_cpu);
  m.impl("knn_pruned_project", &ood_zoo::knn_pruned_project_cpu);
}
