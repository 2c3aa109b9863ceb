// C++ entry points of the ood_zoo ops. They call through the dispatcher, which picks the CPU or
// CUDA kernel from the inputs' device; Python reaches the same ops as torch.ops.ood_zoo.*.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <tuple>

namespace ood_zoo {

//! Exact k nearest neighbours of each query row in the bank, best first (see knn.cpp).
std::tuple<at::Tensor, at::Tensor> knn(const at::Tensor& queries, const at::Tensor& bank,
                                       int64_t k, c10::string_view metric, int64_t tile_rows);

//! Minimum squared Mahalanobis distance over the classes, and its class (see mahalanobis.cpp).
std::tuple<at::Tensor, at::Tensor> mahalanobis(const at::Tensor& queries,
                                               const at::Tensor& whitening,
                                               const at::Tensor& class_means,
                                               const at::Tensor& center, int64_t tile_rows);

}  // namespace ood_zoo
