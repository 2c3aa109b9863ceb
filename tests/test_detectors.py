"""The built-in detectors against the independent float64 references in ``tests/reference.py``.

Shapes come from hypothesis (edge cases included: d = 1, k = n, one query, duplicate rows, a
class with one sample); the data itself from a seeded numpy generator. Runs on one thread.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ood_zoo import builtin
from ood_zoo.api import Detector, threshold_sample_rows
from ood_zoo.detectors import (
    CosineDetector,
    EnergyDetector,
    GMMDetector,
    KNNDetector,
    LOFDetector,
    MahalanobisDetector,
    MaxLogitDetector,
    MSPDetector,
    RelativeMahalanobisDetector,
    ResidualDetector,
    chunks,
)
from ood_zoo.errors import InputError, NotFittedError

try:  # tests/ as a package, or on sys.path (pytest's default rootdir-relative import)
    from . import reference as ref
except ImportError:
    import reference as ref

torch.set_num_threads(1)

#: ``OOD_ZOO_HYPOTHESIS_EXAMPLES=500`` runs a longer, randomised search (default: 25, fixed seed).
_EXAMPLES = os.environ.get("OOD_ZOO_HYPOTHESIS_EXAMPLES")
SETTINGS = settings(
    max_examples=int(_EXAMPLES or 25), deadline=None, derandomize=_EXAMPLES is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SEEDS = st.integers(0, 2**32 - 1)
SCALES = st.sampled_from([1e-3, 1.0, 1e3])


# ----------------------------------------------------------------------------- data
def make_features(seed: int, n: int, d: int, *, duplicates: int = 0, scale: float = 1.0):
    """``[n, d]`` float64 rows around a random offset, with up to ``duplicates`` copied rows."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) + 2.0 * rng.normal(size=d)) * scale
    for _ in range(min(duplicates, n - 1)):
        i, j = rng.integers(0, n, size=2)
        x[i] = x[j]
    return x, rng


def make_queries(rng, x: np.ndarray, q: int) -> np.ndarray:
    """``q`` fresh rows at the data's scale, then up to ``q`` copies of fit rows."""
    scale = max(float(np.abs(x).max()), 1e-300)
    fresh = rng.normal(size=(q, x.shape[1])) * scale
    return np.concatenate([fresh, x[: min(q, x.shape[0])]])


def make_labels(rng, n: int, n_classes: int) -> np.ndarray:
    """Labels drawn from ``n_classes`` arbitrary, non-contiguous integers (all present)."""
    codes = np.sort(rng.choice(np.arange(-40, 60), size=n_classes, replace=False))
    index = np.concatenate([rng.permutation(n_classes), rng.integers(0, n_classes, n - n_classes)])
    return codes[rng.permutation(index)]


