// Torch glue of the ood_zoo CUDA kernels: argument checks, dtype handling, the current stream,
// TORCH_LIBRARY_IMPL(ood_zoo, CUDA) and the (empty) Python module ood_zoo.ops._C_cuda. The kernels
// themselves live in knn_cuda.cu (SIMT fp32/fp64 GEMM, norms, fused top-k), gemm_tc.cu (tensor-
// core GEMM for bf16/fp16) and mahalanobis_cuda.cu behind the raw-pointer launchers of kernels.h. The op schemas are defined by ood_zoo.ops._C, which must be imported first.
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <Python.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "../common.h"
#include "kernels.h"

namespace ood_zoo {
namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "ood_zoo CUDA kernel ", what, " failed: ",
              cudaGetErrorString(err));
}

template <typename T>
void knn_cuda_kernel(const at::Tensor& q, const at::Tensor& bank, int64_t k, bool cosine,
                     int64_t tile_rows, at::Tensor& values, at::Tensor& indices,
                     cudaStream_t stream) {
  const int64_t nq = q.size(0);
  const int64_t d = q.size(1);
  const int64_t n_bank = bank.size(0);
  const int64_t tile = std::min(tile_rows, n_bank);
  const bool fused = k <= cuda::kMaxFusedK;
  const auto epi = cosine ? cuda::Epilogue::kCosine : cuda::Epilogue::kSqDistClamped;

  at::Tensor q_term = q.new_empty({nq});
  check_launch(cuda::row_norms(q.const_data_ptr<T>(), nq, d, d, cosine, q_term.data_ptr<T>(),
                               stream),
               "row_norms");
  at::Tensor b_term = q.new_empty({tile});
  at::Tensor scores = q.new_empty({nq, tile});
  if (fused) {
    check_launch(cuda::topk_init(values.data_ptr<T>(), indices.data_ptr<int64_t>(), nq * k,
                                 cosine, stream),
                 "topk_init");
  }

  for (int64_t start = 0; start < n_bank; start += tile) {
    const int64_t n = std::min(tile, n_bank - start);
    const at::Tensor b = bank.narrow(0, start, n).to(q.scalar_type()).contiguous();
    check_launch(cuda::row_norms(b.const_data_ptr<T>(), n, d, d, cosine, b_term.data_ptr<T>(),
                                 stream),
                 "row_norms");
    check_launch(cuda::gemm_nt(q.const_data_ptr<T>(), nullptr, b.const_data_ptr<T>(),
                               scores.data_ptr<T>(), nq, n, d, d, d, tile, epi,
                               q_term.const_data_ptr<T>(), b_term.const_data_ptr<T>(), stream),
                 "gemm_nt");
    if (fused) {
      check_launch(cuda::topk_merge(scores.const_data_ptr<T>(), nq, n, tile, start, cosine, k,
                                    values.data_ptr<T>(), indices.data_ptr<int64_t>(), stream),
                   "topk_merge");
    } else {
      // k above the fused kernel's limit: torch's topk on [running k | this tile].
      const at::Tensor block = scores.narrow(1, 0, n);
      auto [tv, ti] = block.topk(std::min(k, n), 1, cosine, /*sorted=*/false);
      ti.add_(start);
      if (start > 0) {
        const at::Tensor cand_v = at::cat({values, tv}, 1);
        const at::Tensor cand_i = at::cat({indices, ti}, 1);
        auto [mv, pos] = cand_v.topk(k, 1, cosine, /*sorted=*/false);
        values.copy_(mv);
        indices.copy_(cand_i.gather(1, pos));
      } else {
        values.copy_(tv);
        indices.copy_(ti);
      }
    }
  }
  if (!fused) {
    auto [sorted_v, order] = values.sort(1, /*descending=*/cosine);
    const at::Tensor sorted_i = indices.gather(1, order);
    values.copy_(sorted_v);
    indices.copy_(sorted_i);
  }
  if (!cosine) {
    values.sqrt_();
  }
}

