// Providers of ood_zoo::gemm_nt (gemm.h), chosen once per process by measurement.
//
//   aten     ATen's mm (MKL on x86 builds of torch; always available, the fallback).
//   onednn   at::native::mkldnn_matmul, looked up at run time in libtorch_cpu (not a public API,
//            so it is resolved with dlsym and skipped when absent). torch 2.13 refuses it on CPUs
//            without AVX-512 BW/VL/DQ (e.g. Zen 3): it throws, and the calibration drops it.
//   openblas cblas_sgemm of an OpenBLAS already on the machine, loaded with dlopen: the one
//            faiss-cpu vendors (faiss_cpu.libs), scipy-openblas (scipy_openblas32, scipy.libs,
//            numpy.libs; symbols prefixed scipy_, 64-bit-int ones suffixed 64_), or a system
//            libopenblas.so.0, the first that loads (faiss's is OpenMP-threaded, so its idle
//            threads obey OMP_WAIT_POLICY). Never a link-time dependency.
//
// At first use, every available provider multiplies one representative tile
// (kCalM x kCalN x kCalK, about 2 GFLOP) a few times, interleaved; its result is checked against
// aten's and the fastest correct provider wins. Environment:
//   OOD_ZOO_GEMM=auto|aten|onednn|openblas   force a provider (falls back to aten, with the
//                                            reason in gemm_info(), when it is unavailable);
//   OOD_ZOO_OPENBLAS=/path/lib.so | none     the OpenBLAS to load, or none at all.
// Threads: OpenBLAS gets at::get_num_threads() (re-set whenever torch's count changes). A call
// from inside an at::parallel_for region runs on aten, which is sequential there, so no provider
// spawns a second pool inside torch's. torch.ops.ood_zoo.gemm_info() returns the choice as JSON.
#include "gemm.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <dlfcn.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace ood_zoo {
namespace {

enum Provider { kAten = 0, kOnednn = 1, kOpenblas = 2, kNumProviders = 3 };
constexpr const char* kNames[kNumProviders] = {"aten", "onednn", "openblas"};
constexpr int64_t kCalM = 512, kCalN = 2048, kCalK = 1024, kCalReps = 3;

// CBLAS enums: row-major 101, no-trans 111, trans 112.
using Sgemm32 = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                         float, float*, int);
using Sgemm64 = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                         const float*, int64_t, float, float*, int64_t);
using SetThreads32 = void (*)(int);
using SetThreads64 = void (*)(int64_t);
using Text = const char* (*)();
using MkldnnMatmul = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float,
                              float);

struct OpenBlas {
  std::string path, symbol, config, error;
  Sgemm32 sgemm32 = nullptr;
  Sgemm64 sgemm64 = nullptr;
  SetThreads32 set32 = nullptr;
  SetThreads64 set64 = nullptr;
  std::atomic<int> threads{-1};
  std::mutex threads_mutex;
  bool ok() const { return sgemm32 != nullptr || sgemm64 != nullptr; }
};

struct State {
  Provider chosen = kAten;
  std::string requested = "auto", reason;
  double gflops[kNumProviders] = {0, 0, 0};  // calibration rates; 0 = not measured
  double max_abs_err[kNumProviders] = {0, 0, 0};
  bool available[kNumProviders] = {true, false, false};
  std::string onednn_error;
  MkldnnMatmul onednn = nullptr;
  OpenBlas blas;
};

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// Path of libtorch_cpu.so, found from one of its symbols.
std::string torch_library_path() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&at::get_num_threads), &info) == 0 ||
      info.dli_fname == nullptr) {
    return {};
  }
  return info.dli_fname;
}

