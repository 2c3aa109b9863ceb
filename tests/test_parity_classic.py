"""The classic detectors against the peers' implementations of the same formulas.

The peers are imported from their unpacked wheels (``tests/oracles.py``; ``make test`` unpacks
them). Inputs are N(0, 1) draws: logits ``[200, C]`` times 3 (C = 2, 10, 1000; T = 0.5, 1, 4);
features ``[n, d]`` with per-dimension scales U(0.5, 3) and a random offset, labels uniform over
``C`` classes (each present), 40 queries N(0, 1.5²), (n, d, C) = (300, 8, 3) and (500, 16, 10).
Each entry gives the mapping from the peer's score to ours and the largest absolute difference
measured over those inputs (float64 unless stated; ``|s|`` is the largest score):

pytorch-ood 0.4.0 (``pytorch_ood/detector``)
    ``msp = -MaxSoftmax(t=T)``: 1.4e-15; float32 logits, 4.2e-7 (both compute in float32).
    ``maxlogit = -MaxLogit`` and ``energy = -EnergyBased(t=T)``: 0, float64 and float32.
    ``mahalanobis = -2 N · Mahalanobis`` and ``relative_mahalanobis = -N · RMD``: pytorch-ood's
    shared covariance is the class-centred scatter ``S`` (ours is ``S / N``); its score is half
    the squared distance (RMD: the whole one) to the nearest class, less the background distance
    for RMD (same ``min_c``); it inverts ``S + 1e-6 I``. Its state takes the default dtype, so
    the float64 case sets that to float64 and scales the features by 1e3, making the ridge
    negligible (``1e-6 / λ_min(S) < 1e-14``): 4.1e-13 (``|s|`` 86) and 1.7e-13 (``|s|`` 3).
    Float32 (the peer's default; unscaled features): 2.1e-5 and 1.3e-5; RMD subtracts two
    distances, so its tolerance is relative to the Mahalanobis scores.
    ``knn = -KNN(k, normalize)``, the Euclidean distance to the k-th nearest fit row, of
    unit-normalised rows or not (k = 1, 10, 50): 7.8e-16 normalised, 2.2e-15 raw; float32
    (normalised, k = 10), 1.6e-7.
    ``cosine = 1 - KNN(k=1)² / 2`` (unit vectors: ``|u - v|² = 2 - 2 cos``): 4.4e-16.
    ``odin`` perturbs the model's input; ood_zoo has no such detector.
scikit-learn
    ``lof`` is ``LocalOutlierFactor(novelty=True, algorithm="brute").score_samples`` in row
    chunks; against the default (tree) search, n_neighbors = 20: 4.4e-16 (euclidean), 0 (cosine).
    The independent check of the formula is ``tests/reference.py:lof_scores``.
oodeel 0.4.0 (``oodeel/methods``)
    ``mahalanobis = -2 · Mahalanobis`` and ``relative_mahalanobis = -2 · RMDS`` (``eps=0``): the
    same maximum-likelihood covariance (the class-weighted mean of the class covariances) and
    pseudo-inverse; its scores are ``-max_c`` of ``-d/2`` log-densities: 3.1e-13 and 1.3e-13;
    float32 (oodeel computes in the input dtype), 2.6e-4 (``|s|`` 86) and 3.1e-4 (``|s|`` 3).
    Its ``fit`` builds a feature extractor from a model, which imports torchvision, so the
    detector's per-layer fit and score run on the features with oodeel's ``TorchOperator``.
    ``MLS`` (max logit / max softmax) and ``Energy`` score only through that feature extractor
    (``feature_extractor.predict_tensor``) and are not compared; their formulas, ``-max z``,
    ``-max softmax(z)`` and ``-logsumexp(z)``, are pytorch-ood's above at T = 1. ``DKNN``
    imports faiss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles import peer_modules

from ood_zoo.detectors import (
    CosineDetector,
    EnergyDetector,
    KNNDetector,
    LOFDetector,
    MahalanobisDetector,
    MaxLogitDetector,
    MSPDetector,
    RelativeMahalanobisDetector,
)

torch.set_num_threads(1)

FEATURE_SHAPES = [(300, 8, 3), (500, 16, 10)]


def as_float64(scores) -> np.ndarray:
    return np.asarray(scores, dtype=np.float64)


def random_logits(seed: int, c: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(200, c)) * 3.0).to(dtype)


def labelled_features(seed: int, n: int, d: int, c: int):
    """Fit features ``[n, d]`` (scaled, offset), labels ``0..c-1`` (each present), queries."""
    rng = np.random.default_rng(seed)
    fit = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
    labels = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    return fit, labels, rng.normal(size=(40, d)) * 1.5


def assert_close(got, want, *, rtol: float, scale=None) -> None:
    """``got ≈ want`` to ``rtol`` of ``|want|`` plus ``rtol`` of the largest ``|scale|``.

    ``scale`` (default: none) bounds the terms a score is a difference of: the relative
    Mahalanobis score subtracts two distances, so its rounding is relative to them.
    """
    got, want = as_float64(got), as_float64(want)
    assert got.shape == want.shape
    assert np.isfinite(got).all()
    atol = 0.0 if scale is None else rtol * np.abs(as_float64(scale)).max()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def pytorch_ood():
    """pytorch-ood's classic detector modules, through stand-in packages (no torchvision)."""
    names = ("softmax", "maxlogit", "energy", "mahalanobis", "rmd", "knn")
    with peer_modules("pytorch-ood", ("pytorch_ood", "pytorch_ood.detector"),
                      [f"pytorch_ood.detector.{name}" for name in names]) as modules:
        yield dict(zip(names, modules, strict=True))


