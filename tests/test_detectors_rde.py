"""``rde`` against scikit-learn's ``KernelPCA`` + ``MinCovDet`` scores (the float64 reference),
a numpy kernel-PCA projection written here, and lm-polygraph 0.7.0's ``RDESeq``.

The detector fits with scikit-learn and scores in torch from saved tensors, so the reference
comparison checks the scoring path; the numpy projection checks the kernel-PCA maths
independently (through the Gram matrix of the projections, which the eigenvectors' signs do not
change). With the lm-polygraph 0.7.0 wheel unpacked (``tests/oracles.py``; ``make test`` does
it), ``RDESeq`` is imported through stand-in packages (its package
``__init__`` pulls in the whole estimator zoo; ``estimators/rde.py`` needs only its base class,
which imports ``transformers``) and compared with its settings (``m = 100``, ``γ = 1 / d``, seed
42; sign: ``score = -RDESeq``): on 300 fit rows of 24 Gaussian features and 50 queries, float64,
the largest absolute difference measured was 2.4e-13 (distances 40 to 167). Against
scikit-learn's own scores: 1.9e-11 on 200 rows of 16 features (m = 99, distances up to 690)
and 1.0e-13 on the rank-deficient 80 rows of 576 features (m = 39).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles import peer_modules
from sklearn.covariance import MinCovDet
from sklearn.decomposition import KernelPCA

from ood_zoo import testing as kit
from ood_zoo.detectors import RDEDetector
from ood_zoo.errors import InputError

torch.set_num_threads(1)


def sklearn_scores(fit, x, m, gamma, seed=42, support=None):
    """-MinCovDet.mahalanobis of the RBF kernel-PCA projection, all scikit-learn, float64."""
    kpca = KernelPCA(n_components=m, kernel="rbf", gamma=gamma, eigen_solver="dense")
    mcd = MinCovDet(random_state=seed, support_fraction=support).fit(kpca.fit_transform(fit))
    return -mcd.mahalanobis(kpca.transform(x))


def numpy_projection(fit, x, m, gamma):
    """``φ(x)`` of an RBF kernel PCA, from the definitions (eigenvector signs arbitrary)."""
    def kernel(a, b):
        return np.exp(-gamma * ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1))

    k_fit = kernel(fit, fit)
    n = len(fit)
    h = np.eye(n) - 1.0 / n
    values, vectors = np.linalg.eigh(h @ k_fit @ h)
    values, vectors = values[::-1][:m], vectors[:, ::-1][:, :m]
    k_x = kernel(x, fit)
    centred = k_x - k_fit.mean(axis=0) - k_x.mean(axis=1, keepdims=True) + k_fit.mean()
    return centred @ vectors / np.sqrt(values)


def scale_gamma(fit):
    return 1.0 / (fit.shape[1] * fit.var())


def gaussian(seed, n, d, scale=1.0):
    return np.random.default_rng(seed).normal(scale=scale, size=(n, d))


# ----------------------------------------------------------------------------- references
@pytest.mark.parametrize(("n", "d", "m", "gamma"), [
    (200, 16, 0, 0.0), (80, 576, 0, 0.0), (40, 1, 5, 0.5), (12, 3, 4, 0.0), (3, 2, 1, 0.0),
    (60, 8, 10, 0.05),
])
def test_rde_matches_sklearn(n, d, m, gamma):
    fit, x = gaussian(n + d, n, d), gaussian(n + d + 1, 30, d) * 1.3
    x[: min(5, n)] = fit[:5]
    det = RDEDetector(n_components=m, gamma=gamma).fit(fit)
    m = m or min(100, (n - 1) // 2)
    want = sklearn_scores(fit, x, m, gamma or scale_gamma(fit))
    got = det.score(x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10 * np.abs(want).max())


def test_rde_fits_a_large_bank_on_a_seeded_sample():
    """Above ``max_fit_rows`` the kernel PCA sees a seeded sample of the rows: the scores are
    scikit-learn's on exactly that sample (drawn here with numpy-independent bookkeeping)."""
    fit, x = gaussian(5, 300, 6), gaussian(6, 20, 6)
    det = RDEDetector(max_fit_rows=50, seed=3).fit(fit)
    assert det.fit_rows_.shape == (50, 6)
    sample = torch.randperm(300, generator=torch.Generator().manual_seed(3))[:50].sort().values
    np.testing.assert_array_equal(det.fit_rows_.numpy(), fit[sample.numpy()])
    want = sklearn_scores(fit[sample.numpy()], x, 24, scale_gamma(fit[sample.numpy()]), seed=3)
    np.testing.assert_allclose(det.score(x), want, rtol=1e-8, atol=1e-10 * np.abs(want).max())
    whole = RDEDetector(max_fit_rows=300).fit(fit)
    assert whole.fit_rows_.shape == (300, 6)


@pytest.mark.parametrize("support", [0.6, 1.0])
def test_rde_support_fraction_and_seed(support):
    fit, x = gaussian(1, 50, 6), gaussian(2, 20, 6)
    for seed in (0, 7):
        got = RDEDetector(n_components=5, support_fraction=support, seed=seed).fit(fit).score(x)
        want = sklearn_scores(fit, x, 5, scale_gamma(fit), seed=seed, support=support)
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10 * np.abs(want).max())


