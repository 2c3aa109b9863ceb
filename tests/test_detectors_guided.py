"""``nnguide``, ``she`` and ``neco`` against the float64 numpy references of ``tests/reference.py``.

Inputs include one feature, one and two logit columns, a single fit row, ``k`` at and beyond
the bank size, duplicated rows (ties), zero rows, negative energies and a constant feature.
With the pytorch-ood 0.4.0 wheel unpacked (``tests/oracles.py``; ``make test`` does it),
``nnguide`` and ``she`` are also checked against its ``NNGuide`` and
``SHE`` (signs: ours = -theirs), with a linear head giving the logits: on 300 fit rows of 32
Gaussian features (scale 2, float32 values held in float64) and 10 classes, and 40 queries, the
largest absolute difference measured was 5.5e-7 for ``nnguide`` (``k = 1``; 1.0e-7 at
``k = 10``; scores up to 8.2: pytorch-ood casts the features to float32 and normalises its bank
there) and 0 for ``she``. ``neco`` is also checked against the paper's own recipe with
scikit-learn (``StandardScaler`` then ``PCA``): 7.3e-15 (scores up to 3.8) on the inputs of
:func:`test_neco_matches_the_papers_sklearn_recipe`. oodeel 0.4.0 has no NECO, and its ``SHE``
scores ``max_c <x, S_c> / d`` over all classes (not the predicted class), a different score, so
it is not compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import torch
from oracles import peer_modules
from scipy.special import logsumexp

from ood_zoo import testing as kit
from ood_zoo.detectors import NECODetector, NNGuideDetector, SHEDetector
from ood_zoo.errors import InputError

torch.set_num_threads(1)

DTYPES = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}


# ----------------------------------------------------------------------------- data
def gaussian(seed, n, d, c, scale=2.0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=scale, size=(n, d)), rng.normal(scale=scale, size=(n, c))


def assert_close(got, want, *, rtol=1e-12, atol=1e-12):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- nnguide
@pytest.mark.parametrize(("n", "d", "c", "k"), [
    (40, 8, 3, 5), (40, 1, 3, 5), (40, 8, 1, 5), (40, 8, 2, 10), (5, 4, 3, 5), (5, 4, 3, 9),
    (1, 3, 2, 1), (1, 3, 2, 4), (120, 64, 10, 1),
])
def test_nnguide_matches_reference(n, d, c, k):
    fit_x, fit_z = gaussian(n + d, n, d, c)
    x, z = gaussian(n + d + 1, 25, d, c)
    det = NNGuideDetector(k=k).fit(fit_x, logits=fit_z)
    scale = np.abs(logsumexp(z, axis=1)).max() * np.abs(logsumexp(fit_z, axis=1)).max()
    assert_close(det.score(x, z), ref.nnguide_scores(fit_x, fit_z, x, z, k), atol=1e-13 * scale)


def test_nnguide_threshold_is_placed_on_leave_one_out_scores():
    fit_x, fit_z = gaussian(1, 30, 5, 3)
    fit_x[7] = fit_x[3]  # a duplicate: its own twin stays a neighbour
    for k in (1, 4, 29, 40):
        det = NNGuideDetector(k=k, target_tpr=1.0).fit(fit_x, logits=fit_z)
        assert det.threshold_ == pytest.approx(
            ref.nnguide_leave_one_out(fit_x, fit_z, k).min(), rel=1e-12, abs=1e-12)


def test_nnguide_ties_zero_rows_and_zero_energy():
    fit_x, fit_z = gaussian(2, 12, 4, 3)
    fit_x[:6] = fit_x[0]  # six tied bank rows
    fit_x[6] = 0.0
    x, z = gaussian(3, 6, 4, 3)
    x[0] = fit_x[0]
    x[1] = 0.0  # a zero query: similarity 0 to everything
    det = NNGuideDetector(k=3).fit(fit_x, logits=fit_z)
    assert_close(det.score(x, z), ref.nnguide_scores(fit_x, fit_z, x, z, 3), atol=1e-12)
    assert det.score(x, z)[1] == 0.0
    zero = NNGuideDetector(k=2).fit(fit_x, logits=np.zeros((12, 1)))  # E = 0 for every row
    np.testing.assert_array_equal(zero.score(x, z[:, :1]), np.zeros(6))


def test_nnguide_negative_energies():
    fit_x, fit_z = gaussian(4, 30, 6, 4)
    fit_z -= 20.0  # every E(b) < 0: the top inner products are those with the farthest rows
    x, z = gaussian(5, 10, 6, 4)
    det = NNGuideDetector(k=3).fit(fit_x, logits=fit_z)
    assert_close(det.score(x, z), ref.nnguide_scores(fit_x, fit_z, x, z, 3), atol=1e-11)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_nnguide_dtypes(dtype):
    fit_x, fit_z = gaussian(6, 50, 16, 4)
    x, z = gaussian(7, 20, 16, 4)
    cast = lambda a: torch.from_numpy(a).to(getattr(torch, dtype))  # noqa: E731
    truth = lambda a: cast(a).double().numpy()  # noqa: E731  (the values after rounding)
    got = NNGuideDetector(k=5).fit(cast(fit_x), logits=cast(fit_z)).score(cast(x), cast(z))
    assert got.dtype == (torch.float64 if dtype == "float64" else torch.float32)
    want = ref.nnguide_scores(truth(fit_x), truth(fit_z), truth(x), truth(z), 5)
    u = max(DTYPES[dtype], 2.0**-24)
    assert_close(got, want, rtol=0, atol=64 * 17 * u * np.abs(want).max() * 10)


def test_nnguide_refuses_scores_beyond_float32():
    fit_x, fit_z = gaussian(8, 10, 3, 2)
    fit_z = np.abs(fit_z) * 1e20
    det = NNGuideDetector(k=2).fit(fit_x, logits=fit_z)  # float64: fine
    with pytest.raises(InputError, match="overflow"):  # E(x) G(x) ~ 1e40 in float32
        det.score(fit_x.astype(np.float32), fit_z.astype(np.float32))
    with pytest.raises(InputError, match="overflow"):  # the fit threshold's scores already
        NNGuideDetector(k=2).fit(fit_x.astype(np.float32), logits=fit_z.astype(np.float32))


# ----------------------------------------------------------------------------- she
@pytest.mark.parametrize(("n", "d", "c"), [(60, 8, 3), (60, 1, 3), (60, 8, 1), (60, 8, 2),
                                           (3, 4, 3), (1, 2, 1)])
def test_she_matches_reference(n, d, c):
    fit_x, fit_z = gaussian(n * d, n, d, c)
    labels = np.random.default_rng(n).integers(0, c, n)
    x, z = gaussian(n * d + 1, 25, d, c)
    det = SHEDetector().fit(fit_x, labels, fit_z)
    assert_close(det.score(x, z), ref.she_scores(fit_x, labels, fit_z, x, z), atol=1e-12)


def test_she_falls_back_to_all_labelled_rows_and_zero_for_unlabelled_columns():
    fit_x, _ = gaussian(9, 20, 5, 4)
    labels = np.repeat([0, 1], 10)
    fit_z = np.zeros((20, 4))
    fit_z[:, 0] = 1.0  # everything predicted 0: class 1 has no correct prediction
    det = SHEDetector().fit(fit_x, labels, fit_z)
    patterns = det.patterns_.numpy()
    np.testing.assert_allclose(patterns[0], fit_x[:10].mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(patterns[1], fit_x[10:].mean(axis=0), rtol=1e-13)  # fallback
    np.testing.assert_array_equal(patterns[2:], 0.0)  # never labelled
    x, z = gaussian(10, 4, 5, 4)
    z[:, 3] = 100.0
    np.testing.assert_array_equal(det.score(x, z), np.zeros(4))


def test_she_ties_take_the_first_maximum():
    fit_x, _ = gaussian(11, 6, 3, 2)
    labels = np.array([0, 0, 0, 1, 1, 1])
    fit_z = np.array([[1.0, 1.0]] * 3 + [[0.0, 1.0]] * 3)  # tie: argmax 0, correct for 0..2
    x, _ = gaussian(12, 3, 3, 2)
    det = SHEDetector().fit(fit_x, labels, fit_z)
    z = np.ones((3, 2))
    assert_close(det.score(x, z), ref.she_scores(fit_x, labels, fit_z, x, z), atol=1e-13)
    np.testing.assert_allclose(det.score(x, z), x @ fit_x[:3].mean(axis=0), rtol=1e-13)


def test_she_refuses_labels_that_are_not_logit_columns():
    fit_x, fit_z = gaussian(13, 10, 3, 2)
    for labels in (np.full(10, 2), np.full(10, -1)):
        with pytest.raises(InputError, match="logit column"):
            SHEDetector().fit(fit_x, labels, fit_z)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_she_dtypes(dtype):
    fit_x, fit_z = gaussian(14, 50, 16, 4)
    labels = fit_z.argmax(axis=1)
    x, z = gaussian(15, 20, 16, 4)
    cast = lambda a: torch.from_numpy(a).to(getattr(torch, dtype))  # noqa: E731
    truth = lambda a: cast(a).double().numpy()  # noqa: E731
    got = SHEDetector().fit(cast(fit_x), labels, cast(fit_z)).score(cast(x), cast(z))
    assert got.dtype == (torch.float64 if dtype == "float64" else torch.float32)
    want = ref.she_scores(truth(fit_x), labels, truth(fit_z), truth(x), truth(z))
    u = max(DTYPES[dtype], 2.0**-24)
    bound = np.abs(truth(x)).sum(axis=1).max() * np.abs(truth(fit_x)).max()
    assert_close(got, want, rtol=0, atol=64 * u * bound)


# ----------------------------------------------------------------------------- neco
@pytest.mark.parametrize(("n", "d", "c", "dim", "scale"), [
    (60, 8, 3, 0, "maxlogit"), (60, 8, 3, 3, "none"), (60, 8, 1, 8, "maxlogit"),
    (60, 1, 2, 1, "maxlogit"), (5, 8, 2, 4, "none"), (5, 8, 2, 8, "none"), (40, 64, 10, 0, "none"),
])
def test_neco_matches_reference(n, d, c, dim, scale):
    fit_x, fit_z = gaussian(n + d + c, n, d, c)
    x, z = gaussian(n + d + c + 1, 25, d, c)
    det = NECODetector(dim=dim, scale=scale).fit(fit_x, logits=fit_z)
    want = ref.neco_scores(fit_x, x, z, dim or min(d // 2, (n - 1) // 2), scale)
    assert_close(det.score(x, z), want, rtol=1e-10, atol=1e-12)


def test_neco_matches_the_papers_sklearn_recipe():
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    fit_x, fit_z = gaussian(16, 200, 24, 5)
    fit_x[:, 3] *= 50.0  # unequal scales: the standardisation matters
    x, z = gaussian(17, 40, 24, 5)
    scaler = StandardScaler().fit(fit_x)
    pca = PCA(24).fit(scaler.transform(fit_x))
    reduced = pca.transform(scaler.transform(x))[:, :7]
    want = np.linalg.norm(reduced, axis=1) / np.linalg.norm(scaler.transform(x), axis=1)
    got = NECODetector(dim=7).fit(fit_x, logits=fit_z).score(x, z)
    assert_close(got, want * z.max(axis=1), rtol=1e-10, atol=1e-13)


def test_neco_edge_cases():
    fit_x, fit_z = gaussian(18, 30, 6, 3)
    fit_x[:, 2] = 0.7  # a constant feature keeps a unit scale
    det = NECODetector(dim=2).fit(fit_x, logits=fit_z)
    x, z = gaussian(19, 5, 6, 3)
    x[0] = det.mean_.numpy()  # the fit mean: ratio 1
    scores = det.score(x, z)
    assert scores[0] == pytest.approx(z[0].max(), rel=1e-12)
    # (the reference's own mean differs in the last bit: its row 0 is not exactly centred)
    assert_close(scores[1:], ref.neco_scores(fit_x, x, z, 2)[1:], rtol=1e-9, atol=1e-12)
    assert det.std_[2] == 1.0


def test_neco_refuses_undetermined_dimensions():
    fit_x, fit_z = gaussian(20, 5, 8, 2)
    with pytest.raises(InputError, match="at least 6 fit samples"):
        NECODetector(dim=5).fit(fit_x, logits=fit_z)
    with pytest.raises(InputError, match="exceeds the feature dimension"):
        NECODetector(dim=9).fit(fit_x, logits=fit_z)
    with pytest.raises(InputError, match="pass dim"):
        NECODetector().fit(fit_x[:, :1], logits=fit_z)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_neco_dtypes(dtype):
    fit_x, fit_z = gaussian(21, 80, 16, 4)
    x, z = gaussian(22, 20, 16, 4)
    cast = lambda a: torch.from_numpy(a).to(getattr(torch, dtype))  # noqa: E731
    truth = lambda a: cast(a).double().numpy()  # noqa: E731
    got = NECODetector(dim=5).fit(cast(fit_x), logits=cast(fit_z)).score(cast(x), cast(z))
    assert got.dtype == (torch.float64 if dtype == "float64" else torch.float32)
    want = ref.neco_scores(truth(fit_x), truth(x), truth(z), 5)
    u = max(DTYPES[dtype], 2.0**-24)
    assert_close(got, want, rtol=0, atol=2**-24 * 1e3 + 64 * u * np.abs(want).max())


# ----------------------------------------------------------------------------- API
@pytest.mark.parametrize("cls", [NNGuideDetector, SHEDetector, NECODetector])
def test_conformance_kit(cls, tmp_path):
    kit.check_detector(cls, tmp_path=tmp_path)


@pytest.mark.parametrize("make", [lambda: NNGuideDetector(k=3), SHEDetector,
                                  lambda: NECODetector(dim=3, scale="none")])
def test_save_load_round_trip(make, tmp_path):
    fit_x, fit_z = gaussian(23, 40, 6, 3)
    labels = fit_z.argmax(axis=1)
    x, z = gaussian(24, 10, 6, 3)
    det = make().fit(fit_x, labels, fit_z)
    det.save(tmp_path / "det")
    loaded = type(det).load(tmp_path / "det")
    np.testing.assert_array_equal(loaded.score(x, z), det.score(x, z))
    assert loaded.threshold_ == det.threshold_
    assert loaded.get_params() == det.get_params()


def test_load_refuses_mismatched_state():
    fit_x, fit_z = gaussian(25, 20, 4, 2)
    det = NECODetector(dim=2).fit(fit_x, logits=fit_z)
    state = det.state_dict()
    with pytest.raises(ValueError, match="components_"):
        NECODetector().load_state_dict({**state, "components_": state["components_"][:-1]})
    she = SHEDetector().fit(fit_x, fit_z.argmax(axis=1), fit_z)
    with pytest.raises(ValueError, match="patterns_"):
        SHEDetector().load_state_dict({"patterns_": she.patterns_[0]})
    guide = NNGuideDetector(k=2).fit(fit_x, logits=fit_z)
    with pytest.raises(ValueError, match="scale_"):
        NNGuideDetector().load_state_dict({**guide.state_dict(), "scale_": torch.ones(2)})


# ----------------------------------------------------------------------------- peer parity
@pytest.fixture
def pytorch_ood_detectors():
    """pytorch-ood's ``nnguide`` and ``she`` modules, imported from the wheel (stand-in packages,
    as in ``tests/test_detectors_logits2.py``; ``sys.modules`` is restored after)."""
    names = ("nnguide", "she")
    with peer_modules("pytorch-ood", ("pytorch_ood", "pytorch_ood.detector"),
                      [f"pytorch_ood.detector.{name}" for name in names]) as modules:
        yield dict(zip(names, modules, strict=True))


@pytest.mark.parametrize("k", [1, 10])
def test_parity_with_pytorch_ood(k, pytorch_ood_detectors):
    """Signs: nnguide = -NNGuide, she = -SHE; the logits are a linear head of the features."""
    peers = pytorch_ood_detectors
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 10).double()
    head = lambda t: linear(t.double())  # noqa: E731  (NNGuide casts its features to fp32)

    def features(seed: int, n: int) -> torch.Tensor:  # fp32 values: the cast is exact
        rng = np.random.default_rng(seed)
        return torch.from_numpy(rng.normal(scale=2.0, size=(n, 32)).astype(np.float32)).double()

    fit_x, x = features(26, 300), features(27, 40)
    with torch.no_grad():
        fit_z, z = head(fit_x), head(x)
    labels = torch.from_numpy(np.random.default_rng(28).integers(0, 10, 300))
    labels[:10] = torch.arange(10)  # pytorch-ood wants every class present ...
    labels[fit_z.argmax(dim=1) == 3] = 3  # ... and correctly predicted
    peer = peers["nnguide"].NNGuide(encoder=None, head=head, k=k).fit_features(fit_x, labels)
    with torch.no_grad():
        want = -peer.predict_features(x, batch_size=64).numpy()
    got = NNGuideDetector(k=k).fit(fit_x, logits=fit_z).score(x, z).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-7)  # its bank is normalised in float32
    peer = peers["she"].SHE(encoder=None, head=head)
    with torch.no_grad():
        peer.fit_features(fit_x, labels)
        want = -peer.predict_features(x).numpy()
    got = SHEDetector().fit(fit_x, labels, fit_z).score(x, z).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda  # skipped by tests/conftest.py where no GPU is present
def test_cuda_input_matches_cpu():
    fit_x, fit_z = (torch.from_numpy(a).float() for a in gaussian(29, 200, 16, 4))
    x, z = (torch.from_numpy(a).float() for a in gaussian(30, 30, 16, 4))
    labels = fit_z.argmax(dim=1)
    for make in (NNGuideDetector, SHEDetector, NECODetector):
        want = make().fit(fit_x, labels, fit_z).score(x, z)
        got = make().fit(fit_x.cuda(), labels.cuda(), fit_z.cuda()).score(x.cuda(), z.cuda())
        mixed = make().fit(fit_x, labels, fit_z).score(x.cuda(), z.cuda())
        for scores in (got, mixed):
            assert scores.device.type == "cuda"
            torch.testing.assert_close(scores.cpu(), want, rtol=1e-4,
                                       atol=1e-4 * float(want.abs().max()))
