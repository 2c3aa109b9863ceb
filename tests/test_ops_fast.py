"""Tests of ``ops.knn(..., precision="bf16")``: bf16 GEMM tiles with an exact re-rank.

The bf16 path is forced on (``bf16_gemm_native``) so that it runs on any CPU; the results must
equal a float64 reference in values (fp32 tolerance) and in neighbour sets wherever the
reference's k-th and (k+1)-th values are not tied.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_ops import as_f64, assert_knn, gaussian, ref_scores

from ood_zoo import ops
from ood_zoo.errors import InputError
from ood_zoo.ops import extension

pytestmark = pytest.mark.skipif(
    not extension.available(), reason=f"C++ extension: {extension.load_error()}"
)


@pytest.fixture(autouse=True)
def _force_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OOD_ZOO_BACKEND", "ext")
    monkeypatch.delenv("OOD_ZOO_KNN_PRECISION", raising=False)
    monkeypatch.setattr(ops.dense, "bf16_gemm_native", lambda: True)


def assert_exact_sets(indices, queries, bank, k: int, metric: str, *, gap: float = 1e-6):
    """Neighbour sets equal the float64 reference's except where the k-th value is tied."""
    full = ref_scores(queries, bank, metric)
    sign = -1.0 if metric == "cosine" else 1.0
    order = np.argsort(sign * full, axis=1, kind="stable")
    indices = indices.numpy() if isinstance(indices, torch.Tensor) else indices
    checked = 0
    for r in range(full.shape[0]):
        if k < full.shape[1]:
            kth, nxt = full[r, order[r, k - 1]], full[r, order[r, k]]
            if abs(kth - nxt) <= gap * max(1.0, abs(kth)):
                continue
        assert set(indices[r].tolist()) == set(order[r, :k].tolist()), f"query {r}"
        checked += 1
    return checked


def raw_update(q: torch.Tensor, b: torch.Tensor, k: int, metric: str, tile: int, cap: int):
    n_q = q.shape[0]
    values = torch.full((n_q, k), -np.inf if metric == "cosine" else np.inf, dtype=torch.float64)
    indices = torch.full((n_q, k), torch.iinfo(torch.int64).max)
    counts = torch.zeros(n_q, dtype=torch.int64)
    torch.ops.ood_zoo.knn_bf16_update(q, b, 0, values, indices, counts, metric, tile, cap)
    return values, indices, counts