@pytest.fixture
def default_float64():
    """Make float64 the default dtype (pytorch-ood allocates its fitted state with it)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


# ----------------------------------------------------------------------------- pytorch-ood
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("c", [2, 10, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 4.0])
def test_logit_detectors_match_pytorch_ood(pytorch_ood, dtype, rtol, c, temperature):
    z = random_logits(c, c, dtype)
    peer_msp = pytorch_ood["softmax"].MaxSoftmax(None, t=temperature).predict_logits(z)
    assert_close(MSPDetector(temperature=temperature).score(logits=z), -peer_msp, rtol=rtol)
    peer_energy = pytorch_ood["energy"].EnergyBased(None, t=temperature).predict_logits(z)
    assert_close(EnergyDetector(temperature=temperature).score(logits=z), -peer_energy,
                 rtol=rtol)
    peer_max = pytorch_ood["maxlogit"].MaxLogit(None).predict_logits(z)
    assert_close(MaxLogitDetector().score(logits=z), -peer_max, rtol=0.0)


@pytest.mark.parametrize(("n", "d", "c"), FEATURE_SHAPES)
def test_mahalanobis_matches_pytorch_ood_float64(pytorch_ood, default_float64, n, d, c):
    fit, labels, queries = labelled_features(n + d, n, d, c)
    fit, queries = fit * 1e3, queries * 1e3  # the 1e-6 ridge on S becomes negligible
    x, y, q = (torch.from_numpy(a) for a in (fit, labels, queries))
    peer = pytorch_ood["mahalanobis"].Mahalanobis(None).fit_features(x, y)
    assert peer.precision.dtype == torch.float64
    distances = MahalanobisDetector().fit(fit, labels).score(queries)
    assert_close(distances, -2 * n * peer.predict_features(q), rtol=1e-10)
    peer = pytorch_ood["rmd"].RMD(None).fit_features(x, y)
    assert_close(RelativeMahalanobisDetector().fit(fit, labels).score(queries),
                 -n * peer.predict_features(q), rtol=1e-10, scale=distances)


@pytest.mark.parametrize(("n", "d", "c"), FEATURE_SHAPES)
def test_mahalanobis_matches_pytorch_ood_float32(pytorch_ood, n, d, c):
    fit, labels, queries = labelled_features(n + d, n, d, c)
    x, q = torch.from_numpy(fit).float(), torch.from_numpy(queries).float()
    y = torch.from_numpy(labels)
    peer = pytorch_ood["mahalanobis"].Mahalanobis(None).fit_features(x, y)
    assert peer.precision.dtype == torch.float32
    distances = MahalanobisDetector().fit(fit, labels).score(queries)
    assert_close(distances, -2 * n * peer.predict_features(q), rtol=1e-5)
    peer = pytorch_ood["rmd"].RMD(None).fit_features(x, y)
    assert_close(RelativeMahalanobisDetector().fit(fit, labels).score(queries),
                 -n * peer.predict_features(q), rtol=1e-5, scale=distances)


@pytest.mark.parametrize(("n", "d", "c"), FEATURE_SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [1, 10, 50])
def test_knn_matches_pytorch_ood(pytorch_ood, n, d, c, normalize, k):
    fit, labels, queries = labelled_features(n + d, n, d, c)
    peer = pytorch_ood["knn"].KNN(None, k=k, normalize=normalize)
    peer.fit_features(torch.from_numpy(fit), torch.from_numpy(labels))
    want = -peer.predict_features(torch.from_numpy(queries))
    got = KNNDetector(k=k, normalize=normalize).fit(fit).score(queries)
    assert_close(got, want, rtol=1e-12)


def test_knn_matches_pytorch_ood_float32(pytorch_ood):
    fit, labels, queries = labelled_features(0, 300, 8, 3)
    fit32, queries32 = fit.astype(np.float32), queries.astype(np.float32)
    peer = pytorch_ood["knn"].KNN(None, k=10)
    peer.fit_features(torch.from_numpy(fit32), torch.from_numpy(labels))
    want = -peer.predict_features(torch.from_numpy(queries32))
    assert_close(KNNDetector(k=10).fit(fit32).score(queries32), want, rtol=2e-6)


@pytest.mark.parametrize(("n", "d", "c"), FEATURE_SHAPES)
def test_cosine_matches_pytorch_ood_nearest_neighbour(pytorch_ood, n, d, c):
    fit, labels, queries = labelled_features(n + d, n, d, c)
    peer = pytorch_ood["knn"].KNN(None, k=1)  # unit-normalised, nearest neighbour
    peer.fit_features(torch.from_numpy(fit), torch.from_numpy(labels))
    distance = as_float64(peer.predict_features(torch.from_numpy(queries)))
    assert_close(CosineDetector().fit(fit).score(queries), 1.0 - distance**2 / 2.0,
                 rtol=1e-12, scale=1.0)


# ----------------------------------------------------------------------------- scikit-learn
@pytest.mark.parametrize(("n", "d", "c"), FEATURE_SHAPES)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_lof_matches_sklearn_tree_search(n, d, c, metric):
    from sklearn.neighbors import LocalOutlierFactor

    fit, _, queries = labelled_features(n + d, n, d, c)
    model = LocalOutlierFactor(n_neighbors=20, novelty=True, metric=metric).fit(fit)
    assert_close(LOFDetector(metric=metric).fit(fit).score(queries),
                 model.score_samples(queries), rtol=1e-12)


# ----------------------------------------------------------------------------- oodeel
@pytest.fixture(scope="module")
def oodeel():
    """oodeel's ``Mahalanobis`` and ``RMDS`` modules and its torch operator."""
    with peer_modules("oodeel", ("oodeel", "oodeel.methods"),
                      ["oodeel.methods.mahalanobis", "oodeel.methods.rmds",
                       "oodeel.utils.torch_operator"]) as modules:
        yield modules


