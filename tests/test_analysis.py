"""Isotropy measures against float64 references written differently (the isotropy study, which
uses them, is tested in test_bench_isotropy.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ood_zoo.analysis import (
    MEASURES,
    average_cosine,
    isoscore,
    isotropy_measures,
    partition_isotropy,
    top_pc_variance,
)
from ood_zoo.errors import InputError


# ---------------------------------------------------------------------------- references
def ref_average_cosine(x: np.ndarray) -> float:
    """Mean over all unordered pairs, one pair at a time."""
    total, count = 0.0, 0
    for i, j in itertools.combinations(range(len(x)), 2):
        a, b = np.linalg.norm(x[i]), np.linalg.norm(x[j])
        total += 0.0 if a == 0 or b == 0 else float(x[i] @ x[j]) / (a * b)
        count += 1
    return total / count


def ref_partition_isotropy(x: np.ndarray) -> float:
    """Z(c) by an explicit sum over rows, for c = ± every eigenvector of XᵀX (d x d eigh)."""
    _, vectors = np.linalg.eigh(x.T @ x)
    z = []
    for c in vectors.T:
        for sign in (1.0, -1.0):
            z.append(sum(math.exp(sign * float(c @ row)) for row in x))
    return min(z) / max(z)


def ref_eigenvalues(x: np.ndarray) -> np.ndarray:
    """Covariance eigenvalues from numpy's d x d covariance, descending, clipped at 0."""
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    return np.clip(np.sort(np.linalg.eigvalsh(cov))[::-1], 0.0, None)


def ref_isoscore(x: np.ndarray) -> float:
    """Closed form: the participation ratio (Σλ)² / Σλ², rescaled from [1, d] to [0, 1]."""
    lam = ref_eigenvalues(x)
    return (lam.sum() ** 2 / (lam**2).sum() - 1.0) / (x.shape[1] - 1.0)


def ref_top_pc_variance(x: np.ndarray, k: int) -> float:
    lam = ref_eigenvalues(x)
    return float(lam[:k].sum() / lam.sum())


def gaussian(n: int, d: int, seed: int = 0, anisotropy: float = 0.0) -> np.ndarray:
    """Normal rows whose per-dimension scales spread by ``exp(anisotropy)``."""
    rng = np.random.default_rng(seed)
    scales = np.exp(anisotropy * rng.uniform(-1.0, 1.0, size=d))
    return rng.normal(size=(n, d)) * scales + rng.normal(size=d)


def rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------- against references
@pytest.mark.parametrize(("n", "d", "anisotropy"),
                         [(30, 5, 0.0), (12, 20, 1.0), (40, 8, 2.0), (7, 7, 0.5)])
def test_measures_match_references(n, d, anisotropy):
    x = gaussian(n, d, seed=n + d, anisotropy=anisotropy)
    assert average_cosine(x) == pytest.approx(ref_average_cosine(x), abs=1e-12)
    assert partition_isotropy(x) == pytest.approx(ref_partition_isotropy(x), rel=1e-9)
    assert partition_isotropy(x, log=True) == pytest.approx(
        math.log(ref_partition_isotropy(x)), rel=1e-9, abs=1e-12)
    assert isoscore(x) == pytest.approx(ref_isoscore(x), abs=1e-10)
    for k in (1, 3, d):
        assert top_pc_variance(x, k) == pytest.approx(ref_top_pc_variance(x, k), abs=1e-10)


def test_partition_isotropy_counts_the_null_space():
    """3 full-rank rows in 6-d, all Z(±c) > n over the row space: a null direction (Z = n) is
    the minimum."""
    x = np.random.default_rng(118).normal(size=(3, 6)) * 5.0
    _, vectors = np.linalg.eigh(x @ x.T)
    row_space = x.T @ vectors  # unnormalised eigenvectors of XᵀX with non-zero eigenvalue
    row_space /= np.linalg.norm(row_space, axis=0)
    log_z = [math.log(sum(math.exp(s * float(c @ r)) for r in x)) for c in row_space.T
             for s in (1.0, -1.0)]
    assert min(log_z) > math.log(3) + 0.1
    assert partition_isotropy(x) == pytest.approx(ref_partition_isotropy(x), rel=1e-9)
    assert partition_isotropy(x, log=True) == pytest.approx(math.log(3) - max(log_z), rel=1e-9)


