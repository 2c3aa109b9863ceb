"""Parity of the CUDA kNN kernel (``torch.ops.ood_zoo.knn`` on CUDA tensors) with float64.

bf16/fp16 queries with a bank of the same dtype run the tensor-core tiles (gemm_tc.cu); fp32,
fp64 and mixed inputs run the exact SIMT tiles. The reference is the full ``[Q, N]`` matrix in
float64 from the same (already rounded) inputs. Values are compared with tolerances; an index
is checked to carry the value reported for it, and exact ties must go to the lower index.
Every test here carries the ``cuda`` mark and skips without a GPU and ``ood_zoo.ops._C_cuda``.
"""

from __future__ import annotations

import pytest
import torch

from ood_zoo import ops
from ood_zoo.ops import extension

pytestmark = pytest.mark.cuda

#: (Q, N, d, k, tile_rows): unit sizes, d not a multiple of 8 or 16, N not a multiple of the
#: 128-row tensor-core tile nor of tile_rows, k = N, the fused top-k's limit and beyond it.
SHAPES = [
    (1, 1, 1, 1, 1),
    (37, 1000, 100, 10, 256),
    (130, 300, 33, 300, 128),
    (5, 77, 7, 77, 1000),
    (64, 5000, 768, 10, 1024),
    (3, 1500, 24, 1024, 700),
    (3, 1500, 24, 1100, 700),
]
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]


@pytest.fixture(autouse=True)
def _needs_cuda_ext() -> None:
    if not extension.cuda_available():
        pytest.skip(f"ood_zoo.ops._C_cuda: {extension.cuda_load_error()}")


def reference_scores(q: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """``[Q, N]`` cosine similarities (0 for a zero vector) or Euclidean distances, float64."""
    q, b = q.double(), b.double()
    if metric == "cosine":
        qn = q / q.norm(dim=1, keepdim=True).clamp_min(1e-300)
        bn = b / b.norm(dim=1, keepdim=True).clamp_min(1e-300)
        return qn @ bn.T
    d2 = (q * q).sum(1, keepdim=True) + (b * b).sum(1) - 2 * q @ b.T
    return d2.clamp_min(0).sqrt()


def tolerance(dtype: torch.dtype) -> float:
    """Absolute tolerance on cosines (relative for distances) of a dtype's accumulation."""
    return 1e-9 if dtype == torch.float64 else 2e-4


def check_knn(
    values: torch.Tensor,
    indices: torch.Tensor,
    q: torch.Tensor,
    b: torch.Tensor,
    k: int,
    metric: str,
) -> None:
    """Sorted values equal the reference's top-k; each index carries its value; no repeats."""
    largest = metric == "cosine"
    expected_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    assert values.dtype == expected_dtype
    assert indices.dtype == torch.int64
    assert values.shape == indices.shape == (q.shape[0], k)
    values, indices = values.cpu().double(), indices.cpu()
    ref = reference_scores(q.cpu(), b.cpu(), metric)
    ref_top = ref.sort(dim=1, descending=largest).values[:, :k]
    tol = tolerance(q.dtype)
    scale = 1.0 if largest else ref_top.abs().clamp_min(1.0)
    assert ((values - ref_top).abs() <= tol * scale).all(), (values - ref_top).abs().max()
    step = values.diff(dim=1)
    assert (step <= tol).all() if largest else (step >= -tol * scale[:, 1:]).all()
    assert ((indices >= 0) & (indices < b.shape[0])).all()
    carried = ref.gather(1, indices)
    assert ((carried - values).abs() <= tol * scale).all()
    assert all(len(set(row.tolist())) == k for row in indices)


def random_pair(q_rows: int, n: int, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(q_rows * 7919 + n * 31 + d)
    q = torch.randn(q_rows, d, generator=gen, dtype=torch.float64) + 0.3
    b = torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.3
    return q.to(dtype).cuda(), b.to(dtype).cuda()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_knn_op_matches_float64(shape, dtype, metric):
    q_rows, n, d, k, tile = shape
    q, b = random_pair(q_rows, n, d, dtype)
    values, indices = torch.ops.ood_zoo.knn(q, b, k, metric, tile)
    assert values.is_cuda
    assert indices.is_cuda
    check_knn(values, indices, q, b, k, metric)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_knn_op_mixed_inputs_stay_exact(dtype):
    """fp32 queries against a 16-bit bank are not rounded to 16 bits (the SIMT path)."""
    q, b = random_pair(20, 900, 50, torch.float32)
    b = b.to(dtype)
    values, indices = torch.ops.ood_zoo.knn(q, b, 5, "cosine", 256)
    ref = reference_scores(q.cpu(), b.cpu(), "cosine")
    assert (values.cpu().double() - ref.sort(1, descending=True).values[:, :5]).abs().max() < 1e-5
    assert (ref.gather(1, indices.cpu()) - values.cpu().double()).abs().max() < 1e-5


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_knn_op_ties_go_to_the_lower_index(dtype, metric):
    """A bank of three copies of 50 rows: each neighbour appears at i, i + 50, i + 100 in turn."""
    q, base = random_pair(9, 50, 40, dtype)
    b = torch.cat([base, base, base])
    k = 9
    values, indices = torch.ops.ood_zoo.knn(q, b, k, metric, 64)
    ref = reference_scores(q.cpu(), b.cpu(), metric)
    order = ref.argsort(dim=1, descending=metric == "cosine", stable=True)[:, :k]
    assert torch.equal(indices.cpu(), order)
    check_knn(values, indices, q, b, k, metric)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_knn_op_zero_vectors(dtype):
    """A zero query or bank row has cosine similarity 0 to everything."""
    q, b = random_pair(6, 200, 24, dtype)
    q[0] = 0
    b[3] = 0
    values, indices = torch.ops.ood_zoo.knn(q, b, 200, "cosine", 64)
    assert torch.equal(values[0].cpu(), torch.zeros(200, dtype=values.dtype))
    assert torch.equal(indices[0].cpu(), torch.arange(200))
    check_knn(values, indices, q, b, 200, "cosine")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_ops_knn_on_cuda_matches_float64(monkeypatch, dtype):
    """The Python contract: ops.knn with CUDA tensors, several chunks, ext backend."""
    monkeypatch.setenv("OOD_ZOO_BACKEND", "ext")
    q, b = random_pair(33, 2100, 72, dtype)
    for metric in ("cosine", "l2"):
        values, indices = ops.knn(q, b, 7, metric, chunk_rows=500)
        assert values.is_cuda
        check_knn(values, indices, q, b, 7, metric)