// knn for queries and bank in the same 16-bit dtype: each bank tile's GEMM on the tensor cores
// (gemm_nt_tc, fp32 accumulation; 16-bit products are exact in fp32), fp32 scores, then the same
// fused top-k as the fp32 path. Needs k <= kMaxFusedK (the caller checks).
void knn_cuda_tc(const at::Tensor& q, const at::Tensor& bank, int64_t k, bool cosine,
                 int64_t tile_rows, at::Tensor& values, at::Tensor& indices, cudaStream_t stream) {
  const int64_t nq = q.size(0);
  const int64_t d = q.size(1);
  const int64_t n_bank = bank.size(0);
  const int64_t tile = std::min(tile_rows, n_bank);
  const auto kind =
      q.scalar_type() == at::kBFloat16 ? cuda::HalfKind::kBFloat16 : cuda::HalfKind::kFloat16;
  const auto epi = cosine ? cuda::Epilogue::kCosine : cuda::Epilogue::kSqDistClamped;
  const auto bits = [](const at::Tensor& t) {
    return static_cast<const uint16_t*>(t.const_data_ptr());
  };
  const auto f32 = q.options().dtype(at::kFloat);

  at::Tensor q_term = at::empty({nq}, f32);
  check_launch(cuda::row_norms_16(bits(q), nq, d, d, kind, cosine, q_term.data_ptr<float>(),
                                  stream),
               "row_norms_16");
  at::Tensor b_term = at::empty({tile}, f32);
  at::Tensor scores = at::empty({nq, tile}, f32);
  check_launch(cuda::topk_init(values.data_ptr<float>(), indices.data_ptr<int64_t>(), nq * k,
                               cosine, stream),
               "topk_init");
  for (int64_t start = 0; start < n_bank; start += tile) {
    const int64_t n = std::min(tile, n_bank - start);
    const at::Tensor b = bank.narrow(0, start, n).contiguous();
    check_launch(cuda::row_norms_16(bits(b), n, d, d, kind, cosine, b_term.data_ptr<float>(),
                                    stream),
                 "row_norms_16");
    check_launch(cuda::gemm_nt_tc(bits(q), bits(b), scores.data_ptr<float>(), nq, n, d, d, d,
                                  tile, kind, epi, q_term.const_data_ptr<float>(),
                                  b_term.const_data_ptr<float>(), stream),
                 "gemm_nt_tc");
    check_launch(cuda::topk_merge(scores.const_data_ptr<float>(), nq, n, tile, start, cosine, k,
                                  values.data_ptr<float>(), indices.data_ptr<int64_t>(), stream),
                 "topk_merge");
  }
  if (!cosine) {
    values.sqrt_();
  }
}

