// Row helpers shared by the CPU kNN kernels.
#pragma once

#include <cstdint>

#include "../common.h"

namespace ood_zoo {
// Internal linkage: every kernel TU gets its own ISA clones (target_clones on a function shared
// across TUs would need one resolver for all of them).
namespace {

// Sum of squares in double (vectorised: the simd reduction may reassociate the sum).
template <typename T>
OOD_ZOO_CLONES double sum_sq(const T* x, int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) {
    acc += static_cast<double>(x[j]) * static_cast<double>(x[j]);
  }
  return acc;
}

}  // namespace
}  // namespace ood_zoo
