"""Fitting from mergeable per-shard statistics (``ood_zoo.detectors.statistics``).

The merged statistics are checked against direct float64 numpy sums; the detectors fitted from
them against the detector fitted on the whole bank (every fitted tensor, the scores and the
threshold) and against the float64 references in ``tests/reference.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ood_zoo import load, ops
from ood_zoo.api import threshold_rows
from ood_zoo.detectors import MahalanobisDetector, RelativeMahalanobisDetector, ResidualDetector
from ood_zoo.detectors.statistics import (
    ClassStatistics,
    fit_shards,
    threshold_rows_per_shard,
)
from ood_zoo.errors import InputError

try:  # tests/ as a package, or on sys.path (pytest's default rootdir-relative import)
    from . import reference as ref
except ImportError:
    import reference as ref

#: Uneven cuts of a 1,300-row bank: a 1-row shard and, with ``make_bank``'s labels, a shard
#: (rows 400..700) without class 21.
CUTS = (400, 401, 700, 1000)
DETECTORS = {
    "mahalanobis": lambda: MahalanobisDetector(),
    "mahalanobis-lw": lambda: MahalanobisDetector(covariance="ledoit_wolf"),
    "relative_mahalanobis": lambda: RelativeMahalanobisDetector(),
    "relative_mahalanobis-lw": lambda: RelativeMahalanobisDetector(covariance="ledoit_wolf"),
    "residual": lambda: ResidualDetector(),
    "residual-dim": lambda: ResidualDetector(dim=3),
}


def make_bank(n: int = 1300, d: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Anisotropic float64 rows far from the origin; labels in {-3, 7, 14, 21}, none of 21 in
    rows 400..700."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([-3, 7, 14, 21]), size=n)
    labels[400:700] = np.where(labels[400:700] == 21, 7, labels[400:700])
    centres = {c: rng.normal(size=d) * 3 for c in (-3, 7, 14, 21)}
    x = rng.normal(size=(n, d)) * rng.uniform(0.2, 4.0, size=d) + 50.0
    x += np.stack([centres[c] for c in labels])
    return x, labels


def split(array: np.ndarray, cuts=CUTS) -> list[np.ndarray]:
    return np.split(array, list(cuts))


def direct_statistics(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class counts, means, scatters, Σ|r|²r and Σ|r|⁴ straight from the rows (float64)."""
    classes = np.unique(y)
    out = {"classes": classes, "counts": [], "means": [], "class_scatters": [], "third": [],
           "fourth": []}
    for c in classes:
        rows = x[y == c]
        r = rows - rows.mean(axis=0)
        squared = (r * r).sum(axis=1)
        out["counts"].append(len(rows))
        out["means"].append(rows.mean(axis=0))
        out["class_scatters"].append(r.T @ r)
        out["third"].append((squared[:, None] * r).sum(axis=0))
        out["fourth"].append((squared**2).sum())
    out = {k: np.asarray(v) for k, v in out.items()}
    out["scatter"] = out["class_scatters"].sum(axis=0)
    return out


def assert_statistics(stats: ClassStatistics, want: dict[str, np.ndarray], rtol=1e-11):
    np.testing.assert_array_equal(stats.classes.numpy(), want["classes"])
    np.testing.assert_array_equal(stats.counts.numpy(), want["counts"])
    for name in ("means", "scatter", "class_scatters", "third", "fourth"):
        got = getattr(stats, name)
        if got is None:
            continue
        got, expected = got.numpy(), want[name]
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got, expected, rtol=0, atol=rtol * scale, err_msg=name)


def tree(parts: list[ClassStatistics]) -> ClassStatistics:
    return ClassStatistics.merge_all(parts)


def sequential(parts: list[ClassStatistics]) -> ClassStatistics:
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    return total


def reversed_left(parts: list[ClassStatistics]) -> ClassStatistics:
    total = parts[-1]
    for part in reversed(parts[:-1]):
        total = part.merge(total)
    return total


@pytest.mark.parametrize("reduce", [tree, sequential, reversed_left])
@pytest.mark.parametrize("higher", [False, True])
def test_merged_statistics_equal_the_direct_sums(reduce, higher):
    x, y = make_bank()
    parts = [ClassStatistics.from_features(xs, ys, higher_moments=higher)
             for xs, ys in zip(split(x), split(y), strict=True)]
    assert parts[1].n_rows == 1
    assert 21 not in parts[2].classes.tolist()
    merged = reduce(parts)
    want = direct_statistics(x, y)
    assert merged.higher_moments is higher
    assert_statistics(merged, want)
    assert merged.n_rows == len(x)
    assert merged.n_features == x.shape[1]