def assert_scores(got, want, *, rtol: float, scale_atol: float) -> None:
    """``|got - want| <= rtol |want| + scale_atol · max(1, max|want|)``."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(
        got, want, rtol=rtol, atol=scale_atol * max(1.0, float(np.abs(want).max()))
    )


def as_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


# ----------------------------------------------------------------------------- cosine / kNN
@SETTINGS
@given(n=st.integers(1, 25), d=st.integers(1, 6), q=st.integers(1, 5),
       duplicates=st.integers(0, 4), seed=SEEDS, scale=SCALES)
@example(n=1, d=1, q=1, duplicates=0, seed=0, scale=1.0)
@example(n=6, d=3, q=1, duplicates=5, seed=1, scale=1.0)
def test_cosine_matches_reference(n, d, q, duplicates, seed, scale):
    x, rng = make_features(seed, n, d, duplicates=duplicates, scale=scale)
    queries = make_queries(rng, x, q)
    det = CosineDetector().fit(x)
    assert_scores(det.score(queries), ref.knn_scores(x, queries, 1, "cosine"),
                  rtol=1e-8, scale_atol=1e-12)
    want_loo = ref.knn_leave_one_out(x, 1, "cosine")
    got_loo = det._fit_scores(as_torch(x), None, torch.arange(n))
    assert_scores(got_loo.numpy(), want_loo, rtol=1e-8, scale_atol=1e-12)
    assert det.threshold_ == pytest.approx(ref.threshold_at_tpr(want_loo, 0.95), abs=1e-12)


@SETTINGS
@given(rank=st.sampled_from(["1", "2", "half", "n"]), n=st.integers(1, 25),
       d=st.integers(1, 6), q=st.integers(1, 5), duplicates=st.integers(0, 4), seed=SEEDS,
       scale=SCALES, metric=st.sampled_from(["l2", "cosine"]), normalize=st.booleans())
@example(rank="n", n=5, d=3, q=2, duplicates=0, seed=0, scale=1.0, metric="l2", normalize=False)
@example(rank="2", n=6, d=2, q=1, duplicates=5, seed=0, scale=1.0, metric="cosine",
         normalize=True)
def test_knn_matches_reference(rank, n, d, q, duplicates, seed, scale, metric, normalize):
    k = {"1": 1, "2": min(2, n), "half": (n + 1) // 2, "n": n}[rank]
    x, rng = make_features(seed, n, d, duplicates=duplicates, scale=scale)
    queries = make_queries(rng, x, q)
    det = KNNDetector(k=k, metric=metric, normalize=normalize).fit(x)
    # L2 distances from |q|² + |b|² - 2<q, b> (or sqrt(2 - 2 cos)) resolve distances near 0
    # only to ~sqrt(eps) times the vectors' norm
    norm = 1.0 if normalize else float(np.linalg.norm(queries, axis=1).max())
    atol = 1e-7 * norm if metric == "l2" else 1e-12
    want = ref.knn_scores(x, queries, k, metric, normalize)
    np.testing.assert_allclose(det.score(queries), want, rtol=1e-8, atol=atol)
    want_loo = ref.knn_leave_one_out(x, k, metric, normalize)
    got_loo = det._fit_scores(as_torch(x), None, torch.arange(n)).numpy()
    np.testing.assert_allclose(got_loo, want_loo, rtol=1e-8, atol=atol)


def test_knn_zero_vector_convention():
    bank = np.eye(3)
    det = KNNDetector(k=1).fit(bank)
    np.testing.assert_allclose(det.score(np.zeros((1, 3))), [-math.sqrt(2.0)])
    assert CosineDetector().fit(bank).score(np.zeros((1, 3)))[0] == 0.0


@pytest.mark.parametrize(
    "factory",
    [CosineDetector, lambda: KNNDetector(k=5), lambda: KNNDetector(k=5, metric="cosine"),
     lambda: KNNDetector(k=5, normalize=False), lambda: LOFDetector(n_neighbors=10)],
    ids=["cosine", "knn-l2", "knn-cosine", "knn-raw", "lof"],
)
def test_leave_one_out_threshold_matches_fresh_id_data(factory):
    """The fit threshold accepts about target_tpr of *fresh* ID samples.

    Scored against the bank, fit rows find themselves (cosine similarity 1), so
    ``predict(fit_data).mean()`` is ~1, not target_tpr; the threshold is therefore placed on
    leave-one-out scores, which behave like fresh samples' scores.
    """
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1500, 6))
    fresh = rng.normal(size=(6000, 6))
    det = factory().fit(x)
    rate = float(det.predict(fresh).mean())
    assert abs(rate - 0.95) < 0.02, rate
    if isinstance(det, KNNDetector | CosineDetector):
        k = det.hparams.get("k", 1)
        metric = det.hparams.get("metric", "cosine")
        loo = ref.knn_leave_one_out(x, k, metric, det.hparams.get("normalize", True))
        # the threshold is placed on the documented seeded sample of fit rows
        n_sample = threshold_sample_rows(len(x), det.target_tpr)
        sample = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n_sample]
        loo = loo[sample.sort().values.numpy()]
        # the float64 reference vs the fp32 kernel: a score at the threshold may round across it
        slack = 1e-5 * max(1.0, abs(det.threshold_))
        assert float((loo >= det.threshold_ - slack).mean()) >= 0.95
        assert float((loo >= det.threshold_ + slack).mean()) <= 0.95 + 1.0 / n_sample
        # the self match makes fit rows look more ID than fresh ones
        assert float(det.predict(x).mean()) > rate


# ----------------------------------------------------------------------------- Mahalanobis
@SETTINGS
@given(data=st.data(), n=st.integers(1, 30), d=st.integers(1, 6), q=st.integers(1, 4),
       duplicates=st.integers(0, 3), seed=SEEDS, scale=SCALES,
       method=st.sampled_from(["empirical", "ledoit_wolf"]), relative=st.booleans())
def test_mahalanobis_matches_reference(data, n, d, q, duplicates, seed, scale, method, relative):
    n_classes = data.draw(st.integers(1, min(n, 4)), label="n_classes")
    x, rng = make_features(seed, n, d, duplicates=duplicates, scale=scale)
    y = make_labels(rng, n, n_classes)
    queries = make_queries(rng, x, q)
    _, cov = ref.class_model(x, y, method)
    assume(ref.pinv_well_posed(cov))
    if relative:
        assume(ref.pinv_well_posed(ref.background_covariance(x, method)))
        det, want = RelativeMahalanobisDetector(covariance=method), ref.relative_mahalanobis_scores
    else:
        det, want = MahalanobisDetector(covariance=method), ref.mahalanobis_scores
    det.fit(x, y)
    assert_scores(det.score(queries), want(x, y, queries, method), rtol=1e-8, scale_atol=1e-8)
    np.testing.assert_array_equal(det.classes_.numpy(), np.unique(y))
    assert all(det.state_dict()[name].dtype == torch.float64
               for name in det.state_tensors if name != "classes_")


def test_mahalanobis_keeps_small_eigenvalues_above_the_pinvh_cutoff():
    """Eigenvalues ~1e-10 of the largest are above max|λ|·d·eps: inverted, not dropped."""
    rng = np.random.default_rng(8)
    axes = np.array([1.0, 1.0, 1e-5, 1.0])
    x, q = rng.normal(size=(50, 4)) * axes, rng.normal(size=(6, 4)) * axes
    y = rng.integers(0, 2, 50)
    det = MahalanobisDetector().fit(x, y)
    assert det.whitening_.shape[1] == 4
    assert_scores(det.score(q), ref.mahalanobis_scores(x, y, q), rtol=1e-5, scale_atol=0)


@pytest.mark.parametrize("cls", [MahalanobisDetector, RelativeMahalanobisDetector])
def test_mahalanobis_fp32_is_accurate_far_from_the_origin(cls):
    """Centring at the mean of the class means keeps the fp32 expanded form accurate."""
    rng = np.random.default_rng(9)
    y = rng.integers(0, 3, 200)
    x = 1e3 + rng.normal(size=(3, 8))[y] + rng.normal(size=(200, 8))
    q = 1e3 + 2 * rng.normal(size=(20, 8))
    x32, q32 = x.astype(np.float32), q.astype(np.float32)
    x64, q64 = x32.astype(np.float64), q32.astype(np.float64)
    distance = -ref.mahalanobis_scores(x64, y, q64)
    if cls is RelativeMahalanobisDetector:
        want = ref.relative_mahalanobis_scores(x64, y, q64)
    else:
        want = -distance
    # uncentred, fp32 rounding of |x|² ~ 1e7 would cost ~1 in every distance
    np.testing.assert_allclose(cls().fit(x32, y).score(q32), want, rtol=0,
                               atol=5e-5 * distance.max())


def test_mahalanobis_labels_are_arbitrary_integers():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3))
    codes = np.array([3, 7, 10])
    index = np.concatenate([[0, 1, 1, 2], rng.integers(0, 3, 36)])
    q = rng.normal(size=(9, 3))
    a = MahalanobisDetector().fit(x, codes[index]).score(q)
    b = MahalanobisDetector().fit(x, index).score(q)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(a, ref.mahalanobis_scores(x, index, q), rtol=1e-8)


def test_ledoit_wolf_differs_from_empirical_when_singular():
    """n < d: the empirical covariance is singular and pseudo-inverted; shrinkage is not."""
    rng = np.random.default_rng(4)
    x, y, q = rng.normal(size=(6, 10)), np.array([0, 0, 0, 1, 1, 1]), rng.normal(size=(5, 10))
    emp = MahalanobisDetector().fit(x, y)
    lw = MahalanobisDetector(covariance="ledoit_wolf").fit(x, y)
    assert emp.whitening_.shape[1] == 4  # rank n - C
    assert lw.whitening_.shape[1] == 10
    assert_scores(lw.score(q), ref.mahalanobis_scores(x, y, q, "ledoit_wolf"),
                  rtol=1e-8, scale_atol=1e-10)
    assert not np.allclose(emp.score(q), lw.score(q))


def test_relative_mahalanobis_single_class_is_zero():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 4))
    det = RelativeMahalanobisDetector().fit(x, np.zeros(30, dtype=np.int64))
    np.testing.assert_allclose(det.score(rng.normal(size=(7, 4)) * 10), 0.0, atol=1e-9)


# ----------------------------------------------------------------------------- logits
@SETTINGS
@given(n=st.integers(1, 12), c=st.integers(1, 8), seed=SEEDS,
       temperature=st.floats(0.05, 20.0), spread=st.sampled_from([0.1, 5.0, 500.0]))
@example(n=1, c=1, seed=0, temperature=1.0, spread=0.1)
def test_logit_detectors_match_reference(n, c, seed, temperature, spread):
    z = np.random.default_rng(seed).normal(size=(n, c)) * spread
    assert_scores(MSPDetector(temperature=temperature).score(logits=z),
                  ref.msp_scores(z, temperature), rtol=1e-10, scale_atol=1e-14)
    assert_scores(MaxLogitDetector().score(logits=z), ref.maxlogit_scores(z),
                  rtol=0, scale_atol=0)
    assert_scores(EnergyDetector(temperature=temperature).score(logits=z),
                  ref.energy_scores(z, temperature), rtol=1e-10, scale_atol=1e-14)


def test_logit_detectors_are_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [3e4, 3e4, 3e4]], dtype=np.float32)
    np.testing.assert_allclose(MSPDetector().score(logits=z), [1.0, 1.0 / 3], rtol=1e-6)
    np.testing.assert_allclose(EnergyDetector().score(logits=z), [1e4, 3e4 + math.log(3)],
                               rtol=1e-6)


# ----------------------------------------------------------------------------- LOF
@SETTINGS
@given(data=st.data(), n=st.integers(2, 25), d=st.integers(1, 5), q=st.integers(1, 4),
       seed=SEEDS, scale=SCALES, metric=st.sampled_from(["euclidean", "cosine"]))
@example(data=None, n=2, d=1, q=1, seed=0, scale=1.0, metric="euclidean")
def test_lof_matches_definition(data, n, d, q, seed, scale, metric):
    if metric == "cosine":
        d = max(d, 2)  # angles in 1-D are all 0 or π: every distance ties
    k = n - 1 if data is None else data.draw(st.integers(1, n - 1), label="n_neighbors")
    x, rng = make_features(seed, n, d, scale=scale)
    queries = make_queries(rng, x, q)[:q]  # fresh points only: a copy of a fit row has lrd ~1e10
    det = LOFDetector(n_neighbors=k, metric=metric).fit(x)
    want, want_fit = ref.lof_scores(x, queries, k, metric)
    assert_scores(det.score(queries), want, rtol=1e-7, scale_atol=1e-9)
    got_fit = det._fit_scores(as_torch(x), None, torch.arange(n)).numpy()
    assert_scores(got_fit, want_fit, rtol=1e-7, scale_atol=1e-9)


# ----------------------------------------------------------------------------- GMM
@pytest.mark.filterwarnings("ignore:Number of distinct clusters")  # duplicates, K > distinct
@SETTINGS
@given(data=st.data(), n=st.integers(2, 30), d=st.integers(1, 4), q=st.integers(1, 4),
       seed=SEEDS, covariance_type=st.sampled_from(["full", "diag", "tied", "spherical"]),
       reg_covar=st.sampled_from([1e-6, 1e-2]), duplicates=st.integers(0, 2))
def test_gmm_matches_sklearn(data, n, d, q, seed, covariance_type, reg_covar, duplicates):
    k = data.draw(st.integers(1, min(n, 3)), label="n_components")
    x, rng = make_features(seed, n, d, duplicates=duplicates)
    queries = make_queries(rng, x, q)
    params = {"n_components": k, "covariance_type": covariance_type, "reg_covar": reg_covar,
              "seed": seed % 1000}
    det = GMMDetector(**params).fit(x)
    model = ref.sklearn_gmm(x, k, covariance_type, reg_covar, seed % 1000)
    want = model.score_samples(queries)
    own = ref.gmm_log_likelihood(queries, model.weights_, model.means_, model.covariances_,
                                 covariance_type)
    assert_scores(own, want, rtol=1e-8, scale_atol=1e-8)  # the reference formula is right
    assert_scores(det.score(queries), want, rtol=1e-8, scale_atol=1e-8)


# ----------------------------------------------------------------------------- residual
@SETTINGS
@given(data=st.data(), n=st.integers(1, 25), d=st.integers(1, 7), q=st.integers(1, 4),
       seed=SEEDS, scale=SCALES, duplicates=st.integers(0, 2))
@example(data=None, n=1, d=1, q=1, seed=0, scale=1.0, duplicates=0)
@example(data=None, n=3, d=6, q=2, seed=0, scale=1.0, duplicates=0)  # auto dim capped by n
def test_residual_matches_svd(data, n, d, q, seed, scale, duplicates):
    largest = min(d - 1, n - 1)
    explicit = 0 if data is None or largest < 1 else data.draw(
        st.sampled_from([0, 1, largest]), label="dim")
    dim = explicit or max(0, min(d // 2, (n - 1) // 2))
    x, rng = make_features(seed, n, d, duplicates=duplicates, scale=scale)
    queries = make_queries(rng, x, q)
    want, s = ref.residual_scores(x, queries, dim)
    if 0 < dim < d:  # the subspace must be determined: a gap at the boundary
        assume(s[dim - 1] - s[dim] > 1e-6 * s[0])
    det = ResidualDetector(dim=explicit).fit(x)
    assert det.dim_ == dim
    assert_scores(det.score(queries), want, rtol=1e-8, scale_atol=1e-9)


# ----------------------------------------------------------------------------- all detectors
def _knn(**kw):
    return KNNDetector(k=3, **kw)


#: name -> (factory, reference(x, y, queries) in float64)
FEATURE_CASES = {
    "cosine": (CosineDetector, lambda x, y, q: ref.knn_scores(x, q, 1, "cosine")),
    "knn": (_knn, lambda x, y, q: ref.knn_scores(x, q, 3, "l2", True)),
    "knn-raw": (lambda: _knn(normalize=False),
                lambda x, y, q: ref.knn_scores(x, q, 3, "l2", False)),
    "knn-cosine": (lambda: _knn(metric="cosine"), lambda x, y, q: ref.knn_scores(x, q, 3)),
    "mahalanobis": (MahalanobisDetector, ref.mahalanobis_scores),
    "mahalanobis-lw": (lambda: MahalanobisDetector(covariance="ledoit_wolf"),
                       lambda x, y, q: ref.mahalanobis_scores(x, y, q, "ledoit_wolf")),
    "relative_mahalanobis": (RelativeMahalanobisDetector, ref.relative_mahalanobis_scores),
    "lof": (lambda: LOFDetector(n_neighbors=5), lambda x, y, q: ref.lof_scores(x, q, 5)[0]),
    "gmm": (lambda: GMMDetector(n_components=2, covariance_type="full"),
            lambda x, y, q: ref.sklearn_gmm(x, 2, "full", 1e-6, 0).score_samples(q)),
    "residual": (ResidualDetector, lambda x, y, q: ref.residual_scores(x, q, 3)[0]),
}
LOGIT_CASES = {
    "msp": (lambda: MSPDetector(temperature=2.0), lambda z: ref.msp_scores(z, 2.0)),
    "maxlogit": (MaxLogitDetector, ref.maxlogit_scores),
    "energy": (lambda: EnergyDetector(temperature=0.5), lambda z: ref.energy_scores(z, 0.5)),
}
ALL_CASES = sorted([*FEATURE_CASES, *LOGIT_CASES])


def _dataset(seed: int = 11, n: int = 60, d: int = 6, n_queries: int = 20):
    rng = np.random.default_rng(seed)
    y = make_labels(rng, n, 3)
    centres = rng.normal(size=(3, d)) * 3
    x = centres[np.searchsorted(np.unique(y), y)] + rng.normal(size=(n, d))
    queries = rng.normal(size=(n_queries, d)) * 3
    logits = rng.normal(size=(n, 5)) * 3
    return x, y, queries, logits, rng.normal(size=(n_queries, 5)) * 3


def _fit_score(name: str, x, y, q, z, zq, *, detector: Detector | None = None):
    """Fit case ``name`` (or reuse ``detector``) and score; returns ``(detector, scores)``."""
    if name in LOGIT_CASES:
        det = detector or LOGIT_CASES[name][0]().fit(logits=z)
        return det, det.score(logits=zq)
    det = detector or FEATURE_CASES[name][0]().fit(x, y)
    return det, det.score(q)


def _reference(name: str, x, y, q, z, zq):
    if name in LOGIT_CASES:
        return LOGIT_CASES[name][1](np.asarray(zq, dtype=np.float64))
    f = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    return FEATURE_CASES[name][1](f(x), y, f(q))


def _cast(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return as_torch(a).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ALL_CASES)
def test_low_precision_inputs_match_reference_on_upcast_values(name, dtype):
    x, y, q, z, zq = _dataset()
    tx, tq, tz, tzq = (_cast(a, dtype) for a in (x, q, z, zq))
    _, got = _fit_score(name, tx, y, tq, tz, tzq)
    assert isinstance(got, torch.Tensor)
    assert got.dtype == torch.float32
    up = lambda t: t.double().numpy()  # noqa: E731
    want = _reference(name, up(tx), y, up(tq), up(tz), up(tzq))
    assert_scores(got.numpy(), want, rtol=2e-4, scale_atol=2e-5)


@pytest.mark.parametrize("name", ALL_CASES)
def test_output_kind_follows_input_kind(name):
    x, y, q, z, zq = _dataset()
    for cast, kind, dtype in [
        (lambda a: a, np.ndarray, np.float64),
        (lambda a: a.astype(np.float32), np.ndarray, np.float32),
        (lambda a: a.astype(np.float16), np.ndarray, np.float32),
        (as_torch, torch.Tensor, torch.float64),
        (lambda a: as_torch(a).to(torch.bfloat16), torch.Tensor, torch.float32),
    ]:
        _, got = _fit_score(name, cast(x), y, cast(q), cast(z), cast(zq))
        assert isinstance(got, kind)
        assert got.dtype == dtype
        assert tuple(got.shape) == (q.shape[0],)
    # a single query
    _, got = _fit_score(name, x, y, q[:1], z, zq[:1])
    assert got.shape == (1,)


@pytest.mark.parametrize("name", sorted(FEATURE_CASES))
def test_memmap_bank_matches_in_memory(name, tmp_path):
    x, y, q, _, _ = _dataset()
    path = tmp_path / "bank.npy"
    writer = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=x.shape)
    writer[:] = x
    writer.flush()
    del writer
    bank = np.load(path, mmap_mode="r")
    assert isinstance(bank, np.memmap)
    factory = FEATURE_CASES[name][0]
    from_disk = factory().fit(bank, y)
    in_memory = factory().fit(np.array(bank), y)
    np.testing.assert_allclose(from_disk.score(q), in_memory.score(q), rtol=1e-6, atol=1e-7)
    assert from_disk.threshold_ == pytest.approx(in_memory.threshold_, rel=1e-6, abs=1e-7)
    if name.startswith(("cosine", "knn", "lof")):  # the bank is referenced, not copied
        assert from_disk.bank_.data_ptr() == bank.ctypes.data


@pytest.mark.parametrize("name", ALL_CASES)
def test_streaming_in_small_chunks_gives_the_same_scores(name, monkeypatch):
    x, y, q, z, zq = _dataset(n=70)
    _, whole = _fit_score(name, x, y, q, z, zq)
    monkeypatch.setattr(chunks, "SCRATCH_BYTES", 3 * 8 * 6)  # a few rows per chunk
    assert chunks.rows_per_chunk(6) < 10
    _, chunked = _fit_score(name, x, y, q, z, zq)
    np.testing.assert_allclose(chunked, whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ALL_CASES)
def test_state_dict_round_trip_gives_identical_scores(name, tmp_path):
    x, y, q, z, zq = _dataset()
    det, before = _fit_score(name, as_torch(x), y, as_torch(q), as_torch(z), as_torch(zq))
    state = det.state_dict()
    assert set(state) == set(det.state_tensors)
    fresh = type(det)(**det.hparams)
    fresh.load_state_dict(state)
    _, after = _fit_score(name, x, y, as_torch(q), z, as_torch(zq), detector=fresh)
    assert torch.equal(before, after)
    det.save(tmp_path / "saved")
    loaded = type(det).load(tmp_path / "saved")
    _, again = _fit_score(name, x, y, as_torch(q), z, as_torch(zq), detector=loaded)
    assert torch.equal(before, again)
    assert loaded.threshold_ == det.threshold_


@pytest.mark.parametrize("name", ALL_CASES)
def test_score_direction_id_above_far_away(name):
    rng = np.random.default_rng(21)
    d = 8
    base = np.full(d, 5.0 / math.sqrt(d))
    centres = base + 2.0 * np.eye(d)[:3]
    y = np.repeat([0, 1, 2], 100)
    x = centres[y] + 0.3 * rng.normal(size=(300, d))
    id_test = centres[np.arange(60) % 3] + 0.3 * rng.normal(size=(60, d))
    far = -3 * base + 10 * (np.eye(d)[0] - np.eye(d)[1]) + 0.3 * rng.normal(size=(60, d))
    confident = 8.0 * np.eye(5)[rng.integers(0, 5, 300)] + 0.1 * rng.normal(size=(300, 5))
    flat = 0.1 * rng.normal(size=(60, 5))
    if name in LOGIT_CASES:
        det = LOGIT_CASES[name][0]().fit(logits=confident)
        id_scores, ood_scores = det.score(logits=confident[:60]), det.score(logits=flat)
    else:
        det = FEATURE_CASES[name][0]().fit(x, y)
        id_scores, ood_scores = det.score(id_test), det.score(far)
    assert id_scores.min() > ood_scores.max()
    if name in LOGIT_CASES:
        assert det.predict(logits=confident[:60]).mean() > 0.6
        assert not det.predict(logits=flat).any()
    else:
        assert det.predict(id_test).mean() > 0.6
        assert not det.predict(far).any()


@pytest.mark.parametrize("name", ["mahalanobis", "relative_mahalanobis", "gmm", "residual",
                                  "msp", "energy"])
def test_fit_threshold_accepts_target_tpr_of_fit_data(name):
    x, y, _, z, _ = _dataset(n=200)
    cases = {**FEATURE_CASES, **{k: (v[0], None) for k, v in LOGIT_CASES.items()}}
    det = cases[name][0]()
    det.target_tpr = 0.9
    if name in LOGIT_CASES:
        rate = det.fit(logits=z).predict(logits=z).mean()
    else:
        rate = det.fit(x, y).predict(x).mean()
    assert 0.9 <= rate <= 0.9 + 1.0 / 200


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", sorted(FEATURE_CASES))
def test_bad_feature_input_raises_input_error(name):
    x, y, q, _, _ = _dataset()
    factory = FEATURE_CASES[name][0]
    with pytest.raises(NotFittedError):
        factory().score(q)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        factory().fit(bad, y)
    det = factory().fit(x, y)
    bad = q.copy()
    bad[1, 0] = np.inf
    with pytest.raises(InputError, match="Inf"):
        det.score(bad)
    with pytest.raises(InputError, match="2-D"):
        factory().fit(x[:, 0], y)
    with pytest.raises(InputError, match="2-D"):
        det.score(q[None])
    with pytest.raises(InputError, match="features"):
        det.score(q[:, :-1])
    with pytest.raises(InputError, match="empty"):
        factory().fit(x[:0], y[:0])
    with pytest.raises(InputError, match="empty"):
        det.score(q[:0])
    with pytest.raises(InputError):
        det.score([[1.0] * x.shape[1]])  # a list, not an array


@pytest.mark.parametrize("cls", [MahalanobisDetector, RelativeMahalanobisDetector])
def test_mahalanobis_needs_valid_labels(cls):
    x, y, _, _, _ = _dataset()
    with pytest.raises(InputError, match="labels"):
        cls().fit(x)
    with pytest.raises(InputError, match="labels"):
        cls().fit(x, y[:-1])
    with pytest.raises(InputError, match="labels"):
        cls().fit(x, y + 0.5)
    with pytest.raises(InputError, match="labels"):
        cls().fit(x, y[:, None])


@pytest.mark.parametrize(
    ("factory", "n", "match"),
    [
        (lambda: KNNDetector(k=11), 10, "k=11"),
        (lambda: LOFDetector(n_neighbors=10), 10, "n_neighbors=10"),
        (lambda: GMMDetector(n_components=11), 10, "n_components=11"),
        (lambda: GMMDetector(n_components=1), 1, "at least 2"),
        (lambda: ResidualDetector(dim=5), 5, "dim=5"),
    ],
    ids=["knn-k", "lof-k", "gmm-k", "gmm-n", "residual-n"],
)
def test_hyperparameter_too_large_for_data(factory, n, match):
    x = np.random.default_rng(0).normal(size=(n, 6))
    with pytest.raises(InputError, match=match):
        factory().fit(x)
    factory().fit(np.random.default_rng(1).normal(size=(n + 1, 6)))  # one more row is enough


def test_residual_dim_must_be_below_feature_dimension():
    x = np.random.default_rng(0).normal(size=(30, 6))
    with pytest.raises(InputError, match="dim=6"):
        ResidualDetector(dim=6).fit(x)
    assert ResidualDetector(dim=5).fit(x).complement_.shape == (6, 1)


def test_invalid_parameters_raise_value_error():
    for make in [lambda: KNNDetector(k=0), lambda: KNNDetector(metric="manhattan"),
                 lambda: MSPDetector(temperature=0.0), lambda: EnergyDetector(temperature=-1),
                 lambda: MahalanobisDetector(covariance="oas"), lambda: GMMDetector(seed=-1),
                 lambda: LOFDetector(metric="l1"), lambda: ResidualDetector(dim=-1)]:
        with pytest.raises(ValueError, match="must"):
            make()


@pytest.mark.parametrize("name", sorted(LOGIT_CASES))
def test_bad_logit_input_raises_input_error(name):
    _, _, q, z, _ = _dataset()
    det = LOGIT_CASES[name][0]()
    with pytest.raises(InputError, match="logits"):
        det.score(q)  # features only
    bad = z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        det.score(logits=bad)
    with pytest.raises(NotFittedError):
        det.predict(logits=z)  # no threshold without fit or calibrate
    det.fit(logits=z)
    with pytest.raises(InputError, match="features"):
        det.score(logits=z[:, :-1])


# ----------------------------------------------------------------------------- plugin
def test_builtin_plugin_lists_every_detector():
    classes = builtin.ood_zoo_detectors()
    names = [c.name for c in classes]
    assert len(set(names)) == len(names) == 27
    assert set(names) == {"cosine", "knn", "mahalanobis", "relative_mahalanobis", "msp",
                          "maxlogit", "energy", "entropy", "gen", "klm", "lof", "gmm", "residual",
                          "perplexity", "renyi", "fisher_rao", "self_certainty",
                          "likelihood_ratio", "fusion", "vim", "fdbd", "nci", "layers",
                          "nnguide", "she", "neco", "rde"}
    for cls in classes:
        assert issubclass(cls, Detector)
        assert cls.__doc__
        assert cls.__doc__.strip().splitlines()[0].endswith(".")


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.cuda  # skipped by tests/conftest.py where no GPU is present
@pytest.mark.parametrize("name", ALL_CASES)
def test_cuda_input_matches_cpu(name):
    x, y, q, z, zq = _dataset()
    cpu = lambda a: as_torch(a).float()  # noqa: E731
    gpu = lambda a: as_torch(a).float().cuda()  # noqa: E731
    det_cpu, want = _fit_score(name, cpu(x), y, cpu(q), cpu(z), cpu(zq))
    det_gpu, got = _fit_score(name, gpu(x), as_torch(y).cuda(), gpu(q), gpu(z), gpu(zq))
    assert got.device.type == "cuda"
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert det_gpu.threshold_ == pytest.approx(det_cpu.threshold_, rel=1e-4, abs=1e-5)
    # a CPU-fitted (or loaded) detector scores CUDA queries on the GPU
    _, mixed = _fit_score(name, x, y, gpu(q), z, gpu(zq), detector=det_cpu)
    assert mixed.device.type == "cuda"
    torch.testing.assert_close(mixed.cpu(), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
