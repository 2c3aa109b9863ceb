"""kmeans_cosine against the ood_zoo conformance kit and a float64 numpy reference."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest
import torch
from ood_zoo_example import KMeansCosineDetector

from ood_zoo import InputError
from ood_zoo.api import threshold_at_tpr
from ood_zoo.registry import Registry
from ood_zoo.testing import (
    check_detector,
    check_plugin,
    detector_params,
    make_synthetic_inputs,
)


@pytest.mark.parametrize(("name", "check"), detector_params(KMeansCosineDetector))
def test_conformance(name, check):
    check()


@pytest.mark.parametrize("params", [{"n_clusters": 1}, {"n_clusters": 3, "n_iter": 1}])
def test_conformance_with_params(params, tmp_path):
    check_detector(KMeansCosineDetector, params=params, tmp_path=tmp_path)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_conformance_on_cuda():
    from ood_zoo.testing import check_half_precision, check_numpy_torch_roundtrip

    check_numpy_torch_roundtrip(KMeansCosineDetector, device="cuda")
    check_half_precision(KMeansCosineDetector, device="cuda")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    return make_synthetic_inputs(seed=3)


def test_scores_match_float64_reference(data):
    detector = KMeansCosineDetector(n_clusters=8).fit(data.fit.features.astype(np.float64))
    centroids = detector.centroids_.numpy()
    assert centroids.dtype == np.float64
    queries = np.concatenate([data.id.features, data.ood.features]).astype(np.float64)
    expected = (_unit(queries) @ centroids.T).max(axis=1)
    np.testing.assert_allclose(detector.score(queries), expected, rtol=1e-12, atol=1e-12)
    # float32 input is scored in float32 against the same centroids
    got32 = detector.score(queries.astype(np.float32))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, expected, rtol=0, atol=1e-5)


def test_centroids_are_unit_and_a_lloyd_fixed_point(data):
    x = data.fit.features.astype(np.float64)
    detector = KMeansCosineDetector(n_clusters=5, n_iter=200).fit(x)
    centroids = detector.centroids_.numpy()
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-12)
    units = _unit(x)
    assign = (units @ centroids.T).argmax(axis=1)
    assert np.unique(assign).size == 5, "a cluster is empty"
    for c in range(5):
        mean = units[assign == c].sum(axis=0)
        np.testing.assert_allclose(centroids[c], mean / np.linalg.norm(mean), atol=1e-10)


def test_recovers_the_class_directions(data):
    detector = KMeansCosineDetector(n_clusters=3).fit(data.fit.features)
    centroids = detector.centroids_.numpy().astype(np.float64)
    labels = data.fit.labels
    class_directions = _unit(
        np.stack([data.fit.features[labels == c].mean(axis=0) for c in range(3)])
    )
    match = centroids @ class_directions.T
    assert sorted(match.argmax(axis=1).tolist()) == [0, 1, 2]
    assert match.max(axis=1).min() > 0.99


def test_threshold_uses_leave_one_out_scores(data):
    x = data.fit.features[:60].astype(np.float64)
    detector = KMeansCosineDetector(n_clusters=12, n_iter=200, target_tpr=0.9).fit(x)
    centroids = detector.centroids_.numpy()
    units = _unit(x)
    assign = (units @ centroids.T).argmax(axis=1)
    loo = np.empty(len(x))
    for i in range(len(x)):
        best = -np.inf
        for c in range(len(centroids)):
            members = (assign == c) & (np.arange(len(x)) != i)
            if not members.any():
                continue
            total = units[members].sum(axis=0)
            best = max(best, float(units[i] @ total / np.linalg.norm(total)))
        loo[i] = best
    expected = threshold_at_tpr(torch.from_numpy(loo), 0.9)
    assert detector.threshold_ == pytest.approx(expected, rel=1e-12, abs=1e-12)
    in_sample = threshold_at_tpr(torch.from_numpy((units @ centroids.T).max(axis=1)), 0.9)
    assert detector.threshold_ < in_sample


def test_every_row_its_own_cluster_still_gets_a_threshold(data):
    x = data.fit.features[:20]
    detector = KMeansCosineDetector(n_clusters=20).fit(x)
    assert np.isfinite(detector.threshold_)
    assert detector.threshold_ < 1.0 - 1e-6  # not the trivial self-match
    assert detector.score(x).min() > 1.0 - 1e-5  # every row is a centroid


def test_leave_one_out_of_a_singleton_uses_the_other_clusters():
    x = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)  # two opposite rows
    detector = KMeansCosineDetector(n_clusters=2).fit(x)
    # without itself, each row's only neighbour is at cosine -1
    assert detector.threshold_ == pytest.approx(-1.0)


def test_a_single_row_falls_back_to_its_own_score():
    detector = KMeansCosineDetector(n_clusters=1).fit(np.ones((1, 3), dtype=np.float32))
    assert detector.threshold_ == pytest.approx(1.0)


def test_same_seed_same_centroids(data):
    a = KMeansCosineDetector(n_clusters=7, seed=5).fit(data.fit.features)
    b = KMeansCosineDetector(n_clusters=7, seed=5).fit(data.fit.features)
    assert torch.equal(a.centroids_, b.centroids_)


def test_duplicate_rows_fill_every_cluster():
    x = np.repeat(np.eye(4, dtype=np.float32)[:2], 10, axis=0)  # two distinct rows, ten times
    detector = KMeansCosineDetector(n_clusters=4).fit(x)
    assert detector.centroids_.shape == (4, 4)
    assert torch.isfinite(detector.centroids_).all()
    np.testing.assert_allclose(detector.score(x), 1.0, atol=1e-6)


def test_too_many_clusters_is_an_input_error(data):
    with pytest.raises(InputError, match="n_clusters=64 is larger than the 10 fit rows"):
        KMeansCosineDetector().fit(data.fit.features[:10])


@pytest.mark.parametrize(
    "params", [{"n_clusters": 0}, {"n_iter": 0}, {"seed": -1}, {"n_clusters": 2.0}]
)
def test_invalid_params_are_rejected(params):
    with pytest.raises(ValueError, match=next(iter(params))):
        KMeansCosineDetector(**params)


ENTRY_POINT = metadata.EntryPoint(name="example", value="ood_zoo_example.plugin", group="ood_zoo")


def test_registered_through_its_entry_point():
    """The entry point of pyproject.toml, loaded as ood_zoo loads it (strictly)."""
    assert check_plugin(entry_points=[ENTRY_POINT]) == {"kmeans_cosine": KMeansCosineDetector}
    registry = Registry(entry_points=[ENTRY_POINT], builtins=False, allow={"example"},
                        block=set(), strict=True)
    record = registry.get("kmeans_cosine")
    assert record.plugin == "example"
    assert registry.plugins["example"].status == "loaded"
    assert isinstance(registry.create("kmeans_cosine", n_clusters=2), KMeansCosineDetector)
