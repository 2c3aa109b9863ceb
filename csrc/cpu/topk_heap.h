// Bounded top-k heaps shared by the CPU kNN kernels: worst entry at the root, ties to the lower
// index, so every kernel ranks candidates the same way.
#pragma once

#include <cstdint>

namespace ood_zoo {

// Ranking order: similarities descend (Largest), distances ascend; ties go to the lower index.
template <typename T, bool Largest>
inline bool better(T av, int64_t ai, T bv, int64_t bi) {
  if (av != bv) {
    return Largest ? av > bv : av < bv;
  }
  return ai < bi;
}

// Insert into a heap of `size` < k entries whose root is the worst one.
template <typename T, bool Largest>
inline void heap_push(T* hv, int64_t* hi, int64_t size, T v, int64_t i) {
  int64_t pos = size;
  while (pos > 0) {
    const int64_t parent = (pos - 1) / 2;
    if (!better<T, Largest>(hv[parent], hi[parent], v, i)) {
      break;
    }
    hv[pos] = hv[parent];
    hi[pos] = hi[parent];
    pos = parent;
  }
  hv[pos] = v;
  hi[pos] = i;
}

// Replace the root (the worst entry) of a full heap of k entries and sift the newcomer down.
template <typename T, bool Largest>
inline void heap_replace_root(T* hv, int64_t* hi, int64_t k, T v, int64_t i) {
  int64_t pos = 0;
  while (true) {
    int64_t child = 2 * pos + 1;
    if (child >= k) {
      break;
    }
    if (child + 1 < k && better<T, Largest>(hv[child], hi[child], hv[child + 1], hi[child + 1])) {
      ++child;  // descend towards the worse child
    }
    if (!better<T, Largest>(v, i, hv[child], hi[child])) {
      break;
    }
    hv[pos] = hv[child];
    hi[pos] = hi[child];
    pos = child;
  }
  hv[pos] = v;
  hi[pos] = i;
}

}  // namespace ood_zoo