def oodeel_scores(method, operator, fit, labels, queries) -> np.ndarray:
    """oodeel's per-layer fit and score on one feature layer (its ``fit`` needs a model)."""
    method.op = operator
    method._fit_layer(0, fit, {"labels": labels})
    return method._score_layer(0, operator.from_numpy(queries), {})


@pytest.mark.parametrize(("n", "d", "c"), FEATURE_SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mahalanobis_matches_oodeel(oodeel, n, d, c, dtype):
    mahalanobis, rmds, torch_operator = oodeel
    fit, labels, queries = labelled_features(n + d, n, d, c)
    fit, queries = fit.astype(dtype), queries.astype(dtype)
    rtol = 1e-10 if dtype == np.float64 else 2e-5
    operator = torch_operator.TorchOperator()
    peer = oodeel_scores(mahalanobis.Mahalanobis(eps=0.0), operator, fit, labels, queries)
    distances = MahalanobisDetector().fit(fit, labels).score(queries)
    assert_close(distances, -2 * peer, rtol=rtol)
    peer = oodeel_scores(rmds.RMDS(eps=0.0), operator, fit, labels, queries)
    assert_close(RelativeMahalanobisDetector().fit(fit, labels).score(queries), -2 * peer,
                 rtol=rtol, scale=distances)
