"""Tests of ood_zoo.ops: every kernel backend against independent float64 numpy references.

The references build the full ``[Q, N]`` (or ``[Q, C]``) matrix in float64 and sort it; kNN
results are compared by value (so ties may pick any index) and each returned index is checked
to carry the value reported for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ood_zoo import ops
from ood_zoo.errors import InputError
from ood_zoo.ops import extension

try:
    import faiss  # noqa: F401

    HAS_FAISS = True
except ImportError:
    HAS_FAISS = False

HAS_EXT = extension.available()
needs_ext = pytest.mark.skipif(not HAS_EXT, reason=f"C++ extension: {extension.load_error()}")
BACKENDS = [
    "torch",
    pytest.param("ext", marks=needs_ext),
    pytest.param("faiss", marks=pytest.mark.skipif(not HAS_FAISS, reason="faiss missing")),
]
HYPOTHESIS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
EPS32 = float(np.finfo(np.float32).eps)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OOD_ZOO_BACKEND", request.param)
    return request.param


# ---------------------------------------------------------------------------- references


def as_f64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def ref_scores(queries, bank, metric: str) -> np.ndarray:
    """Full float64 ``[Q, N]`` matrix: cosine similarities, or Euclidean distances (direct form)."""
    q, b = as_f64(queries), as_f64(bank)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return q @ b.T
    return np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1))


def assert_knn(values, indices, queries, bank, k: int, metric: str, *, exact64: bool = False):
    """Compare a kNN result with the float64 reference, by value; validate every index."""
    full = ref_scores(queries, bank, metric)
    sign = -1.0 if metric == "cosine" else 1.0
    expected = np.take_along_axis(full, np.argsort(sign * full, axis=1, kind="stable"), 1)[:, :k]
    values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    indices = indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else indices
    n_q, n_bank = full.shape
    assert values.shape == (n_q, k)
    assert indices.shape == (n_q, k)
    assert indices.dtype == np.int64
    assert ((indices >= 0) & (indices < n_bank)).all()
    assert all(len(set(row)) == k for row in indices.tolist()), "repeated neighbour"
    assert (sign * np.diff(values, axis=1) >= 0).all(), "not sorted best first"
    at_indices = np.take_along_axis(full, indices, 1)
    values = values.astype(np.float64)
    if exact64:
        tol = {"rtol": 1e-9, "atol": 1e-9}
        np.testing.assert_allclose(values, expected, **tol)
        np.testing.assert_allclose(at_indices, values, **tol)
    elif metric == "cosine":
        np.testing.assert_allclose(values, expected, rtol=0, atol=2e-5)
        np.testing.assert_allclose(at_indices, values, rtol=0, atol=2e-5)
    else:
        # fp32 expanded form |q|^2 + |b|^2 - 2<q, b>: the error scales with the squared norms,
        # so compare squared distances against that scale.
        scale = (as_f64(queries) ** 2).sum(1).max() + (as_f64(bank) ** 2).sum(1).max()
        atol = 64 * EPS32 * scale + 1e-12
        np.testing.assert_allclose(values**2, expected**2, rtol=1e-5, atol=atol)
        np.testing.assert_allclose(at_indices**2, values**2, rtol=1e-5, atol=atol)


def ref_mahalanobis(queries, whitening, class_means) -> np.ndarray:
    """``[Q, C]`` matrix of ``(x - μ_c)ᵀ P (x - μ_c)`` with ``P = W Wᵀ``, explicitly per class."""
    x, w, mu = as_f64(queries), as_f64(whitening), as_f64(class_means)
    precision = w @ w.T
    d2 = np.empty((x.shape[0], mu.shape[0]))
    for c in range(mu.shape[0]):
        diff = x - mu[c]
        d2[:, c] = np.einsum("qi,ij,qj->q", diff, precision, diff)
    return d2


def assert_mahalanobis(min_d2, argmin, queries, whitening, class_means, *, rtol: float):
    full = ref_mahalanobis(queries, whitening, class_means)
    min_d2 = min_d2.detach().cpu().numpy() if isinstance(min_d2, torch.Tensor) else min_d2
    argmin = argmin.detach().cpu().numpy() if isinstance(argmin, torch.Tensor) else argmin
    assert min_d2.shape == argmin.shape == (full.shape[0],)
    assert argmin.dtype == np.int64
    assert (min_d2 >= 0).all()
    # The expanded form loses absolute accuracy relative to the distances' scale.
    atol = rtol * max(1.0, float(full.max()))
    np.testing.assert_allclose(min_d2, full.min(axis=1), rtol=rtol, atol=atol)
    at_argmin = full[np.arange(full.shape[0]), argmin]
    np.testing.assert_allclose(at_argmin, full.min(axis=1), rtol=rtol, atol=atol)


def gaussian(rng: np.random.Generator, *shape: int, dtype=np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------- kNN


@given(
    n_q=st.integers(1, 6),
    n_bank=st.integers(1, 40),
    d=st.integers(1, 24),
    k_frac=st.floats(0, 1),
    chunk=st.one_of(st.none(), st.integers(1, 45)),
    metric=st.sampled_from(["cosine", "l2"]),
    seed=st.integers(0, 2**16),
)
@HYPOTHESIS
def test_knn_matches_reference(backend, n_q, n_bank, d, k_frac, chunk, metric, seed):
    rng = np.random.default_rng(seed)
    q, b = gaussian(rng, n_q, d), gaussian(rng, n_bank, d)
    k = 1 + round(k_frac * (n_bank - 1))
    values, indices = ops.knn(q, b, k, metric, chunk_rows=chunk)
    assert values.dtype == np.float32
    assert_knn(values, indices, q, b, k, metric)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize(
    ("n_q", "n_bank", "d", "k", "chunk"),
    [
        (1, 1, 1, 1, None),  # smallest everything
        (3, 17, 13, 17, 5),  # k = N over several tiles
        (5, 100, 33, 1, 7),  # k = 1, N not a multiple of the tile
        (1, 257, 130, 10, 64),  # single query, d not a multiple of 8/16
        (40, 64, 16, 8, 64),  # exactly one full tile
        (7, 300, 5, 300, 1),  # one-row tiles, k = N
    ],
)
def test_knn_edge_shapes(backend, rng, metric, n_q, n_bank, d, k, chunk):
    q, b = gaussian(rng, n_q, d), gaussian(rng, n_bank, d)
    values, indices = ops.knn(q, b, k, metric, chunk_rows=chunk)
    assert_knn(values, indices, q, b, k, metric)


def test_knn_zero_vectors_have_cosine_zero(backend, rng):
    q, b = gaussian(rng, 3, 6), gaussian(rng, 9, 6)
    q[1] = 0
    b[[2, 5]] = 0
    values, indices = ops.knn(q, b, 9, "cosine", chunk_rows=4)
    assert_knn(values, indices, q, b, 9, "cosine")
    np.testing.assert_array_equal(values[1], np.zeros(9, dtype=np.float32))


def test_knn_fp64_is_computed_in_fp64(backend, rng):
    q, b = gaussian(rng, 6, 20, dtype=np.float64), gaussian(rng, 50, 20, dtype=np.float64)
    for metric in ("cosine", "l2"):
        values, indices = ops.knn(torch.from_numpy(q), torch.from_numpy(b), 5, metric,
                                  chunk_rows=16)
        assert values.dtype == torch.float64
        assert_knn(values, indices, q, b, 5, metric, exact64=backend != "faiss")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_knn_half_precision_inputs(backend, rng, dtype, metric):
    q = torch.from_numpy(gaussian(rng, 5, 37)).to(dtype)
    b = torch.from_numpy(gaussian(rng, 90, 37)).to(dtype)
    values, indices = ops.knn(q, b, 6, metric, chunk_rows=32)
    assert values.dtype == torch.float32
    assert_knn(values, indices, q, b, 6, metric)  # reference on the upcast values


def test_knn_duplicate_rows_compare_values(backend, rng):
    base = gaussian(rng, 10, 8)
    b = np.concatenate([base, base, base[:4]])  # every row at least twice: ties everywhere
    q = gaussian(rng, 4, 8)
    for metric in ("cosine", "l2"):
        values, indices = ops.knn(q, b, 7, metric, chunk_rows=6)
        assert_knn(values, indices, q, b, 7, metric)


def test_knn_exact_ties_go_to_the_lower_index_across_chunks(backend, rng):
    """Small integers make every product exact, so copies of a row tie exactly."""
    base = rng.integers(-3, 4, size=(10, 8)).astype(np.float32)
    b = np.concatenate([base, base, base])
    q = rng.integers(-3, 4, size=(5, 8)).astype(np.float32)
    for metric in ("cosine", "l2"):
        values, indices = ops.knn(q, b, 9, metric, chunk_rows=4)
        for row_values, row_indices in zip(values, indices, strict=True):
            for j in range(8):
                if row_values[j] == row_values[j + 1]:
                    assert row_indices[j] < row_indices[j + 1], (metric, row_indices)


def test_knn_non_contiguous_inputs(backend, rng):
    q_t = gaussian(rng, 11, 4)  # [d, Q]: queries are its transpose
    b_big = gaussian(rng, 80, 11)
    q_np, b_np = q_t.T, b_big[::2]
    assert not q_np.flags.c_contiguous
    assert not b_np.flags.c_contiguous
    values, indices = ops.knn(q_np, b_np, 5, "cosine", chunk_rows=9)
    assert_knn(values, indices, q_np, b_np, 5, "cosine")
    q = torch.from_numpy(q_t).t()
    b = torch.from_numpy(np.ascontiguousarray(b_big.T)).t()  # transposed storage
    values, indices = ops.knn(q, b, 5, "l2", chunk_rows=9)
    assert isinstance(values, torch.Tensor)
    assert_knn(values, indices, q, b, 5, "l2")


def test_knn_shards(backend, rng):
    q = gaussian(rng, 4, 10)
    parts = [
        gaussian(rng, 7, 10),
        np.zeros((0, 10), np.float32),  # empty shard
        gaussian(rng, 23, 10, dtype=np.float64),  # other dtypes are converted per chunk
        torch.from_numpy(gaussian(rng, 5, 10)).to(torch.bfloat16),
        gaussian(rng, 1, 10),
    ]
    full = np.concatenate([as_f64(p) for p in parts])
    for metric in ("cosine", "l2"):
        for k in (1, 6, len(full)):
            values, indices = ops.knn(q, parts, k, metric, chunk_rows=4)
            assert_knn(values, indices, q, full, k, metric)
    values, indices = ops.knn(q, tuple(parts), 3, "cosine")
    assert_knn(values, indices, q, full, 3, "cosine")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_knn_memmap_bank(backend, rng, tmp_path, monkeypatch, dtype):
    bank = gaussian(rng, 301, 24).astype(dtype)
    path = tmp_path / "bank.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=bank.shape)
    mm[:] = bank
    mm.flush()
    del mm
    mm = np.load(path, mmap_mode="r")
    q = gaussian(rng, 6, 24)
    # A small scratch budget makes the ext/faiss backends stream several chunks as well.
    monkeypatch.setattr(ops.streaming, "CHUNK_BYTES", 64 * 24 * 4)
    for metric in ("cosine", "l2"):
        values, indices = ops.knn(q, mm, 9, metric, chunk_rows=32)
        assert_knn(values, indices, q, bank, 9, metric)


def test_knn_output_kind_follows_queries(backend, rng):
    q, b = gaussian(rng, 3, 5), gaussian(rng, 12, 5)
    values, indices = ops.knn(q, torch.from_numpy(b), 2)
    assert isinstance(values, np.ndarray)
    assert isinstance(indices, np.ndarray)
    values, indices = ops.knn(torch.from_numpy(q), b, 2)
    assert isinstance(values, torch.Tensor)
    assert indices.dtype == torch.int64


def test_knn_rejects_bad_input(backend, rng):
    q, b = gaussian(rng, 3, 5), gaussian(rng, 12, 5)
    bad = q.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ops.knn(bad, b, 2)
    bad = b.copy()
    bad[7, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ops.knn(q, [b[:5], bad[5:]], 2)
    with pytest.raises(InputError, match="k=13"):
        ops.knn(q, b, 13)
    with pytest.raises(InputError, match="k must be a positive int"):
        ops.knn(q, b, 0)
    with pytest.raises(InputError, match="5 features but the bank has 4"):
        ops.knn(q, b[:, :4], 2)
    with pytest.raises(ValueError, match="metric"):
        ops.knn(q, b, 2, "cosinus")


# ---------------------------------------------------------------------------- Mahalanobis


@pytest.mark.parametrize(
    ("n_q", "d", "r", "n_classes", "chunk", "with_center"),
    [
        (1, 1, 1, 1, None, False),
        (17, 9, 9, 4, 5, True),  # full-rank W, several query tiles
        (30, 20, 6, 7, 8, False),  # low-rank W
        (5, 33, 33, 1, 2, True),  # a single class
    ],
)
def test_mahalanobis_matches_reference(backend, rng, n_q, d, r, n_classes, chunk, with_center):
    x, w = gaussian(rng, n_q, d), gaussian(rng, d, r) / np.sqrt(d)
    mu = gaussian(rng, n_classes, d)
    center = mu.mean(axis=0) + 0.1 if with_center else None
    min_d2, argmin = ops.mahalanobis(x, w, mu, center=center, chunk_rows=chunk)
    assert min_d2.dtype == np.float32
    assert_mahalanobis(min_d2, argmin, x, w, mu, rtol=1e-4)


@given(
    n_q=st.integers(1, 12),
    d=st.integers(1, 16),
    r_frac=st.floats(0, 1),
    n_classes=st.integers(1, 6),
    chunk=st.one_of(st.none(), st.integers(1, 13)),
    seed=st.integers(0, 2**16),
)
@HYPOTHESIS
def test_mahalanobis_hypothesis(backend, n_q, d, r_frac, n_classes, chunk, seed):
    rng = np.random.default_rng(seed)
    r = 1 + round(r_frac * (d - 1))
    x, w, mu = gaussian(rng, n_q, d), gaussian(rng, d, r), gaussian(rng, n_classes, d)
    min_d2, argmin = ops.mahalanobis(x, w, mu, chunk_rows=chunk)
    assert_mahalanobis(min_d2, argmin, x, w, mu, rtol=1e-4)


def test_mahalanobis_fp64(backend, rng):
    x, w, mu = (gaussian(rng, *s, dtype=np.float64) for s in ((20, 12), (12, 12), (5, 12)))
    min_d2, argmin = ops.mahalanobis(torch.from_numpy(x), w, mu, chunk_rows=6)
    assert min_d2.dtype == torch.float64
    assert_mahalanobis(min_d2, argmin, x, w, mu, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mahalanobis_half_precision_queries(backend, rng, dtype):
    x = torch.from_numpy(gaussian(rng, 25, 14)).to(dtype)
    w, mu = gaussian(rng, 14, 10), gaussian(rng, 3, 14)
    min_d2, argmin = ops.mahalanobis(x.t().contiguous().t(), w, mu, chunk_rows=7)
    assert min_d2.dtype == torch.float32
    assert_mahalanobis(min_d2, argmin, x, w, mu, rtol=1e-4)


def test_mahalanobis_rejects_bad_input(backend, rng):
    x, w, mu = gaussian(rng, 4, 6), gaussian(rng, 6, 3), gaussian(rng, 2, 6)
    with pytest.raises(InputError, match="whitening"):
        ops.mahalanobis(x, w[:5], mu)
    with pytest.raises(InputError, match="class_means"):
        ops.mahalanobis(x, w, mu[:, :5])
    with pytest.raises(InputError, match="center must have shape"):
        ops.mahalanobis(x, w, mu, center=np.zeros(5, np.float32))
    bad = x.copy()
    bad[2, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ops.mahalanobis(bad, w, mu)


# ---------------------------------------------------------------------------- backend choice


def test_backend_default_and_override(monkeypatch):
    monkeypatch.delenv("OOD_ZOO_BACKEND", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", extension.ExtensionUnavailableWarning)
        assert ops.backend() == ("ext" if HAS_EXT else "torch")
    monkeypatch.setenv("OOD_ZOO_BACKEND", " Torch ")
    assert ops.backend() == "torch"
    monkeypatch.setenv("OOD_ZOO_BACKEND", "cublas")
    with pytest.raises(ValueError, match="cublas"):
        ops.backend()
    info = ops.describe_backend()
    assert info["backend"] is None
    assert "cublas" in info["backend_error"]


MISSING_EXTENSION = """
import os, sys, warnings
sys.modules["ood_zoo.ops._C"] = None  # the extension as if it were not built
import numpy as np, pytest
from ood_zoo import ops
from ood_zoo.errors import BackendUnavailableError
from ood_zoo.ops import extension

q = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
with pytest.warns(extension.ExtensionUnavailableWarning, match="no-build-isolation"):
    values, _ = ops.knn(q, q, 1)
np.testing.assert_allclose(values, 1.0, rtol=1e-6)
with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert ops.backend() == "torch"  # warned once per process only
os.environ["OOD_ZOO_BACKEND"] = "ext"
with pytest.raises(BackendUnavailableError, match="ood_zoo.ops._C is not built"):
    ops.knn(q, q, 1)
os.environ["OOD_ZOO_BACKEND"] = "torch"
assert ops.describe_backend()["extension"] is False
print("ok")
"""


def test_missing_extension_warns_once_and_ext_request_fails():
    """In a fresh process (the extension loads once per process) that cannot import ``_C``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OOD_ZOO_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", MISSING_EXTENSION], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_describe_backend(monkeypatch):
    monkeypatch.delenv("OOD_ZOO_BACKEND", raising=False)
    info = ops.describe_backend()
    assert info["backend"] == ("ext" if HAS_EXT else "torch")
    assert info["extension"] is HAS_EXT
    assert info["torch_threads"] == torch.get_num_threads()
    assert set(info["backends"]) == {"torch", "ext", "faiss"}


def test_faiss_follows_torch_threads(monkeypatch, rng):
    faiss = pytest.importorskip("faiss")
    monkeypatch.setenv("OOD_ZOO_BACKEND", "faiss")
    q = gaussian(rng, 2, 3)
    ops.knn(q, q, 1)
    assert faiss.omp_get_max_threads() == torch.get_num_threads()