// Queries and bank of one 16-bit dtype go to the tensor cores (on sm_80+, for k <= kMaxFusedK);
// every other combination is converted to fp32 (fp64 for fp64 queries) and runs the exact SIMT
// GEMM, so mixed inputs (fp32 queries, bf16 bank) are never rounded to 16 bits.
std::tuple<at::Tensor, at::Tensor> knn_cuda(const at::Tensor& queries, const at::Tensor& bank,
                                            int64_t k, c10::string_view metric,
                                            int64_t tile_rows) {
  check_knn_args(queries, bank, k, tile_rows);
  const bool cosine = metric_is_cosine(metric);
  const c10::cuda::CUDAGuard guard(queries.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::ScalarType dtype = compute_dtype(queries.scalar_type());
  const bool half_inputs = (queries.scalar_type() == at::kBFloat16 ||
                            queries.scalar_type() == at::kHalf) &&
                           bank.scalar_type() == queries.scalar_type();
  const bool tensor_cores = half_inputs && k <= cuda::kMaxFusedK && cuda::gemm_tc_supported();
  const at::Tensor q = tensor_cores ? queries.contiguous() : queries.to(dtype).contiguous();
  const auto out_options = q.options().dtype(dtype);
  at::Tensor values = at::empty({q.size(0), k}, out_options);
  at::Tensor indices = at::empty({q.size(0), k}, out_options.dtype(at::kLong));
  if (q.size(0) == 0) {
    return {values, indices};
  }
  if (tensor_cores) {
    knn_cuda_tc(q, bank, k, cosine, tile_rows, values, indices, stream);
  } else if (dtype == at::kDouble) {
    knn_cuda_kernel<double>(q, bank, k, cosine, tile_rows, values, indices, stream);
  } else {
    knn_cuda_kernel<float>(q, bank, k, cosine, tile_rows, values, indices, stream);
  }
  return {values, indices};
}

template <typename T>
void mahalanobis_cuda_kernel(const at::Tensor& queries, const at::Tensor& w, const at::Tensor& mu,
                             const at::Tensor& m, int64_t tile_rows, at::Tensor& min_d2,
                             at::Tensor& argmin, cudaStream_t stream) {
  const int64_t nq = queries.size(0);
  const int64_t d = w.size(0);
  const int64_t r = w.size(1);
  const int64_t n_classes = mu.size(0);
  const at::Tensor wt = w.t().contiguous();  // [r, d]: gemm_nt multiplies by its transpose

  // N = (mu - m) W and |n_c|^2, once.
  at::Tensor means_white = w.new_empty({n_classes, r});
  check_launch(cuda::gemm_nt(mu.const_data_ptr<T>(), m.const_data_ptr<T>(), wt.const_data_ptr<T>(),
                             means_white.data_ptr<T>(), n_classes, r, d, d, d, r,
                             cuda::Epilogue::kPlain, nullptr, nullptr, stream),
               "gemm_nt");
  at::Tensor means_sq = w.new_empty({n_classes});
  check_launch(cuda::row_norms(means_white.const_data_ptr<T>(), n_classes, r, r, false,
                               means_sq.data_ptr<T>(), stream),
               "row_norms");

  const int64_t tile = std::max<int64_t>(1, std::min(tile_rows, nq));
  at::Tensor z = w.new_empty({tile, r});
  at::Tensor z_sq = w.new_empty({tile});
  at::Tensor d2 = w.new_empty({tile, n_classes});
  for (int64_t start = 0; start < nq; start += tile) {
    const int64_t n = std::min(tile, nq - start);
    const at::Tensor x = queries.narrow(0, start, n).to(w.scalar_type()).contiguous();
    check_launch(cuda::gemm_nt(x.const_data_ptr<T>(), m.const_data_ptr<T>(),
                               wt.const_data_ptr<T>(), z.data_ptr<T>(), n, r, d, d, d, r,
                               cuda::Epilogue::kPlain, nullptr, nullptr, stream),
                 "gemm_nt");
    check_launch(cuda::row_norms(z.const_data_ptr<T>(), n, r, r, false, z_sq.data_ptr<T>(),
                                 stream),
                 "row_norms");
    check_launch(cuda::gemm_nt(z.const_data_ptr<T>(), nullptr, means_white.const_data_ptr<T>(),
                               d2.data_ptr<T>(), n, n_classes, r, r, r, n_classes,
                               cuda::Epilogue::kSqDist, z_sq.const_data_ptr<T>(),
                               means_sq.const_data_ptr<T>(), stream),
                 "gemm_nt");
    check_launch(cuda::row_argmin(d2.const_data_ptr<T>(), n, n_classes, n_classes,
                                  min_d2.data_ptr<T>() + start,
                                  argmin.data_ptr<int64_t>() + start, stream),
                 "row_argmin");
  }
}

std::tuple<at::Tensor, at::Tensor> mahalanobis_cuda(const at::Tensor& queries,
                                                    const at::Tensor& whitening,
                                                    const at::Tensor& class_means,
                                                    const at::Tensor& center, int64_t tile_rows) {
  check_mahalanobis_args(queries, whitening, class_means, center, tile_rows);
  const c10::cuda::CUDAGuard guard(queries.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::ScalarType dtype = compute_dtype(queries.scalar_type());
  const at::Tensor w = whitening.to(dtype).contiguous();
  const at::Tensor mu = class_means.to(dtype).contiguous();
  const at::Tensor m = center.to(dtype).contiguous();
  at::Tensor min_d2 = w.new_empty({queries.size(0)});
  at::Tensor argmin = w.new_empty({queries.size(0)}, w.options().dtype(at::kLong));
  if (queries.size(0) == 0) {
    return {min_d2, argmin};
  }
  if (dtype == at::kDouble) {
    mahalanobis_cuda_kernel<double>(queries, w, mu, m, tile_rows, min_d2, argmin, stream);
  } else {
    mahalanobis_cuda_kernel<float>(queries, w, mu, m, tile_rows, min_d2, argmin, stream);
  }
  return {min_d2, argmin};
}

}  // namespace
}  // namespace ood_zoo

TORCH_LIBRARY_IMPL(ood_zoo, CUDA, m) {
  m.impl("knn", &ood_zoo::knn_cuda);
  m.impl("mahalanobis", &ood_zoo::mahalanobis_cuda);
}

PyMODINIT_FUNC PyInit__C_cuda(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda",
                               "Registers the ood_zoo CUDA kernels (torch.ops.ood_zoo.*).", -1,
                               nullptr};
  return PyModule_Create(&module);
}