void resolve_onednn(State& s) {
  const std::string lib = torch_library_path();
  void* h = lib.empty() ? nullptr : dlopen(lib.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  void* sym = h == nullptr ? nullptr
                           : dlsym(h, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff");
  if (sym == nullptr) {
    s.onednn_error = "at::native::mkldnn_matmul not found in " + (lib.empty() ? "libtorch" : lib);
    return;
  }
  s.onednn = reinterpret_cast<MkldnnMatmul>(sym);
  s.available[kOnednn] = true;
}

std::vector<std::string> openblas_candidates() {
  namespace fs = std::filesystem;
  std::vector<std::string> out;
  const std::string lib = torch_library_path();  // .../site-packages/torch/lib/libtorch_cpu.so
  if (!lib.empty()) {
    const fs::path site = fs::path(lib).parent_path().parent_path().parent_path();
    const std::pair<const char*, const char*> dirs[] = {{"faiss_cpu.libs", "libopenblas"},
                                                        {"scipy_openblas32/lib", "libscipy_openblas"},
                                                        {"scipy.libs", "libscipy_openblas"},
                                                        {"numpy.libs", "libscipy_openblas"}};
    for (const auto& [dir, prefix] : dirs) {
      std::error_code ec;
      std::vector<std::string> found;
      for (const auto& e : fs::directory_iterator(site / dir, ec)) {
        const std::string name = e.path().filename().string();
        if (name.rfind(prefix, 0) == 0 && name.find(".so") != std::string::npos) {
          found.push_back(e.path().string());
        }
      }
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    }
  }
  out.emplace_back("libopenblas.so.0");
  out.emplace_back("libopenblas.so");
  return out;
}

// A wheel's vendored libraries (auditwheel's *.libs) find each other through the rpath of the
// module that uses them, not through their own: load the siblings first (those that load), so
// that the loader matches the OpenBLAS's DT_NEEDED entries against their sonames.
void preload_siblings(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<std::string> siblings;
  for (const auto& e : fs::directory_iterator(fs::path(path).parent_path(), ec)) {
    if (e.path().string() != path && e.path().filename().string().find(".so") !=
                                         std::string::npos) {
      siblings.push_back(e.path().string());
    }
  }
  for (int pass = 0; pass < 3; ++pass) {  // dependency order unknown: retry the failures
    for (const std::string& sib : siblings) {
      dlopen(sib.c_str(), RTLD_NOW | RTLD_LOCAL);
    }
  }
}

bool load_openblas(OpenBlas& b, const std::string& path) {
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr && path.find('/') != std::string::npos) {
    preload_siblings(path);
    h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  }
  if (h == nullptr) {
    const char* e = dlerror();
    b.error += (b.error.empty() ? "" : "; ") + path + ": " + (e ? e : "dlopen failed");
    return false;
  }
  // (sgemm, set_num_threads, get_config, get_corename) for the plain, scipy_ and 64-bit builds.
  struct Names {
    const char *gemm, *threads, *config, *core;
    bool wide;
  };
  constexpr Names kTries[] = {
      {"cblas_sgemm", "openblas_set_num_threads", "openblas_get_config",
       "openblas_get_corename", false},
      {"scipy_cblas_sgemm", "scipy_openblas_set_num_threads", "scipy_openblas_get_config",
       "scipy_openblas_get_corename", false},
      {"scipy_cblas_sgemm64_", "scipy_openblas_set_num_threads64_",
       "scipy_openblas_get_config64_", "scipy_openblas_get_corename64_", true},
      {"cblas_sgemm64_", "openblas_set_num_threads64_", "openblas_get_config64_",
       "openblas_get_corename64_", true},
  };
  for (const Names& n : kTries) {
    void* g = dlsym(h, n.gemm);
    if (g == nullptr) {
      continue;
    }
    void* t = dlsym(h, n.threads);
    if (n.wide) {
      b.sgemm64 = reinterpret_cast<Sgemm64>(g);
      b.set64 = reinterpret_cast<SetThreads64>(t);
    } else {
      b.sgemm32 = reinterpret_cast<Sgemm32>(g);
      b.set32 = reinterpret_cast<SetThreads32>(t);
    }
    b.path = path;
    b.symbol = n.gemm;
    auto config = reinterpret_cast<Text>(dlsym(h, n.config));
    auto core = reinterpret_cast<Text>(dlsym(h, n.core));
    b.config = std::string(config ? config() : "?") + ", core " + (core ? core() : "?");
    return true;
  }
  b.error += (b.error.empty() ? "" : "; ") + path + ": no cblas_sgemm symbol";
  dlclose(h);
  return false;
}

void resolve_openblas(State& s) {
  const std::string want = env("OOD_ZOO_OPENBLAS");
  if (want == "none") {
    s.blas.error = "disabled (OOD_ZOO_OPENBLAS=none)";
    return;
  }
  const std::vector<std::string> paths =
      want.empty() ? openblas_candidates() : std::vector<std::string>{want};
  for (const std::string& p : paths) {
    if (load_openblas(s.blas, p)) {  // error keeps why earlier candidates were skipped
      s.available[kOpenblas] = true;
      return;
    }
  }
}

State& state();

void sync_openblas_threads(OpenBlas& b) {
  const int want = std::max(1, at::get_num_threads());
  if (b.threads.load(std::memory_order_relaxed) == want) {
    return;
  }
  std::lock_guard<std::mutex> lock(b.threads_mutex);
  if (b.set32 != nullptr) {
    b.set32(want);
  } else if (b.set64 != nullptr) {
    b.set64(want);
  }
  b.threads.store(want);
}

bool fits_int32(int64_t lda, int64_t ldb, int64_t ldc, int64_t m, int64_t n, int64_t k) {
  return std::max({lda, ldb, ldc, m, n, k}) <= INT_MAX;
}

void run_aten(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
              int64_t m, int64_t n, int64_t k) {
  const auto options = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor ta = at::from_blob(const_cast<float*>(a), {m, k}, {lda, 1}, options);
  const at::Tensor tb = at::from_blob(const_cast<float*>(b), {n, k}, {ldb, 1}, options);
  at::Tensor tc = at::from_blob(c, {m, n}, {ldc, 1}, options);
  at::mm_out(tc, ta, tb.t());
}

void run(const State& s, Provider p, const float* a, int64_t lda, const float* b, int64_t ldb,
         float* c, int64_t ldc, int64_t m, int64_t n, int64_t k) {
  if (p == kOpenblas) {
    OpenBlas& blas = const_cast<State&>(s).blas;
    sync_openblas_threads(blas);
    if (blas.sgemm64 != nullptr) {
      blas.sgemm64(101, 111, 112, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
      return;
    }
    if (fits_int32(lda, ldb, ldc, m, n, k)) {
      blas.sgemm32(101, 111, 112, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
                   1.0f, a, static_cast<int>(lda), b, static_cast<int>(ldb), 0.0f, c,
                   static_cast<int>(ldc));
      return;
    }
  } else if (p == kOnednn) {
    const auto options = at::TensorOptions().dtype(at::kFloat);
    const at::Tensor ta = at::from_blob(const_cast<float*>(a), {m, k}, {lda, 1}, options);
    const at::Tensor tb = at::from_blob(const_cast<float*>(b), {n, k}, {ldb, 1}, options);
    const at::Tensor tc = at::from_blob(c, {m, n}, {ldc, 1}, options);
    s.onednn(ta, tb.t(), tc, /*beta=*/0.0f, /*alpha=*/1.0f);
    return;
  }
  run_aten(a, lda, b, ldb, c, ldc, m, n, k);
}

// Time each available provider on one representative tile, interleaved, best of kCalReps; a
// provider whose result differs from aten's (or that throws) is dropped.
// Operands of the calibration and probes: a fixed pseudo-random fill in [-1, 1), so that
// torch's global generator (the user's seeded stream) is never touched.
at::Tensor filled(int64_t rows, int64_t cols, uint32_t seed) {
  at::Tensor t = at::empty({rows, cols});
  float* p = t.data_ptr<float>();
  uint32_t x = seed;
  for (int64_t i = 0; i < rows * cols; ++i) {
    x = x * 1664525u + 1013904223u;
    p[i] = static_cast<float>(x >> 8) * (2.0f / 16777216.0f) - 1.0f;
  }
  return t;
}

void calibrate(State& s) {
  const at::Tensor a = filled(kCalM, kCalK, 1);
  const at::Tensor b = filled(kCalN, kCalK, 2);
  std::vector<at::Tensor> out;
  for (int p = 0; p < kNumProviders; ++p) {
    out.push_back(at::empty({kCalM, kCalN}));
  }
  const double flop = 2.0 * kCalM * kCalN * kCalK;
  double best[kNumProviders] = {1e30, 1e30, 1e30};
  for (int rep = 0; rep <= kCalReps; ++rep) {  // rep 0 warms up
    for (int p = 0; p < kNumProviders; ++p) {
      if (!s.available[p]) {
        continue;
      }
      try {
        const auto t0 = std::chrono::steady_clock::now();
        run(s, static_cast<Provider>(p), a.const_data_ptr<float>(), kCalK,
            b.const_data_ptr<float>(), kCalK, out[p].data_ptr<float>(), kCalN, kCalM, kCalN,
            kCalK);
        const double dt =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (rep > 0) {
          best[p] = std::min(best[p], dt);
        }
      } catch (const c10::Error& e) {  // e.g. torch's oneDNN fp32 path needs AVX-512 (BW/VL/DQ)
        s.available[p] = false;
        (p == kOnednn ? s.onednn_error : s.blas.error) =
            std::string("failed: ") + e.what_without_backtrace();
      } catch (const std::exception& e) {
        s.available[p] = false;
        (p == kOnednn ? s.onednn_error : s.blas.error) = std::string("failed: ") + e.what();
      }
    }
  }
  for (int p = 0; p < kNumProviders; ++p) {
    if (!s.available[p]) {
      continue;
    }
    const float* got = out[p].const_data_ptr<float>();
    const float* ref = out[kAten].const_data_ptr<float>();
    double err = 0;
    for (int64_t i = 0; i < kCalM * kCalN; ++i) {
      const double diff = std::abs(static_cast<double>(got[i]) - ref[i]);
      err = std::isnan(diff) ? INFINITY : std::max(err, diff);
    }
    s.max_abs_err[p] = err;
    if (!(s.max_abs_err[p] <= 1e-3 * std::sqrt(static_cast<double>(kCalK)))) {
      s.available[p] = false;
      (p == kOnednn ? s.onednn_error : s.blas.error) = "wrong result in calibration";
      continue;
    }
    s.gflops[p] = flop / best[p] / 1e9;
  }
}

// A forced oneDNN is tried once on a small product first: torch's mkldnn_matmul refuses CPUs
// without AVX-512 (or AVX-NE-CONVERT), and the calibration, which would notice, is skipped.
void probe_onednn(State& s) {
  const at::Tensor a = filled(8, 16, 3);
  at::Tensor c = at::empty({8, 8});
  try {
    run(s, kOnednn, a.const_data_ptr<float>(), 16, a.const_data_ptr<float>(), 16,
        c.data_ptr<float>(), 8, 8, 8, 16);
  } catch (const c10::Error& e) {
    s.available[kOnednn] = false;
    s.onednn_error = std::string("failed: ") + e.what_without_backtrace();
  }
}

void init(State& s) {
  resolve_onednn(s);
  resolve_openblas(s);
  const std::string req = env("OOD_ZOO_GEMM");
  if (req.empty() || req == "auto") {
    calibrate(s);
    for (int p = 0; p < kNumProviders; ++p) {
      if (s.available[p] && s.gflops[p] > s.gflops[s.chosen]) {
        s.chosen = static_cast<Provider>(p);
      }
    }
    s.reason = "fastest in calibration";
    return;
  }
  s.requested = req;
  if (req == "onednn" && s.available[kOnednn]) {
    probe_onednn(s);
  }
  const auto it = std::find(std::begin(kNames), std::end(kNames), req);
  if (it == std::end(kNames)) {
    s.reason = "unknown OOD_ZOO_GEMM='" + req + "' (expected auto, aten, onednn or openblas); aten";
  } else if (!s.available[it - std::begin(kNames)]) {
    s.reason = req + " requested but unavailable; aten";
  } else {
    s.chosen = static_cast<Provider>(it - std::begin(kNames));
    s.reason = "OOD_ZOO_GEMM=" + req;
  }
}

State& state() {
  static State s;
  static std::once_flag once;
  std::call_once(once, [] { init(s); });  // thread-safe one-time initialisation and calibration
  return s;
}

std::string json_str(const std::string& v) {
  std::string out = "\"";
  for (const char ch : v) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      out += ' ';
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string gemm_info() {
  const State& s = state();
  std::ostringstream o;
  o << "{\"provider\": " << json_str(kNames[s.chosen]) << ", \"requested\": "
    << json_str(s.requested) << ", \"reason\": " << json_str(s.reason)
    << ", \"threads\": " << at::get_num_threads() << ", \"calibration_shape\": [" << kCalM
    << ", " << kCalN << ", " << kCalK << "], \"gflops\": {";
  bool first = true;
  for (int p = 0; p < kNumProviders; ++p) {
    if (s.gflops[p] > 0) {
      o << (first ? "" : ", ") << json_str(kNames[p]) << ": " << s.gflops[p];
      first = false;
    }
  }
  o << "}, \"available\": [";
  first = true;
  for (int p = 0; p < kNumProviders; ++p) {
    if (s.available[p]) {
      o << (first ? "" : ", ") << json_str(kNames[p]);
      first = false;
    }
  }
  o << "], \"openblas\": {\"path\": " << json_str(s.blas.path) << ", \"symbol\": "
    << json_str(s.blas.symbol) << ", \"config\": " << json_str(s.blas.config)
    << ", \"error\": " << json_str(s.blas.error) << "}, \"onednn_error\": "
    << json_str(s.onednn_error) << "}";
  return o.str();
}

// Test entry: c = a @ b.T through one named provider ("" = the chosen one). a [m, k], b [n, k]
// and c [m, n] float32 with unit column stride; their row strides are the leading dimensions.
void gemm_nt_out(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                 c10::string_view provider) {
  for (const at::Tensor* t : {&a, &b, &c}) {
    TORCH_CHECK(t->dim() == 2 && t->scalar_type() == at::kFloat && t->device().is_cpu() &&
                    (t->size(1) <= 1 || t->stride(1) == 1) && t->stride(0) >= t->size(1),
                "gemm_nt_out: operands must be 2-D float32 CPU matrices with unit column stride");
  }
  TORCH_CHECK(a.size(1) == b.size(1) && c.size(0) == a.size(0) && c.size(1) == b.size(0),
              "gemm_nt_out: shapes ", a.sizes(), " x ", b.sizes(), "^T -> ", c.sizes());
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  const int64_t lda = std::max<int64_t>(a.stride(0), 1), ldb = std::max<int64_t>(b.stride(0), 1),
                ldc = std::max<int64_t>(c.stride(0), 1);
  if (provider.empty()) {
    gemm_nt(a.const_data_ptr<float>(), lda, b.const_data_ptr<float>(), ldb, c.data_ptr<float>(),
            ldc, m, n, k);
    return;
  }
  const State& s = state();
  const auto it = std::find(std::begin(kNames), std::end(kNames), provider);
  TORCH_CHECK(it != std::end(kNames), "gemm_nt_out: unknown provider '", provider, "'");
  const auto p = static_cast<Provider>(it - std::begin(kNames));
  TORCH_CHECK(s.available[p], "gemm_nt_out: provider '", provider, "' is unavailable");
  if (m == 0 || n == 0) {
    return;
  }
  if (k == 0) {
    c.zero_();
    return;
  }
  run(s, p, a.const_data_ptr<float>(), lda, b.const_data_ptr<float>(), ldb, c.data_ptr<float>(),
      ldc, m, n, k);
}

}  // namespace

void gemm_nt(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
             int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0) {
    return;
  }
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) {
      std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    }
    return;
  }
  const State& s = state();
  // Inside torch's parallel region aten runs sequentially; the others would nest a second pool.
  const Provider p = at::in_parallel_region() ? kAten : s.chosen;
  run(s, p, a, lda, b, ldb, c, ldc, m, n, k);
}

}  // namespace ood_zoo

TORCH_LIBRARY_FRAGMENT(ood_zoo, m) {
  m.def("gemm_info() -> str", &ood_zoo::gemm_info);
  m.def("gemm_nt_out(Tensor a, Tensor b, Tensor(a!) c, str provider=\"\") -> ()");
}

TORCH_LIBRARY_IMPL(ood_zoo, CPU, m) { m.impl("gemm_nt_out", &ood_zoo::gemm_nt_out); }