def test_zero_rows_have_cosine_zero():
    x = gaussian(6, 4, seed=1)
    x[2] = 0.0
    assert average_cosine(x) == pytest.approx(ref_average_cosine(x), abs=1e-12)


def test_sampled_average_cosine():
    x = gaussian(300, 16, seed=2, anisotropy=1.0)
    exact = average_cosine(x)
    estimate = average_cosine(x, n_pairs=20_000, seed=3)
    assert estimate == pytest.approx(exact, abs=0.02)
    assert estimate == average_cosine(x, n_pairs=20_000, seed=3)  # seeded
    assert estimate != average_cosine(x, n_pairs=20_000, seed=4)
    small = x[:10]
    assert average_cosine(small, n_pairs=45) == pytest.approx(ref_average_cosine(small), abs=1e-12)


def test_isotropy_measures_is_every_measure():
    x = gaussian(50, 12, seed=5, anisotropy=1.0)
    out = isotropy_measures(torch.tensor(x))
    assert set(out) == set(MEASURES)
    assert out["average_cosine"] == average_cosine(x)
    assert out["isoscore"] == isoscore(x)
    assert out["top1_variance"] == top_pc_variance(x, 1)
    assert out["top10_variance"] == top_pc_variance(x, 10)
    assert out["log_partition_isotropy"] == pytest.approx(partition_isotropy(x, log=True))
    assert out["partition_isotropy"] == pytest.approx(partition_isotropy(x))


# ---------------------------------------------------------------------------- known cases
def test_isotropic_gaussian_is_isotropic():
    x = np.random.default_rng(0).normal(size=(4000, 8))
    assert abs(average_cosine(x)) < 0.01
    assert partition_isotropy(x) > 0.8
    assert isoscore(x) > 0.98
    assert top_pc_variance(x, 1) < 0.15


def test_common_offset_is_anisotropic():
    x = np.random.default_rng(0).normal(size=(500, 8))
    shifted = x + 1000.0 * np.ones(8)
    assert average_cosine(shifted) > 0.999
    assert partition_isotropy(shifted) < 1e-300
    assert partition_isotropy(shifted, log=True) < -1000.0
    assert isoscore(shifted) == pytest.approx(isoscore(x), abs=1e-9)  # translation-invariant


def test_rank_one_data():
    rng = np.random.default_rng(0)
    x = np.outer(rng.normal(size=40), rng.normal(size=6)) + rng.normal(size=6)
    assert isoscore(x) == pytest.approx(0.0, abs=1e-12)
    assert top_pc_variance(x, 1) == pytest.approx(1.0, abs=1e-12)


def test_isoscore_is_capped_by_the_sample_size():
    """A regular simplex of m points in d >= m dimensions: m - 1 equal variances."""
    m, d = 5, 9
    x = np.zeros((m, d))
    x[:, :m] = np.eye(m)
    assert isoscore(x) == pytest.approx((m - 2) / (d - 1), abs=1e-12)
    assert isoscore(x @ rotation(d, 0)) == pytest.approx((m - 2) / (d - 1), abs=1e-12)


def test_identical_rows():
    x = np.tile(np.array([[1.0, -2.0, 0.5]]), (4, 1))
    out = isotropy_measures(x)
    assert out["average_cosine"] == pytest.approx(1.0)
    assert math.isnan(out["isoscore"])
    assert math.isnan(out["top1_variance"])
    with pytest.raises(InputError, match="identical"):
        isoscore(x)
    with pytest.raises(InputError, match="identical"):
        top_pc_variance(x, 1)