def test_from_features_streams_chunks(monkeypatch):
    """Chunks of 7 rows (so every chunk misses classes) merge to the direct sums."""
    from ood_zoo.detectors import statistics

    monkeypatch.setattr(statistics, "rows_per_chunk", lambda width: 7)
    x, y = make_bank(n=200)
    stats = ClassStatistics.from_features(x.astype(np.float32), y, higher_moments=True)
    assert_statistics(stats, direct_statistics(x.astype(np.float32).astype(np.float64), y))


def test_pooled_is_one_class_about_the_overall_mean():
    x, y = make_bank()
    parts = [ClassStatistics.from_features(xs, ys, higher_moments=True)
             for xs, ys in zip(split(x), split(y), strict=True)]
    pooled = tree(parts).pooled()
    want = direct_statistics(x, np.zeros(len(x), dtype=np.int64))
    assert_statistics(pooled, want)
    unlabelled = ClassStatistics.from_features(x)
    assert_statistics(unlabelled, want)
    assert not unlabelled.higher_moments
    assert np.isnan(float(unlabelled.moments().fourth))


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=6), d=st.integers(1, 4),
       n_classes=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
       order=st.permutations(range(6)))
def test_merge_property(sizes, d, n_classes, seed, order):
    """Any shards, merged in any order, give the statistics of all their rows."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.normal(size=(n, d)) * 10.0 ** rng.integers(-2, 3) + rng.normal(size=d) * 100
    y = rng.integers(0, n_classes, size=n)
    cuts = np.cumsum(sizes)[:-1]
    parts = [ClassStatistics.from_features(xs, ys, higher_moments=True)
             for xs, ys in zip(np.split(x, cuts), np.split(y, cuts), strict=True)]
    permuted = [parts[i] for i in order if i < len(parts)]
    assert_statistics(sequential(permuted), direct_statistics(x, y), rtol=1e-9)


def state(detector) -> dict[str, torch.Tensor]:
    """The fitted tensors, with each factor replaced by what it determines: ``W Wᵀ`` (the
    pseudo-inverse) for a whitening ``W``, ``Q Qᵀ`` (the projector) for a complement basis."""
    out = {}
    for name, tensor in detector.state_dict().items():
        tensor = tensor.to(torch.float64)
        out[name] = tensor @ tensor.T if name.endswith(("whitening_", "complement_")) else tensor
    return out


def assert_same_fit(got, want, *, rtol=1e-9, score_rtol=1e-9, queries=None):
    got_state, want_state = state(got), state(want)
    assert got_state.keys() == want_state.keys()
    for name, tensor in want_state.items():
        scale = float(tensor.abs().max()) or 1.0
        torch.testing.assert_close(got_state[name], tensor, rtol=0, atol=rtol * scale,
                                   msg=name)
    assert got.n_features_in_ == want.n_features_in_
    assert got.n_logits_in_ is None
    assert got.is_fitted_
    assert got.calibration_scores_ is None
    assert got.threshold_ == pytest.approx(want.threshold_, rel=score_rtol, abs=score_rtol)
    if queries is not None:
        np.testing.assert_allclose(got.score(queries), want.score(queries), rtol=score_rtol,
                                   atol=score_rtol * np.abs(want.score(queries)).max())


@pytest.mark.parametrize("name", DETECTORS)
def test_fit_shards_equals_the_whole_bank_fit(name):
    x, y = make_bank()
    queries = make_bank(n=40, seed=1)[0] + np.linspace(-5, 5, 40)[:, None]
    whole = DETECTORS[name]().fit(x, y)
    sharded = fit_shards(DETECTORS[name](), split(x), split(y))
    assert_same_fit(sharded, whole, queries=queries)
    if name.startswith("residual"):
        assert sharded.dim_ == whole.dim_
        return
    reference = (ref.relative_mahalanobis_scores if name.startswith("relative")
                 else ref.mahalanobis_scores)
    method = "ledoit_wolf" if name.endswith("-lw") else "empirical"
    want = reference(x, y, queries, method)
    np.testing.assert_allclose(sharded.score(queries), want, rtol=1e-8,
                               atol=1e-8 * np.abs(want).max())


@pytest.mark.parametrize("name", ["mahalanobis-lw", "relative_mahalanobis", "residual"])
def test_fit_statistics_in_any_merge_order_and_half_precision(name):
    x, y = make_bank()
    x16 = x.astype(np.float16)
    whole = DETECTORS[name]().fit(x16, y)
    detector = DETECTORS[name]()
    shards, labels = split(x16), split(y)
    parts = [detector.partial_statistics(s, lab) for s, lab in zip(shards, labels, strict=True)]
    wanted = threshold_rows_per_shard([len(s) for s in shards], detector.target_tpr)
    sample = torch.cat([ops.bank_rows([torch.from_numpy(s)], r)
                        for s, r in zip(shards, wanted, strict=True)])
    assert sample.dtype == torch.float16
    fitted = detector.fit_statistics(reversed_left(parts), sample)
    # the state is float64 from the same fp16 values; scores are float32
    assert_same_fit(fitted, whole, score_rtol=1e-5, queries=x16[:50])


def test_threshold_rows_per_shard_partition_the_bank_sample():
    sizes = [400, 1, 299, 0, 600]
    rows = threshold_rows_per_shard(sizes, 0.95)
    offsets = np.cumsum([0, *sizes[:-1]])
    together = torch.cat([r + int(o) for r, o in zip(rows, offsets, strict=True)])
    torch.testing.assert_close(together, threshold_rows(1300, 0.95))
    assert all(((r >= 0) & (r < n)).all() for r, n in zip(rows, sizes, strict=True))
    assert rows[3].numel() == 0
    assert len(together) == 500
    assert torch.equal(threshold_rows(300, 0.95), torch.arange(300))


def test_a_statistics_fit_saves_and_loads(tmp_path):
    x, y = make_bank()
    fitted = fit_shards(RelativeMahalanobisDetector(covariance="ledoit_wolf"), split(x), split(y))
    loaded = load(fitted.save(tmp_path / "det"))
    assert type(loaded) is RelativeMahalanobisDetector
    assert loaded.threshold_ == fitted.threshold_
    np.testing.assert_array_equal(loaded.score(x[:20]), fitted.score(x[:20]))


def test_fit_statistics_without_threshold_rows_leaves_the_threshold_unset():
    x, y = make_bank(n=300)
    detector = MahalanobisDetector().fit_statistics(ClassStatistics.from_features(x, y))
    assert detector.threshold_ is None
    assert detector.is_fitted_
    assert detector.calibrate(x[:100]).threshold_ is not None


def test_statistics_errors():
    x, y = make_bank(n=300)
    lw = MahalanobisDetector(covariance="ledoit_wolf")
    with pytest.raises(InputError, match="fourth moments"):
        lw.fit_statistics(ClassStatistics.from_features(x, y))
    with pytest.raises(InputError, match=r"threshold_features has 10 rows.*on 300"):
        lw.fit_statistics(lw.partial_statistics(x, y), x[:10])
    with pytest.raises(InputError, match="has 9 features"):
        lw.fit_statistics(lw.partial_statistics(x, y), x[:, :9])
    with pytest.raises(InputError, match="needs class labels"):
        lw.partial_statistics(x)
    with pytest.raises(InputError, match="labels: has 299 entries"):
        lw.partial_statistics(x, y[:-1])
    with pytest.raises(InputError, match="NaN"):
        lw.partial_statistics(np.where(np.arange(300)[:, None] == 5, np.nan, x), y)
    plain = ClassStatistics.from_features(x, y)
    with pytest.raises(InputError, match="10- and 9-feature"):
        plain.merge(ClassStatistics.from_features(x[:, :9], y))
    with pytest.raises(InputError, match="higher moments"):
        plain.merge(ClassStatistics.from_features(x, y, higher_moments=True))
    with pytest.raises(InputError, match="nothing to merge"):
        ClassStatistics.merge_all([])
    with pytest.raises(InputError, match="2 label arrays for 3 shards"):
        fit_shards(MahalanobisDetector(), split(x, (100, 200)), split(y, (100,)))
    with pytest.raises(InputError, match="dim=20 must be smaller"):
        ResidualDetector(dim=20).fit_statistics(ClassStatistics.from_features(x))