# ---------------------------------------------------------------------------- the raw C++ ops


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_op_knn_direct(rng, dtype, metric):
    q = torch.from_numpy(gaussian(rng, 9, 19)).to(dtype)
    b = torch.from_numpy(gaussian(rng, 53, 19)).to(dtype)
    values, indices = torch.ops.ood_zoo.knn(q, b, 7, metric, 5)
    assert values.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_knn(values, indices, q, b, 7, metric, exact64=dtype == torch.float64)


@needs_ext
def test_op_knn_breaks_ties_by_lower_index():
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    q = torch.tensor([[1.0, 0.0]])
    values, indices = torch.ops.ood_zoo.knn(q, b, 4, "cosine", 2)
    assert indices.tolist() == [[0, 2, 3, 4]]
    torch.testing.assert_close(values, torch.ones(1, 4))


@needs_ext
def test_op_checks_quote_received_values():
    q, b = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(RuntimeError, match=r"N=5 rows, got k=7"):
        torch.ops.ood_zoo.knn(q, b, 7, "cosine", 8)
    with pytest.raises(RuntimeError, match="queries have 4 features but the bank has 3"):
        torch.ops.ood_zoo.knn(q, b[:, :3], 2, "cosine", 8)
    with pytest.raises(RuntimeError, match="got 'cosinus'"):
        torch.ops.ood_zoo.knn(q, b, 2, "cosinus", 8)
    with pytest.raises(RuntimeError, match="tile_rows must be positive, got 0"):
        torch.ops.ood_zoo.knn(q, b, 2, "l2", 0)
    with pytest.raises(RuntimeError, match="got a 1-D tensor"):
        torch.ops.ood_zoo.knn(q[0], b, 2, "l2", 8)
    with pytest.raises(RuntimeError, match="got Int"):
        torch.ops.ood_zoo.knn(q.int(), b, 2, "l2", 8)
    w, mu = torch.randn(4, 2), torch.randn(3, 4)
    with pytest.raises(RuntimeError, match=r"whitening has shape \[5, 2\]"):
        torch.ops.ood_zoo.mahalanobis(q, torch.randn(5, 2), mu, mu[0], 4)
    with pytest.raises(RuntimeError, match=r"center must have shape \[4\], got \[3\]"):
        torch.ops.ood_zoo.mahalanobis(q, w, mu, mu[0, :3], 4)


