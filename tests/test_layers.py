"""The ``layers`` detector: per-layer scores combined by mean, max or Fisher (Brown-corrected).

The combinations are checked against float64 numpy/scipy references written here, on random
per-layer scores (a toy inner detector whose score is its feature) and end to end with cosine and
Mahalanobis inner detectors; OODEEL 0.4.0's aggregators serve as a peer oracle where they apply.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import reference as ref
import scipy.stats
import torch
from oracles import peer_modules

import ood_zoo
from ood_zoo import hookimpl
from ood_zoo import testing as kit
from ood_zoo.api import Detector
from ood_zoo.detectors import CosineDetector, LayersDetector
from ood_zoo.detectors.layers import brown_correction, log_chi2_sf, parse_layers, select_layers
from ood_zoo.errors import InputError, UnknownDetectorError
from ood_zoo.ops.arrays import compute_dtype
from ood_zoo.registry import get_registry, reset_registry

COMBINATIONS = ("mean", "max", "fisher")


class FirstColumn(Detector):
    """A toy inner detector: the score is the first feature, so features are per-layer scores."""

    name = "test_first_column"

    def _score(self, features, logits):
        return features[:, 0].to(compute_dtype(features.dtype))


class _ToyPlugin:
    @hookimpl
    def ood_zoo_detectors(self):
        return [FirstColumn]


@pytest.fixture
def toy_registry():
    """The process-wide registry with :class:`FirstColumn` added; rediscovered afterwards."""
    get_registry().register_plugin(_ToyPlugin(), "test_layers_toy")
    yield
    reset_registry()


# ----------------------------------------------------------------------------- references
def ecdf_reference(fit: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mid-rank empirical CDF of ``fit``, linear between its values, hyperbolic tails."""
    values, counts = np.unique(fit, return_counts=True)
    mid = (np.cumsum(counts) - counts / 2) / fit.size
    deviation = np.abs(fit - fit.mean()).mean()
    sigma = deviation if deviation > 0 else 1.0
    out = np.interp(scores, values, mid)
    low, high = scores < values[0], scores > values[-1]
    out[low] = mid[0] * sigma / (sigma + values[0] - scores[low])
    out[high] = 1 - (1 - mid[-1]) * sigma / (sigma + scores[high] - values[-1])
    return out


def combine_reference(fit: np.ndarray, scores: np.ndarray, combine: str) -> np.ndarray:
    """float64 reference of a combination: ``fit`` [k, n] fit-set scores, ``scores`` [k, m]."""
    if combine in ("mean", "max"):
        spread = fit.std(axis=1)
        spread[spread == 0] = 1.0
        z = (scores - fit.mean(axis=1)[:, None]) / spread[:, None]
        return z.mean(axis=0) if combine == "mean" else z.min(axis=0)

    def fisher(values):
        return -2 * sum(np.log(ecdf_reference(fit[i], values[i])) for i in range(len(fit)))

    on_fit = fisher(fit)
    mu, var = on_fit.mean(), on_fit.var()
    c, f = var / (2 * mu), 2 * mu**2 / var
    return scipy.stats.chi2.logsf(fisher(scores) / c, f)