def test_rde_projection_matches_numpy_kernel_pca():
    fit, x = gaussian(3, 40, 5), gaussian(4, 10, 5)
    det = RDEDetector(n_components=6).fit(fit)
    got = det.embed(torch.from_numpy(x)).numpy()
    want = numpy_projection(fit, x, 6, scale_gamma(fit))
    np.testing.assert_allclose(got @ got.T, want @ want.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.abs(got), np.abs(want), rtol=1e-6, atol=1e-9)


def test_rde_default_gamma_is_scale_invariant():
    fit, x = gaussian(5, 40, 6), gaussian(6, 10, 6)
    want = RDEDetector(n_components=5).fit(fit).score(x)
    for scale in (1e-20, 1e-3, 1e4, 1e25):
        got = RDEDetector(n_components=5).fit(fit * scale).score(x * scale)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8 * np.abs(want).max())


def test_rde_answers_a_rank_deficient_bank():
    """80 bank rows in 576 dimensions (the README's case): the feature covariance is singular,
    the robust covariance in the kernel-PCA space (39 components by default) is not."""
    rng = np.random.default_rng(7)
    basis = rng.normal(size=(20, 576))
    fit = rng.normal(size=(80, 20)) @ basis + 0.1 * rng.normal(size=(80, 576))
    assert np.linalg.matrix_rank(np.cov(fit.T)) < 576
    det = RDEDetector().fit(fit)
    assert det.location_.shape == (39,)
    eigenvalues = torch.linalg.eigvalsh(torch.linalg.pinv(det.precision_))
    assert float(eigenvalues.min()) > 1e-8 * float(eigenvalues.max())
    assert np.isfinite(det.score(rng.normal(size=(10, 576)))).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_rde_dtypes(dtype):
    fit, x = gaussian(8, 60, 8), gaussian(9, 20, 8)
    cast = lambda a: torch.from_numpy(a).to(getattr(torch, dtype))  # noqa: E731
    got = RDEDetector(n_components=6).fit(cast(fit)).score(cast(x))
    assert got.dtype == (torch.float64 if dtype == "float64" else torch.float32)
    truth = lambda a: cast(a).double().numpy()  # noqa: E731  (scored in float64 throughout)
    want = sklearn_scores(truth(fit), truth(x), 6, scale_gamma(truth(fit)))
    rtol = 1e-8 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(got.double().numpy(), want, rtol=rtol,
                               atol=1e-9 * np.abs(want).max())


def test_rde_parameters_are_checked():
    fit = gaussian(10, 6, 3)
    with pytest.raises(InputError, match="n_components=6 needs at least 7"):
        RDEDetector(n_components=6).fit(fit)
    with pytest.raises(InputError, match="at least 3 fit samples"):
        RDEDetector().fit(fit[:2])
    for bad in ({"gamma": -1.0}, {"support_fraction": 1.5}, {"seed": -1}, {"n_components": 2.0}):
        with pytest.raises(ValueError, match=f"parameter '{next(iter(bad))}'"):
            RDEDetector(**bad)


# ----------------------------------------------------------------------------- API
def test_conformance_kit(tmp_path):
    kit.check_detector(RDEDetector, tmp_path=tmp_path)


def test_save_load_round_trip(tmp_path):
    fit, x = gaussian(11, 50, 5), gaussian(12, 10, 5)
    det = RDEDetector(n_components=4, gamma=0.3, seed=3).fit(fit)
    det.save(tmp_path / "rde")
    loaded = RDEDetector.load(tmp_path / "rde")
    np.testing.assert_array_equal(loaded.score(x), det.score(x))
    assert loaded.threshold_ == det.threshold_
    assert loaded.get_params() == det.get_params()
    state = det.state_dict()
    with pytest.raises(ValueError, match="precision_"):
        RDEDetector().load_state_dict({**state, "precision_": state["precision_"][:-1]})


# ----------------------------------------------------------------------------- peer parity
@pytest.fixture
def lm_polygraph_rde():
    pytest.importorskip("transformers")  # its Estimator base imports it
    with peer_modules("lm-polygraph", ("lm_polygraph", "lm_polygraph.estimators",
                                       "lm_polygraph.utils"),
                      ["lm_polygraph.estimators.rde"]) as (module,):
        yield module


def test_parity_with_lm_polygraph(lm_polygraph_rde):
    fit, x = gaussian(13, 300, 24), gaussian(14, 50, 24) * 1.2
    peer = lm_polygraph_rde.RDESeq()
    want = -peer({"embeddings_decoder": x, "train_embeddings_decoder": fit})
    got = RDEDetector(n_components=100, gamma=1.0 / 24, seed=42).fit(fit).score(x)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11 * np.abs(want).max())


@pytest.mark.cuda  # skipped by tests/conftest.py where no GPU is present
def test_cuda_input_matches_cpu():
    fit, x = (torch.from_numpy(a).float() for a in (gaussian(15, 100, 16), gaussian(16, 30, 16)))
    want = RDEDetector().fit(fit).score(x)
    for det in (RDEDetector().fit(fit.cuda()), RDEDetector().fit(fit)):
        got = det.score(x.cuda())
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
