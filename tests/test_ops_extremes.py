"""Regression tests of the ops at extreme magnitudes, on every valid array and on bad parameters.

Issue 11, kernel side. Every result is compared with an independent brute-force reference
computed from the formulas in float64 (in ``np.longdouble``, 80-bit on x86, where float64 inputs
would overflow float64 itself): direct differences for distances, no expanded form, no rescaling.
The tolerances are those of tests/test_ops.py, taken relative to the data's own scale (no
absolute floor, so that a result that underflowed to 0 cannot pass).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_ops import BACKENDS
from test_ops import needs_ext as needs_ext_backend

import ood_zoo
from ood_zoo import ops
from ood_zoo.errors import InputError
from ood_zoo.ops.arrays import as_tensor

F32_MAX = float(np.finfo(np.float32).max)
U32 = 2.0**-24


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OOD_ZOO_BACKEND", request.param)
    return request.param


def wide(x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x).astype(dtype)


def as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def ref_matrix(queries, bank, metric: str, dtype=np.float64) -> np.ndarray:
    """``[Q, N]`` cosine similarities (rows divided by ``max(|x|, 1e-12)``, as documented) or
    Euclidean distances by explicit differences, in ``dtype``."""
    q, b = wide(queries, dtype), wide(bank, dtype)
    if metric == "cosine":
        q = q / np.maximum(np.sqrt((q * q).sum(1, keepdims=True)), 1e-12)
        b = b / np.maximum(np.sqrt((b * b).sum(1, keepdims=True)), 1e-12)
        return q @ b.T
    return np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def check_knn(values, indices, queries, bank, k: int, metric: str, *, dtype=np.float64,
              out_max: float = F32_MAX, unit: float = U32) -> None:
    """Values finite (Inf only where the true distance exceeds the output dtype), within the
    tolerance of tests/test_ops.py relative to the data's scale; every index carries its value."""
    full = ref_matrix(queries, bank, metric, dtype)
    sign = -1 if metric == "cosine" else 1
    expected = np.take_along_axis(full, np.argsort(sign * full, 1, kind="stable"), 1)[:, :k]
    values, indices = as_numpy(values).astype(dtype), as_numpy(indices)
    assert values.shape == indices.shape == (full.shape[0], k)
    assert not np.isnan(values).any()
    assert (np.isinf(values) == (expected > out_max)).all(), "Inf only for unrepresentable values"
    at_indices = np.take_along_axis(full, indices, 1)
    finite = ~np.isinf(values)
    if metric == "cosine":
        np.testing.assert_allclose(values, expected, rtol=0, atol=2e-5)
        np.testing.assert_allclose(at_indices, values, rtol=0, atol=2e-5)
        return
    q, b = wide(queries, dtype), wide(bank, dtype)
    scale = (q * q).sum(1).max() + (b * b).sum(1).max()
    atol = 64 * unit * scale
    for got, want in ((values, expected), (at_indices, values)):
        err = np.abs(got[finite] ** 2 - want[finite] ** 2)
        assert (err <= atol + 1e-5 * want[finite] ** 2).all()