def near_ties(rng: np.random.Generator, n: int, d: int, noise: float) -> np.ndarray:
    """Rows that differ far less than bf16 can resolve (relative 2^-9)."""
    base = gaussian(rng, 1, d)
    return (base + noise * rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize(
    ("n_q", "n_bank", "d", "k", "chunk"),
    [
        (1, 1, 1, 1, None),
        (9, 300, 70, 1, 64),  # k = 1, several tiles
        (5, 120, 33, 120, 17),  # k = N over several tiles
        (16, 2000, 128, 10, 300),
        (4, 257, 256, 100, None),
    ],
)
def test_bf16_matches_reference(rng, metric, n_q, n_bank, d, k, chunk):
    q, b = gaussian(rng, n_q, d), gaussian(rng, n_bank, d)
    values, indices = ops.knn(q, b, k, metric, chunk_rows=chunk, precision="bf16")
    assert values.dtype == np.float32
    assert_knn(values, indices, q, b, k, metric)
    assert assert_exact_sets(indices, q, b, k, metric) >= n_q // 2


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_bf16_bank_and_query_dtypes(rng, metric, dtype):
    q_dtype = torch.float32 if dtype == torch.float64 else dtype
    q = torch.from_numpy(gaussian(rng, 6, 48)).to(q_dtype)
    b = torch.from_numpy(gaussian(rng, 400, 48)).to(dtype)
    values, indices = ops.knn(q, b, 7, metric, chunk_rows=50, precision="bf16")
    assert values.dtype == torch.float32
    assert_knn(values, indices, q, b, 7, metric)
    assert_exact_sets(indices, q, b, 7, metric)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_bf16_adversarial_near_ties_are_ranked_exactly(rng, metric):
    b = near_ties(rng, 1500, 64, noise=3e-4)
    q = gaussian(rng, 5, 64)
    k = 10
    # The construction defeats a bf16-only ranking: its top-k differs from the exact one.
    qb = torch.from_numpy(q).bfloat16().double()
    bb = torch.from_numpy(b).bfloat16().double()
    approx = (qb @ bb.T) if metric == "cosine" else -torch.cdist(qb, bb)
    naive = approx.topk(k, dim=1).indices.numpy()
    full = ref_scores(q, b, metric)
    exact = np.argsort((-1 if metric == "cosine" else 1) * full, axis=1, kind="stable")[:, :k]
    assert any(set(naive[r]) != set(exact[r]) for r in range(len(q)))
    values, indices = ops.knn(q, b, k, metric, chunk_rows=256, precision="bf16")
    assert_knn(values, indices, q, b, k, metric)
    assert assert_exact_sets(indices, q, b, k, metric, gap=1e-9) == len(q)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_bf16_overflow_falls_back_to_fp32(rng, monkeypatch, metric):
    b = near_ties(rng, 800, 32, noise=1e-5)
    q = gaussian(rng, 3, 32)
    _, _, counts = raw_update(torch.from_numpy(q), torch.from_numpy(b), 2, metric, 128, 40)
    assert (counts == -1).all(), "near-ties should exceed a cap of 40 re-scores"
    monkeypatch.setattr(ops.dense, "BF16_MAX_RESCORE", 1)  # cap = 32 k
    values, indices = ops.knn(q, b, 2, metric, chunk_rows=128, precision="bf16")
    assert_knn(values, indices, q, b, 2, metric)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_bf16_bound_prunes_most_rows(rng, metric):
    q, b = torch.from_numpy(gaussian(rng, 8, 256)), torch.from_numpy(gaussian(rng, 4000, 256))
    values, _, counts = raw_update(q, b, 5, metric, 1000, 10**6)
    assert (counts >= 5).all()
    # ~k ln(N/k) + a few margin rows, far from the 4000 of a re-rank of everything
    assert counts.max() < 200, counts
    order = values.argsort(dim=1, descending=metric == "cosine")
    got = values.gather(1, order)
    expected = ref_scores(q, b, metric)
    expected = -np.sort(-expected, axis=1) if metric == "cosine" else np.sort(expected**2, axis=1)
    np.testing.assert_allclose(got.numpy(), expected[:, :5], rtol=1e-9, atol=1e-9)


def test_bf16_memmaps_and_shards(rng, tmp_path):
    bank = gaussian(rng, 700, 40)
    q = gaussian(rng, 6, 40)
    path16 = tmp_path / "fp16.npy"
    mm = np.lib.format.open_memmap(path16, mode="w+", dtype=np.float16, shape=bank.shape)
    mm[:] = bank
    mm.flush()
    del mm
    fp16 = np.load(path16, mmap_mode="r")
    # bf16 bits stored as uint16, viewed as bf16 without conversion
    bits = torch.from_numpy(bank).bfloat16().view(torch.int16).numpy().view(np.uint16)
    path_bits = tmp_path / "bf16bits.npy"
    mm = np.lib.format.open_memmap(path_bits, mode="w+", dtype=np.uint16, shape=bank.shape)
    mm[:] = bits
    mm.flush()
    del mm
    bits_mm = np.load(path_bits, mmap_mode="r+")  # writable: torch warns on read-only arrays
    bf16 = torch.from_numpy(bits_mm).view(torch.bfloat16)
    for metric in ("cosine", "l2"):
        for b, ref in ((fp16, as_f64(fp16)), (bf16, as_f64(bf16))):
            values, indices = ops.knn(q, b, 9, metric, chunk_rows=64, precision="bf16")
            assert_knn(values, indices, q, ref, 9, metric)
            assert_exact_sets(indices, q, ref, 9, metric)
        parts = [bank[:100], np.zeros((0, 40), np.float32), fp16[100:450], bf16[450:]]
        full = np.concatenate([as_f64(p) for p in parts])
        for k in (1, 12, 700):
            values, indices = ops.knn(q, parts, k, metric, chunk_rows=90, precision="bf16")
            assert_knn(values, indices, q, full, k, metric)


def test_bf16_zero_vectors(rng):
    q, b = gaussian(rng, 3, 6), gaussian(rng, 9, 6)
    q[1] = 0
    b[[2, 5]] = 0
    values, indices = ops.knn(q, b, 9, "cosine", chunk_rows=4, precision="bf16")
    assert_knn(values, indices, q, b, 9, "cosine")
    np.testing.assert_array_equal(values[1], np.zeros(9, dtype=np.float32))


def test_precision_env_and_dispatch(rng, monkeypatch):
    q, b = gaussian(rng, 4, 8), gaussian(rng, 30, 8)
    calls = []
    real = torch.ops.ood_zoo.knn_bf16_update  # the bf16 path's op, called once per bank chunk

    def spy(*args):
        calls.append(args[6])  # the metric
        return real(*args)

    monkeypatch.setattr(torch.ops.ood_zoo, "knn_bf16_update", spy)
    ops.knn(q, b, 3)
    assert calls == []  # exact is the default
    monkeypatch.setenv("OOD_ZOO_KNN_PRECISION", " BF16 ")
    assert ops.knn_precision() == "bf16"
    values, indices = ops.knn(q, b, 3, "l2")
    assert calls == ["l2"]
    assert_knn(values, indices, q, b, 3, "l2")
    ops.knn(q, b, 3, precision="exact")  # the argument overrides the environment
    assert calls == ["l2"]
    monkeypatch.setattr(ops.dense, "bf16_gemm_native", lambda: False)
    ops.knn(q, b, 3)  # no native bf16 GEMM: computed as exact
    assert calls == ["l2"]
    monkeypatch.setenv("OOD_ZOO_KNN_PRECISION", "fp8")
    with pytest.raises(ValueError, match="fp8"):
        ops.knn(q, b, 3)
    assert "error" in ops.describe_backend()["knn_precision"]
    with pytest.raises(ValueError, match="precision must be one of"):
        ops.knn(q, b, 3, precision="half")


def test_op_rejects_bad_state():
    q, b = torch.randn(3, 4), torch.randn(5, 4)
    v, i = torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.int64)
    c = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        torch.ops.ood_zoo.knn_bf16_update(q.double(), b, 0, v, i, c, "cosine", 4, 10)
    with pytest.raises(RuntimeError, match="float64"):
        torch.ops.ood_zoo.knn_bf16_update(q, b, 0, v.float(), i, c, "cosine", 4, 10)
    with pytest.raises(RuntimeError, match="features"):
        torch.ops.ood_zoo.knn_bf16_update(q, b[:, :3], 0, v, i, c, "l2", 4, 10)


@pytest.mark.parametrize("precision", ["exact", "bf16"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_kernel_reports_non_finite_bank_rows(rng, precision, value):
    """The CPU kernels check the bank's finiteness in their norm pass (no separate scan); a bad row
    is named by its position in the whole bank, not in its shard."""
    q, b = gaussian(rng, 3, 5), gaussian(rng, 40, 5)
    bad = b.copy()
    bad[33, 4] = value
    kind = "NaN" if np.isnan(value) else "Inf"
    for metric in ("cosine", "l2"):
        with pytest.raises(InputError, match=f"{kind} \\(first bad row 33\\)"):
            ops.knn(q, [b[:20], bad[20:]], 2, metric, chunk_rows=8, precision=precision)
        with pytest.raises(RuntimeError, match="bank row 33 is not finite"):
            torch.ops.ood_zoo.knn(torch.from_numpy(q), torch.from_numpy(bad), 2, metric, 8)
    # finite float64 values whose fp32 conversion overflows are reported too
    huge = b.astype(np.float64)
    huge[2, 0] = 1e300
    with pytest.raises(InputError, match="overflows"):
        ops.knn(q, huge, 2, precision=precision)
