"""pytest-benchmark entries for exact cosine kNN at a small shape (N=20k, d=1024, Q=256, k=10).

Runs in seconds; compare ``extra_info["gflops"]`` with the machine's GEMM peak (RESULTS.md,
"Kernels (CPU)"), not absolute times. Every entry also checks its neighbours against faiss.

    PYTHONPATH=. .venv/bin/pytest benchmarks/bench_knn.py --benchmark-enable -p no:cacheprovider

The full-size side-by-side table is benchmarks/compare_knn.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_zoo import ops
from ood_zoo.ops import extension

K = 10


def _faiss_search(queries: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    return index.search(queries, K)


def _torch_topk(queries: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top = (torch.from_numpy(queries) @ torch.from_numpy(bank).T).topk(K, dim=1)
    return top.values.numpy(), top.indices.numpy()


def _ood_zoo(backend: str, precision: str):
    def search(queries: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OOD_ZOO_BACKEND", backend)
            return ops.knn(queries, bank, K, "cosine", precision=precision)

    return search


needs_ext = pytest.mark.skipif(not extension.available(), reason="C++ extension not built")
CONTENDERS = {
    "ood_zoo-ext-exact": pytest.param(_ood_zoo("ext", "exact"), marks=needs_ext),
    "ood_zoo-ext-bf16": pytest.param(_ood_zoo("ext", "bf16"), marks=needs_ext),
    "ood_zoo-torch": _ood_zoo("torch", "exact"),
    "faiss-IndexFlatIP": _faiss_search,
    "torch-matmul-topk-fp32": _torch_topk,
}


@pytest.mark.parametrize("search", list(CONTENDERS.values()), ids=list(CONTENDERS))
def test_knn_cosine(benchmark, knn_data, search):
    pytest.importorskip("faiss")
    queries, bank = knn_data
    values, indices = benchmark(search, queries, bank)
    flops = 2.0 * queries.shape[0] * bank.shape[0] * bank.shape[1]
    if benchmark.stats is not None:
        benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.median / 1e9
    benchmark.extra_info["bf16_gemm_native"] = ops.bf16_gemm_native()
    ref_values, ref_indices = _faiss_search(queries, bank)
    np.testing.assert_allclose(np.asarray(values), ref_values, atol=2e-5)
    same = np.mean([len(set(a) & set(b)) / K for a, b in zip(indices, ref_indices, strict=True)])
    assert same > 0.999