def gaussian(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


# ---------------------------------------------------------------------------- kNN, l2


@pytest.mark.parametrize("magnitude", [1e20, 1e30, 1e37, 1e-20, 1e-30, 1e-40])
def test_l2_queries_on_bank_rows_at_any_magnitude(backend, rng, magnitude):
    """fp32 values ~1e20 with queries equal to bank rows gave NaN (ext), Inf/NaN (torch) and
    wrong finite values (faiss); tiny values gave distances 0."""
    bank = (gaussian(rng, 60, 24) * magnitude).astype(np.float32)
    queries = np.concatenate([bank[:6], (gaussian(rng, 4, 24) * magnitude).astype(np.float32)])
    values, indices = ops.knn(queries, bank, 3, "l2", chunk_rows=16)
    check_knn(values, indices, queries, bank, 3, "l2")
    assert (indices[:6, 0] == np.arange(6)).all()  # the row itself first


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_l2_half_precision_at_large_magnitude(backend, rng, dtype):
    """bf16 ~1e30 gave NaN and Inf scores (the knn detector's ``normalize=False``)."""
    magnitude = 1e4 if dtype == torch.float16 else 1e30
    bank = (torch.from_numpy(gaussian(rng, 70, 20)) * magnitude).to(dtype)
    queries = torch.cat([bank[:5], (torch.from_numpy(gaussian(rng, 5, 20)) * magnitude).to(dtype)])
    values, indices = ops.knn(queries, bank, 4, "l2", chunk_rows=32)
    assert values.dtype == torch.float32
    check_knn(values, indices, queries, bank, 4, "l2")


def test_l2_distance_beyond_float32_is_inf(backend):
    """A true distance above ~3.4e38 comes out Inf, its correctly rounded float32 value."""
    queries = np.array([[3e38, 0.0], [-3e38, 0.0]], np.float32)
    bank = np.array([[-3e38, 0.0], [3e38, 1e30], [0.0, 0.0]], np.float32)
    values, indices = ops.knn(queries, bank, 3, "l2")
    check_knn(values, indices, queries, bank, 3, "l2")
    assert indices[0].tolist() == [1, 2, 0]
    assert np.isinf(values[0, 2])


def test_l2_tiny_queries_against_a_mixed_bank(backend, rng):
    """Queries below the range take one common scale with the bank."""
    bank = np.concatenate([gaussian(rng, 30, 16) * 1e-30, gaussian(rng, 30, 16) * 1e-25])
    bank = bank.astype(np.float32)
    queries = (bank[::7] + 1e-32 * gaussian(rng, 9, 16)).astype(np.float32)
    values, indices = ops.knn(queries, bank, 2, "l2")
    check_knn(values, indices, queries, bank, 2, "l2")


# ---------------------------------------------------------------------------- kNN, cosine


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("magnitude", [1e20, 1e30, 1e38])
def test_cosine_at_large_magnitudes(backend, rng, dtype, magnitude):
    """bf16 ~1e30 gave similarity 0 on the torch and faiss backends (``norm()`` overflowed)."""
    bank = (torch.from_numpy(gaussian(rng, 50, 32)) * (magnitude / 6)).to(dtype)
    queries = torch.cat([bank[:4], (torch.from_numpy(gaussian(rng, 4, 32)) * magnitude / 6)
                         .to(dtype)])
    values, indices = ops.knn(queries, bank, 3, "cosine", chunk_rows=16)
    check_knn(values, indices, queries, bank, 3, "cosine")
    np.testing.assert_allclose(values[:4, 0].numpy(), 1.0, atol=2e-5)


def test_cosine_rows_of_mixed_magnitudes(backend, rng):
    """Cosine is per row: rows from 1e-11 to 1e37 in one bank, and queries likewise."""
    bank = gaussian(rng, 80, 24) * np.logspace(-11, 37, 80)[:, None]
    queries = gaussian(rng, 10, 24) * np.logspace(37, -11, 10)[:, None]
    bank, queries = bank.astype(np.float32), queries.astype(np.float32)
    values, indices = ops.knn(queries, bank, 5, "cosine", chunk_rows=32)
    check_knn(values, indices, queries, bank, 5, "cosine")


def test_cosine_below_norm_eps_is_scaled_as_documented(backend):
    """A row of norm below 1e-12 is divided by 1e-12 (so a zero vector has similarity 0)."""
    queries = np.array([[1e-20, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]], np.float32)
    bank = np.array([[1.0, 0.0, 0.0], [0.0, 2e-13, 0.0]], np.float32)
    values, _ = ops.knn(queries, bank, 2, "cosine")
    np.testing.assert_allclose(values, [[1e-8, 0.0], [0.0, 0.0], [2**-0.5, 0.2 * 2**-0.5]],
                               rtol=1e-5, atol=1e-12)


# ---------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("shift", [10, 80, -90])
def test_l2_rescaling_is_exact(backend, rng, shift):
    """Scaling the inputs by a power of two scales the distances by it, bit for bit: inside the
    safe range (10) every operation is scale-equivariant, outside it (80, -90) the call is
    rescaled by powers of two, which changes no rounding either."""
    if backend == "faiss":
        pytest.skip("faiss's own kernels choose their blocking per call")
    bank, queries = gaussian(rng, 200, 40).astype(np.float32), gaussian(rng, 7, 40)
    queries = queries.astype(np.float32)
    base_values, base_indices = ops.knn(queries, bank, 5, "l2", chunk_rows=64)
    factor = np.float32(2.0**shift)
    values, indices = ops.knn(queries * factor, bank * factor, 5, "l2", chunk_rows=64)
    np.testing.assert_array_equal(indices, base_indices)
    np.testing.assert_array_equal(values, base_values * factor)


@pytest.mark.parametrize("shift", [58, -60])
def test_mahalanobis_rescaling_is_exact(backend, rng, shift):
    """As for kNN: both shifts leave the safe range, and the distances stay representable."""
    x, mu = gaussian(rng, 40, 12).astype(np.float32), gaussian(rng, 4, 12).astype(np.float32)
    w = (gaussian(rng, 12, 12) / 4).astype(np.float32)
    base, base_arg = ops.mahalanobis(x, w, mu, chunk_rows=16)
    factor = np.float32(2.0**shift)
    d2, arg = ops.mahalanobis(x * factor, w, mu * factor, chunk_rows=16)
    np.testing.assert_array_equal(arg, base_arg)
    np.testing.assert_array_equal(d2, base * np.float32(2.0 ** (2 * shift)))


# ---------------------------------------------------------------------------- float64


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("magnitude", [1e200, 1e-200])
def test_float64_beyond_its_own_squares(backend, rng, metric, magnitude):
    bank = gaussian(rng, 40, 10) * magnitude
    queries = np.concatenate([bank[:3], gaussian(rng, 3, 10) * magnitude])
    if backend == "faiss":  # faiss computes in float32: refused, not silently wrong
        if magnitude > 1:
            with pytest.raises(InputError, match="overflows"):
                ops.knn(queries, bank, 2, metric)
        return
    values, indices = ops.knn(queries, bank, 2, metric, chunk_rows=16)
    assert values.dtype == np.float64
    check_knn(values, indices, queries, bank, 2, metric, dtype=np.longdouble,
              out_max=float(np.finfo(np.float64).max), unit=2.0**-53)


def test_values_beyond_the_compute_dtype_are_refused(backend, rng):
    queries = gaussian(rng, 3, 5).astype(np.float32)
    bank = gaussian(rng, 12, 5)
    bank[4, 1] = 1e300
    for metric in ("cosine", "l2"):
        with pytest.raises(InputError, match=r"overflows torch\.float32"):
            ops.knn(queries, bank, 2, metric)
    w = np.eye(5)
    w[2, 2] = 1e300
    with pytest.raises(InputError, match="whitening: a value of magnitude 1e\\+300 overflows"):
        ops.mahalanobis(queries, w, bank[:2].astype(np.float32))


# ---------------------------------------------------------------------------- precision="bf16"


@needs_ext_backend
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("magnitude", [1e30, 1e-30])
def test_bf16_precision_at_extreme_magnitudes(rng, monkeypatch, metric, magnitude):
    monkeypatch.delenv("OOD_ZOO_BACKEND", raising=False)
    bank = (gaussian(rng, 300, 64) * magnitude).astype(np.float32)
    queries = np.concatenate([bank[:4], (gaussian(rng, 4, 64) * magnitude).astype(np.float32)])
    values, indices = ops.knn(queries, bank, 3, metric, chunk_rows=100, precision="bf16")
    check_knn(values, indices, queries, bank, 3, metric)


# ---------------------------------------------------------------------------- Mahalanobis


def ref_mahalanobis(x, w, mu, dtype=np.float64) -> np.ndarray:
    """``[Q, C]`` of ``|(x - μ_c) W|²`` in ``dtype``, by explicit differences."""
    x, w, mu = wide(x, dtype), wide(w, dtype), wide(mu, dtype)
    return np.stack([(((x - m) @ w) ** 2).sum(1) for m in mu], axis=1)


def check_mahalanobis(min_d2, argmin, x, w, mu, center=None, *, dtype=np.float64,
                      out_max: float = F32_MAX, floor: float = 2.0**-149) -> None:
    """Finite, non-negative (Inf only where the true minimum exceeds the output dtype), within
    the expanded form's tolerance of tests/test_ops.py relative to ``|z|² + |n|²`` (plus the
    output's smallest subnormal, where the distance itself underflows); the argmin attains it."""
    full = ref_mahalanobis(x, w, mu, dtype)
    m = wide(mu, dtype).mean(0) if center is None else wide(center, dtype)
    w = wide(w, dtype)
    scale = ((((wide(x, dtype) - m) @ w) ** 2).sum(1).max()
             + (((wide(mu, dtype) - m) @ w) ** 2).sum(1).max())
    min_d2, argmin = as_numpy(min_d2).astype(dtype), as_numpy(argmin)
    want = full.min(1)
    assert not np.isnan(min_d2).any()
    assert (min_d2 >= 0).all()
    assert (np.isinf(min_d2) == (want > out_max)).all()
    finite = ~np.isinf(min_d2)
    atol = 1e-4 * scale + floor
    assert (np.abs(min_d2[finite] - want[finite]) <= atol).all()
    assert (np.abs(full[np.arange(full.shape[0]), argmin] - want) <= atol).all()


def test_mahalanobis_queries_on_means_at_1e19(backend, rng):
    """Class means ~±1e19 and queries on a mean gave NaN on every backend."""
    mu = np.stack([np.full(8, 1e19), np.full(8, -1e19), np.linspace(-1e19, 1e19, 8)])
    mu = mu.astype(np.float32)
    x = np.concatenate([mu, (mu[:1] + 1e17 * gaussian(rng, 5, 8)).astype(np.float32)])
    w = np.eye(8, dtype=np.float32)
    min_d2, argmin = ops.mahalanobis(x, w, mu, chunk_rows=3)
    check_mahalanobis(min_d2, argmin, x, w, mu)
    assert argmin.tolist() == [0, 1, 2, 0, 0, 0, 0, 0]


@pytest.mark.parametrize(("x_scale", "w_scale"), [
    (1e25, 1.0), (1.0, 1e25), (1e-19, 1.0), (1e-30, 1e12), (1e38, 1e-30), (1.0, 1e30),
])
def test_mahalanobis_at_extreme_magnitudes(backend, rng, x_scale, w_scale):
    """Including values near the float32 maximum, whose difference ``x - m`` overflows."""
    mu = (np.clip(gaussian(rng, 3, 10), -3, 3) * x_scale).astype(np.float32)
    x = (np.clip(gaussian(rng, 20, 10), -3, 3) * x_scale / 3).astype(np.float32)
    w = (gaussian(rng, 10, 6) * w_scale / 3).astype(np.float32)
    center = (-mu[0] * 0.9).astype(np.float32)
    for c in (None, center):
        min_d2, argmin = ops.mahalanobis(x, w, mu, center=c, chunk_rows=7)
        check_mahalanobis(min_d2, argmin, x, w, mu, c)


def test_mahalanobis_float64_queries_on_means_at_1e154(backend, rng):
    """The float64 analogue of the 1e19 case: ``|z|²`` overflows float64 itself."""
    mu = np.stack([np.full(8, 1e154), np.full(8, -1e154), gaussian(rng, 8) * 1e154])
    x = np.concatenate([mu, mu[:1] + 1e150 * gaussian(rng, 4, 8)])
    w = np.eye(8)
    min_d2, argmin = ops.mahalanobis(x, w, mu)
    assert min_d2.dtype == np.float64
    check_mahalanobis(min_d2, argmin, x, w, mu, dtype=np.longdouble,
                      out_max=float(np.finfo(np.float64).max), floor=0.0)
    assert argmin.tolist() == [0, 1, 2, 0, 0, 0, 0]


# ---------------------------------------------------------------------------- KNNIndex


@needs_ext_backend
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_index_bank_beyond_the_range_searches_densely(rng, monkeypatch, metric):
    monkeypatch.delenv("OOD_ZOO_BACKEND", raising=False)
    d = 256
    base = gaussian(rng, 1, d) * 3 + (gaussian(rng, 2500, 8) @ gaussian(rng, 8, d))
    bank = (base * 1e20).astype(np.float32)
    queries = np.concatenate([bank[:3], (bank[3:8] * 1.01).astype(np.float32)])
    index = ops.KNNIndex(bank, metric)
    assert not index.pruned
    assert "safe range" in index.dense_reason
    values, indices = index.search(queries, 4)
    check_knn(values, indices, queries, bank, 4, metric)
    with pytest.raises(InputError, match="safe range"):
        ops.KNNIndex(bank, metric, mode="pruned")


@needs_ext_backend
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_index_one_bank_row_beyond_the_range_outside_the_sample(rng, monkeypatch, metric):
    """The projection pass measures every row: one huge row the sample misses sends the index
    dense, and mode="pruned" refuses it."""
    monkeypatch.delenv("OOD_ZOO_BACKEND", raising=False)
    d = 256
    basis = np.linalg.qr(gaussian(rng, d, 6))[0]
    bank = (3 + gaussian(rng, 3000, 6) @ basis.T).astype(np.float32)
    bank[2999] *= 1e20
    index = ops.KNNIndex(bank, metric, sample_rows=512)
    assert not index.pruned
    assert "safe range" in index.dense_reason
    queries = np.concatenate([bank[:3], bank[2999:]])
    values, indices = index.search(queries, 2)
    check_knn(values, indices, queries, bank, 2, metric)
    with pytest.raises(InputError, match="safe range"):
        ops.KNNIndex(bank, metric, mode="pruned", sample_rows=512)


@needs_ext_backend
@pytest.mark.parametrize(("metric", "magnitude"), [
    ("cosine", 1e30), ("l2", 1e30), ("l2", 1e-30), ("cosine", 1e-30),
])
def test_index_queries_beyond_the_range_search_densely(rng, monkeypatch, metric, magnitude):
    monkeypatch.delenv("OOD_ZOO_BACKEND", raising=False)
    d = 64
    basis = np.linalg.qr(gaussian(rng, d, 6))[0]
    bank = (3 + gaussian(rng, 900, 6) @ basis.T).astype(np.float32)
    index = ops.KNNIndex(bank, metric, mode="pruned")
    queries = (bank[:5] * magnitude).astype(np.float32)
    values, indices = index.search(queries, 3)
    assert index.stats()["last_search"]["path"] == ("pruned" if metric == "cosine"
                                                    and magnitude < 1 else "dense")
    check_knn(values, indices, queries, bank, 3, metric)
    values, indices = index.search(bank[:5], 3)  # in range again: pruned
    assert index.stats()["last_search"]["path"] == "pruned"


def test_knn_detector_without_normalisation_on_bf16_1e30(rng):
    bank = (torch.from_numpy(gaussian(rng, 200, 16)) * 1e30).to(torch.bfloat16)
    queries = (torch.from_numpy(gaussian(rng, 6, 16)) * 1e30).to(torch.bfloat16)
    detector = ood_zoo.create("knn", k=2, normalize=False).fit(bank)
    scores = detector.score(queries)
    assert torch.isfinite(scores).all()
    want = -np.sort(ref_matrix(queries, bank, "l2"), axis=1)[:, 1]
    np.testing.assert_allclose(scores.numpy(), want, rtol=1e-3)


# ---------------------------------------------------------------------------- every valid array


def test_negative_strides_and_byte_order_on_every_backend(backend, rng):
    x = gaussian(rng, 30, 6).astype(np.float32)
    expected = ops.knn(x[::-1].copy(), x[::2].copy(), 3, "l2")
    for queries, bank in ((x[::-1], x[::2]), (x[::-1].astype(">f4"), x[::2].astype(">f4"))):
        values, indices = ops.knn(queries, bank, 3, "l2")  # the same values, copied
        np.testing.assert_array_equal(values, expected[0])
        np.testing.assert_array_equal(indices, expected[1])
    values, indices = ops.knn(x[::-1, ::-1], x[::2, ::-1], 3, "l2")
    check_knn(values, indices, x[::-1, ::-1], x[::2, ::-1], 3, "l2")
    w, mu = np.eye(6, dtype=">f8")[::-1], x[:3].astype(">f4")
    d2, argmin = ops.mahalanobis(x[::-1], w, mu[::-1], center=mu[0][::-1])
    want, want_arg = ops.mahalanobis(x[::-1].copy(), np.eye(6)[::-1].copy(),
                                     x[:3][::-1].copy(), center=x[0][::-1].copy())
    np.testing.assert_allclose(d2, want, rtol=1e-6)
    np.testing.assert_array_equal(argmin, want_arg)


def test_tensors_that_require_grad_on_every_backend(backend, rng):
    x = torch.from_numpy(gaussian(rng, 20, 5).astype(np.float32)).requires_grad_()
    values, _ = ops.knn(x, [x[:7], x[7:]], 2, "cosine")
    assert not values.requires_grad
    np.testing.assert_allclose(values[:, 0].numpy(), 1.0, rtol=1e-6)
    w = torch.eye(5, requires_grad=True)
    d2, _ = ops.mahalanobis(x, w, x[:2])
    assert d2[:2].abs().max() < 1e-5


def test_memmaps_stay_zero_copy(tmp_path, rng):
    x = gaussian(rng, 50, 8).astype(np.float32)
    native = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32,
                                       shape=x.shape)
    native[:] = x
    assert as_tensor(native, name="bank").data_ptr() == native.ctypes.data
    assert as_tensor(native[10:40:3], name="bank").data_ptr() == native[10:].ctypes.data
    swapped = np.lib.format.open_memmap(tmp_path / "b.npy", mode="w+", dtype=">f4",
                                        shape=x.shape)
    swapped[:] = x
    values, indices = ops.knn(x[:4], swapped, 1, "l2")
    assert indices[:, 0].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(values, 0.0, atol=1e-3)