# ---------------------------------------------------------------------------- properties
@st.composite
def clouds(draw):
    n = draw(st.integers(3, 30))
    d = draw(st.integers(2, 10))
    seed = draw(st.integers(0, 2**16))
    anisotropy = draw(st.floats(0.0, 3.0))
    return gaussian(n, d, seed=seed, anisotropy=anisotropy), seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clouds(), st.floats(0.01, 100.0), st.floats(-5.0, 5.0))
def test_invariances_and_bounds(cloud, scale, shift):
    x, seed = cloud
    n, d = x.shape
    rotated = x @ rotation(d, seed)
    # rotation: every measure
    assert average_cosine(rotated) == pytest.approx(average_cosine(x), abs=1e-9)
    assert partition_isotropy(rotated, log=True) == pytest.approx(
        partition_isotropy(x, log=True), rel=1e-7, abs=1e-9)
    assert isoscore(rotated) == pytest.approx(isoscore(x), abs=1e-9)
    assert top_pc_variance(rotated, 2) == pytest.approx(top_pc_variance(x, 2), abs=1e-9)
    # scale: all but the partition function
    assert average_cosine(scale * x) == pytest.approx(average_cosine(x), abs=1e-9)
    assert isoscore(scale * x) == pytest.approx(isoscore(x), abs=1e-9)
    assert top_pc_variance(scale * x, 1) == pytest.approx(top_pc_variance(x, 1), abs=1e-9)
    # translation: the variance-based measures
    assert isoscore(x + shift) == pytest.approx(isoscore(x), abs=1e-8)
    assert top_pc_variance(x + shift, 1) == pytest.approx(top_pc_variance(x, 1), abs=1e-8)
    # bounds
    assert -1.0 / (n - 1) - 1e-12 <= average_cosine(x) <= 1.0
    assert 0.0 <= partition_isotropy(x) <= 1.0
    assert partition_isotropy(x, log=True) <= 0.0
    assert 0.0 <= isoscore(x) <= min(1.0, (n - 2) / (d - 1) + 1e-9)
    fractions = [top_pc_variance(x, k) for k in range(1, d + 1)]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(fractions))
    assert fractions[0] >= 1.0 / d - 1e-12
    assert fractions[-1] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- dtypes and errors
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    x = torch.tensor(gaussian(40, 6, seed=7, anisotropy=1.0), dtype=torch.float32)
    half = x.to(dtype)
    exact = half.double().numpy()  # the same rounded values, in float64
    assert isotropy_measures(half) == pytest.approx(isotropy_measures(exact), rel=1e-12)
    if dtype == torch.float16:
        assert isotropy_measures(half.numpy()) == pytest.approx(isotropy_measures(exact),
                                                                rel=1e-12)
    close = isotropy_measures(x)
    for name, value in isotropy_measures(half).items():
        assert value == pytest.approx(close[name], rel=0.05, abs=0.02), name


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "Inf"),
        (np.ones((1, 3)), "at least 2 rows"),
        (np.ones(3), "2-D"),
        (np.ones((2, 2, 2)), "2-D"),
        (np.ones((0, 3)), "empty"),
        ([[1.0, 2.0], [3.0, 4.0]], "numpy array or a torch tensor"),
        (np.ones((3, 2), dtype=np.int64), "floating"),
    ],
)
def test_bad_inputs_raise(x, message):
    for measure in (average_cosine, partition_isotropy, isoscore, top_pc_variance,
                    isotropy_measures):
        with pytest.raises(InputError, match=message):
            measure(x)


def test_bad_parameters_raise():
    x = gaussian(5, 3)
    with pytest.raises(InputError, match="k must be"):
        top_pc_variance(x, 0)
    with pytest.raises(InputError, match="n_pairs"):
        average_cosine(x, n_pairs=0)
    with pytest.raises(InputError, match="2 dimensions"):
        isoscore(gaussian(5, 1))