def per_layer_scores(seed: int, k: int = 4, n: int = 300, m: int = 60):
    """Correlated random per-layer fit scores [k, n] and queries [k, m], some beyond the fit."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(1, n + m))
    values = 0.7 * shared + rng.normal(size=(k, n + m)) * rng.uniform(0.5, 3, size=(k, 1))
    values += rng.normal(size=(k, 1)) * 10
    fit, queries = values[:, :n], values[:, n:]
    queries[:, :3] -= 25  # far below every fit score (OOD), through the low tails
    queries[:, 3:5] += 25  # beyond them on the ID side
    queries[:, 5] = fit[:, 7]  # exactly at fit scores
    return fit, queries


# ----------------------------------------------------------------------------- combinations
@pytest.mark.parametrize("combine", COMBINATIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_combinations_match_the_float64_reference(toy_registry, combine, seed):
    fit, queries = per_layer_scores(seed)
    detector = ood_zoo.create("layers", detector="test_first_column", combine=combine)
    detector.fit(fit.T[:, :, None].copy())
    got = detector.score(queries.T[:, :, None].copy())
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, combine_reference(fit, queries, combine), rtol=1e-10,
                               atol=1e-10)
    want = ref.threshold_at_tpr(combine_reference(fit, fit, combine), 0.95)
    assert detector.threshold_ == pytest.approx(want, rel=1e-12)


def test_fisher_is_a_log_p_value_and_ranks_one_layer_as_it(toy_registry):
    fit, queries = per_layer_scores(2, k=1)
    detector = ood_zoo.create("layers", detector="test_first_column")
    got = detector.fit(fit.T[:, :, None].copy()).score(queries.T[:, :, None].copy())
    assert (got <= 0).all()
    assert (np.argsort(got, kind="stable") == np.argsort(queries[0], kind="stable")).all()
    np.testing.assert_allclose(detector.brown_.numpy(), [1.0, 2.0], rtol=0.05)  # ≈ χ²_2


@pytest.mark.parametrize("dof", [0.7, 2.0, 7.3, 60.0, 400.0])
def test_log_chi2_sf_matches_mpmath_into_the_far_tail(dof):
    x = np.sort([0.0, 1e-3, 0.5, dof / 2, dof + 1.9, dof + 2.1, 3 * dof + 5, 1e3, 1e4, 1e6])
    got = log_chi2_sf(torch.tensor(x), dof).numpy()
    want = [float(mpmath.log(mpmath.gammainc(dof / 2, v / 2, mpmath.inf, regularized=True)))
            for v in x]
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-14)  # gammaincc: ~1e-9 near f/2
    assert np.isfinite(got).all()
    assert (np.diff(got[got < -1e-12]) < 0).all()


def test_brown_correction():
    rng = np.random.default_rng(3)
    fisher = torch.from_numpy(rng.chisquare(6, size=5000) * 2.5)
    c, f = brown_correction(fisher, 3).tolist()
    mu, var = fisher.mean().item(), fisher.var(correction=0).item()
    assert c == pytest.approx(var / (2 * mu))
    assert f == pytest.approx(2 * mu**2 / var)
    assert brown_correction(torch.tensor([4.0], dtype=torch.float64), 3).tolist() == [1.0, 6.0]


# ----------------------------------------------------------------------------- end to end
def layered_data(seed: int, n: int = 120, n_layers: int = 3, d: int = 5, m: int = 30):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    centres = rng.normal(size=(3, n_layers, d)) * 3
    fit = centres[labels] + rng.normal(size=(n, n_layers, d))
    queries = np.concatenate([centres[rng.integers(0, 3, m)] + rng.normal(size=(m, n_layers, d)),
                              rng.normal(size=(m, n_layers, d)) * 6])
    return fit, labels, queries


@pytest.mark.parametrize("combine", COMBINATIONS)
def test_cosine_per_layer_end_to_end(combine):
    """Fit-set scores are leave-one-out. Mutual nearest neighbours tie exactly in the reference's
    symmetric cosine matrix but only up to rounding in the kernel, which moves their mid-ranks by
    1/(2n): Fisher agrees to that, the standardised combinations to rounding."""
    fit, _, queries = layered_data(0)
    detector = ood_zoo.create("layers", detector="cosine", combine=combine).fit(fit)
    got = detector.score(queries)
    layer_fit = np.stack([ref.knn_leave_one_out(fit[:, i]) for i in range(fit.shape[1])])
    layer_q = np.stack([ref.knn_scores(fit[:, i], queries[:, i]) for i in range(fit.shape[1])])
    np.testing.assert_allclose(np.sort(detector.reference_.numpy(), axis=1),
                               np.sort(layer_fit, axis=1), rtol=1e-12, atol=1e-12)
    tolerance = 0.05 if combine == "fisher" else 1e-9
    np.testing.assert_allclose(got, combine_reference(layer_fit, layer_q, combine),
                               rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("combine", COMBINATIONS)
def test_mahalanobis_per_layer_end_to_end_and_save_load(combine, tmp_path):
    fit, labels, queries = layered_data(1)
    detector = ood_zoo.create("layers", detector="mahalanobis", layers="0,-1", combine=combine)
    assert detector.requires.labels
    assert detector.requires.layered
    with pytest.raises(InputError, match="labels"):
        ood_zoo.create("layers", detector="mahalanobis").fit(fit)
    got = detector.fit(fit, labels).score(queries)
    chosen = (0, 2)
    layer_fit = np.stack([ref.mahalanobis_scores(fit[:, i], labels, fit[:, i]) for i in chosen])
    layer_q = np.stack([ref.mahalanobis_scores(fit[:, i], labels, queries[:, i]) for i in chosen])
    want = combine_reference(layer_fit, layer_q, combine)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7 * np.abs(want).max())
    loaded = ood_zoo.load(detector.save(tmp_path / "saved"))
    assert isinstance(loaded, LayersDetector)
    assert loaded.get_params() == detector.get_params()
    np.testing.assert_array_equal(loaded.score(queries), got)
    assert loaded.threshold_ == detector.threshold_


def test_an_inner_detector_with_per_instance_state(tmp_path):
    """A fusion's state depends on its members: the instance's declarations are the ones used."""
    fit, _, queries = layered_data(5)
    detector = ood_zoo.create("layers", detector="fusion", detector_params={"members": "cosine"})
    assert not detector.requires.labels
    assert "inner_member0_bank_" in detector.state_tensors
    got = detector.fit(fit).score(queries)
    loaded = ood_zoo.load(detector.save(tmp_path / "saved"))
    np.testing.assert_array_equal(loaded.score(queries), got)


def test_fitting_reuses_the_one_extraction_per_layer():
    fit, _, queries = layered_data(2)
    both = ood_zoo.create("layers", layers="1", combine="mean").fit(fit)
    alone = ood_zoo.create("layers", combine="mean").fit(fit[:, 1:2].copy())
    np.testing.assert_array_equal(both.score(queries), alone.score(queries[:, 1:2].copy()))
    single = CosineDetector().fit(fit[:, 1])
    torch.testing.assert_close(both.inner_detectors[0].bank_, single.bank_)


# ----------------------------------------------------------------------------- layers and errors
def test_layer_selection_parsing():
    assert parse_layers("all") == parse_layers(" all ") == "all"
    assert parse_layers(" 0, -1") == parse_layers([0, -1]) == "0,-1"
    for bad in ("", "first", "0,,1", "1.5", [True], []):
        with pytest.raises(ValueError, match="layer indices"):
            parse_layers(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_layers("2,2")
    assert select_layers("all", 3) == [0, 1, 2]
    assert select_layers("-1,0", 3) == [2, 0]
    with pytest.raises(InputError, match="out of range"):
        select_layers("3", 3)
    with pytest.raises(InputError, match="twice"):
        select_layers("0,-3", 3)
    assert ood_zoo.create("layers", layers=[2, -1]).hparams["layers"] == "2,-1"


def test_input_errors():
    fit, _, queries = layered_data(3)
    with pytest.raises(InputError, match="3-D"):
        ood_zoo.create("layers").fit(fit[:, 0])
    with pytest.raises(InputError, match="2-D"):
        CosineDetector().fit(fit)
    with pytest.raises(InputError, match="out of range"):
        ood_zoo.create("layers", layers="0,5").fit(fit)
    detector = ood_zoo.create("layers", layers="-1").fit(fit)
    assert detector.layer_index_.tolist() == [2]
    assert int(detector.n_layers_) == 3
    with pytest.raises(InputError, match="fitted on 3"):
        detector.score(queries[:, :2])
    with pytest.raises(InputError, match="fitted with 5"):
        detector.score(queries[:, :, :-1])


def test_inner_detector_errors():
    with pytest.raises(UnknownDetectorError, match="unknown inner detector"):
        ood_zoo.create("layers", detector="nope")
    for name in ("msp", "perplexity", "layers"):
        with pytest.raises(ValueError, match="plain"):
            ood_zoo.create("layers", detector=name)
    with pytest.raises(ValueError, match="not valid JSON"):
        ood_zoo.create("layers", detector_params="{k: 3")
    with pytest.raises(ValueError, match="JSON object"):
        ood_zoo.create("layers", detector_params="[3]")
    with pytest.raises(TypeError, match="unknown parameter"):
        ood_zoo.create("layers", detector="knn", detector_params={"kk": 3})
    with pytest.raises(ValueError, match="combine"):
        ood_zoo.create("layers", combine="median")
    detector = ood_zoo.create("layers", detector="knn", detector_params={"k": 3})
    assert detector.hparams["detector_params"] == '{"k": 3}'


# ----------------------------------------------------------------------------- conformance
@pytest.mark.parametrize("params", [
    {"combine": "fisher"}, {"combine": "mean", "layers": "0,-1"}, {"combine": "max"},
    {"detector": "knn", "detector_params": '{"k": 3}'},
])
def test_conforms(params, tmp_path):
    kit.check_detector(LayersDetector, params=params, tmp_path=tmp_path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores_in_float32(dtype):
    fit, _, queries = layered_data(4)
    detector = ood_zoo.create("layers").fit(torch.from_numpy(fit).to(dtype))
    half = detector.score(torch.from_numpy(queries).to(dtype))
    assert half.dtype == torch.float32
    rounded = detector.score(torch.from_numpy(queries).to(dtype).float())
    torch.testing.assert_close(half, rounded, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- peer parity
@pytest.fixture
def oodeel_aggregators():
    """OODEEL 0.4.0's ``oodeel.aggregator`` package (numpy and scipy only), from the wheel.

    The package's ``__init__`` imports its deep-learning back ends, so ``oodeel`` is a stand-in
    with the wheel's path and only the aggregator modules are imported; ``sys.modules`` is
    restored after.
    """
    with peer_modules("oodeel", ("oodeel",), ["oodeel.aggregator"]) as (module,):
        yield module


def test_parity_with_oodeel(toy_registry, oodeel_aggregators):
    """OODEEL aggregates OOD scores (higher = OOD): ood_zoo's ``s`` enters as ``-s``.

    ``mean`` = ``-StdNormalized(-s) - mean_l μ_l/σ_l`` (exact up to OODEEL's 1e-10 added to σ);
    ``fisher`` = ``log(1 - Fisher(-s))`` up to the two empirical CDFs (OODEEL: ``i / (n + 2)``
    interpolated, clamped beyond the fit scores; ood_zoo: mid-ranks, hyperbolic tails), compared
    as p-values on queries from the fit distribution.
    """
    agg = oodeel_aggregators
    fit, queries = per_layer_scores(5, k=5, n=4000, m=400)
    queries = queries[:, 10:]  # inside the fit distribution: the CDFs differ only by O(1/n)
    per_layer = [-row for row in fit]
    as_input = {"fit": fit.T[:, :, None].copy(), "queries": queries.T[:, :, None].copy()}

    mean = ood_zoo.create("layers", detector="test_first_column", combine="mean")
    ours = mean.fit(as_input["fit"]).score(as_input["queries"])
    std = agg.StdNormalizedAggregator()
    std.fit(per_layer)
    shift = (fit.mean(axis=1) / fit.std(axis=1)).mean()
    theirs = -std.aggregate([-row for row in queries]) - shift
    assert np.abs(ours - theirs).max() < 1e-8  # measured 2.1e-10

    fisher = ood_zoo.create("layers", detector="test_first_column", combine="fisher")
    ours = np.exp(fisher.fit(as_input["fit"]).score(as_input["queries"]))
    peer = agg.FisherAggregator()
    peer.fit(per_layer)
    theirs = 1 - peer.aggregate([-row for row in queries])
    assert np.abs(ours - theirs).max() < 2e-2  # measured 6.9e-3 (n = 4000)
    np.testing.assert_allclose(fisher.brown_.numpy(), [peer.c, peer.kprime], rtol=0.02)  # 1.8%
    # Spearman measured 0.999996
    assert scipy.stats.spearmanr(ours, theirs).statistic > 0.999


@pytest.mark.cuda  # skipped by tests/conftest.py where no GPU is present
@pytest.mark.parametrize("combine", COMBINATIONS)
def test_cuda_input_matches_cpu(combine):
    fit, labels, queries = (torch.from_numpy(a) for a in layered_data(6))
    cpu = ood_zoo.create("layers", detector="mahalanobis", combine=combine).fit(fit, labels)
    want = cpu.score(queries)
    gpu = ood_zoo.create("layers", detector="mahalanobis", combine=combine)
    gpu.fit(fit.cuda(), labels.cuda())
    for detector in (gpu, cpu):  # fitted on the GPU, and fitted on the CPU scoring GPU queries
        got = detector.score(queries.cuda())
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


def test_a_large_fit_set_gives_each_layer_a_seeded_sample(monkeypatch):
    """Above REFERENCE_ROWS fit rows each layer's CDF, mean and spread come from the
    leave-one-out scores of the same seeded sample (float64 1-NN reference)."""
    from ood_zoo.detectors import fusion as fusion_module

    monkeypatch.setattr(fusion_module, "REFERENCE_ROWS", 30)
    x = np.random.default_rng(8).normal(size=(120, 3, 4))
    det = ood_zoo.create("layers", detector="cosine", combine="mean").fit(x)
    rows = fusion_module.reference_rows(120).numpy()
    assert det.reference_.shape == (3, 30)
    for layer in range(3):
        want = ref.knn_leave_one_out(x[:, layer], 1, "cosine")[rows]
        np.testing.assert_allclose(det.reference_[layer].numpy(), np.sort(want), atol=1e-12)
        assert float(det.location_[layer]) == pytest.approx(want.mean(), abs=1e-12)