# ---------------------------------------------------------------------------- parameter types


BAD_COUNTS = [2.5, "3", True, 0, -1]


@pytest.mark.parametrize("bad", BAD_COUNTS)
def test_count_parameters_are_named(backend, rng, bad):
    x = gaussian(rng, 10, 4).astype(np.float32)
    w = np.eye(4, dtype=np.float32)
    with pytest.raises(InputError, match=f"chunk_rows must be a positive int, got {bad!r}"):
        ops.knn(x, x, 1, chunk_rows=bad)
    with pytest.raises(InputError, match=f"chunk_rows must be a positive int, got {bad!r}"):
        ops.mahalanobis(x, w, x[:2], chunk_rows=bad)
    with pytest.raises(InputError, match=f"k must be a positive int, got {bad!r}"):
        ops.knn(x, x, bad)


def test_numpy_integers_are_counts(backend, rng):
    x = gaussian(rng, 10, 4).astype(np.float32)
    values, _ = ops.knn(x, x, np.int64(2), chunk_rows=np.int32(3))
    assert values.shape == (10, 2)
    d2, _ = ops.mahalanobis(x, np.eye(4, dtype=np.float32), x[:2], chunk_rows=np.uint8(4))
    assert d2.shape == (10,)


@pytest.mark.parametrize("name", ["rank", "sample_rows", "tile_rows", "seed"])
@pytest.mark.parametrize("bad", [2.5, "3", True])
def test_index_parameters_are_named(rng, name, bad):
    x = gaussian(rng, 40, 8).astype(np.float32)
    with pytest.raises(InputError, match=f"{name} must be"):
        ops.KNNIndex(x, "l2", **{name: bad})
    with pytest.raises(InputError, match=r"k must be a positive int, got 1\.5"):
        ops.KNNIndex(x, "l2").search(x, 1.5)