@needs_ext
def test_opcheck():
    q, b = torch.randn(4, 6), torch.randn(11, 6)
    torch.library.opcheck(torch.ops.ood_zoo.knn.default, (q, b, 3, "cosine", 4))
    torch.library.opcheck(torch.ops.ood_zoo.knn.default, (q.double(), b.double(), 11, "l2", 3))
    w, mu = torch.randn(6, 5), torch.randn(3, 6)
    torch.library.opcheck(torch.ops.ood_zoo.mahalanobis.default, (q, w, mu, mu.mean(0), 3))


# ---------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["torch", "ext"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_matches_cpu(monkeypatch, rng, name, dtype):
    if name == "ext" and not extension.cuda_available():
        pytest.skip(f"ood_zoo.ops._C_cuda: {extension.cuda_load_error()}")
    monkeypatch.setenv("OOD_ZOO_BACKEND", name)
    q = torch.from_numpy(gaussian(rng, 70, 40)).to(dtype)
    b = torch.from_numpy(gaussian(rng, 3000, 40)).to(dtype)
    exact64 = dtype == torch.float64
    for metric in ("cosine", "l2"):
        for k in (1, 10, 1500):  # 1500 > the fused kernel's limit: the topk fallback
            values, indices = ops.knn(q.cuda(), b.cuda(), k, metric, chunk_rows=700)
            assert values.is_cuda
            assert_knn(values, indices, q, b, k, metric, exact64=exact64)
        # a CPU (memmap-like) bank with CUDA queries is streamed to the device
        values, indices = ops.knn(q.cuda(), b.numpy() if dtype != torch.bfloat16 else b, 5,
                                  metric, chunk_rows=512)
        assert_knn(values, indices, q, b, 5, metric, exact64=exact64)
    w, mu = torch.randn(40, 30, dtype=torch.float64), torch.randn(9, 40, dtype=torch.float64)
    min_d2, argmin = ops.mahalanobis(q.cuda(), w.cuda(), mu.cuda(), chunk_rows=33)
    assert min_d2.is_cuda
    assert_mahalanobis(min_d2, argmin, q, w, mu, rtol=1e-10 if exact64 else 1e-4)