@needs_ext_backend
def test_raw_ops_report_rows_beyond_the_range():
    """The CPU kernels check the range in their norm pass; ops.knn rescales on that report."""
    q, b = torch.randn(3, 4), torch.randn(9, 4)
    huge = b.clone()
    huge[6] *= 1e20
    for metric in ("cosine", "l2"):
        with pytest.raises(RuntimeError, match="bank row 6 is outside the safe range"):
            torch.ops.ood_zoo.knn(q, huge, 2, metric, 4)
        with pytest.raises(RuntimeError, match="query row 1 is outside the safe range"):
            torch.ops.ood_zoo.knn(huge[5:], b, 2, metric, 4)
        with pytest.raises(RuntimeError, match="bank row 6 is outside the safe range"):
            torch.ops.ood_zoo.knn_bf16_update(
                q, huge, 0, torch.zeros(3, 2, dtype=torch.float64),
                torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64),
                metric, 4, 10)
    # float64: a finite row whose sum of squares overflows float64 itself
    wide_huge = b.double()
    wide_huge[2, 0] = 1e200
    with pytest.raises(RuntimeError, match="bank row 2 is outside the safe range"):
        torch.ops.ood_zoo.knn(q.double(), wide_huge, 2, "l2", 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1.0, 1e20, 1e30])
def test_row_norms_match_a_float64_reference_at_any_magnitude(dtype, scale):
    from ood_zoo.ops.magnitude import row_norms

    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.normal(size=(9, 5)) * scale).to(dtype)
    x[3] = 0.0  # a zero row has norm 0
    want = np.linalg.norm(x.double().numpy() / scale, axis=1) * scale
    got = row_norms(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), want, rtol=4 * torch.finfo(dtype).eps)
    if scale == 1.0:  # ordinary magnitudes: the bits of the plain norm
        assert torch.equal(got, x.norm(dim=1))
