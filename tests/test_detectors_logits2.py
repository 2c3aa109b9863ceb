"""``entropy``, ``gen`` and ``klm`` against float64 references written here (numpy/scipy).

Inputs include extreme logits (±1e4), one dominant class whose ``1 - p`` underflows in fp32, ties,
``C = 1``, ``C = 2`` and ``C = 1000``. With the pytorch-ood 0.4.0 wheel unpacked
(``tests/oracles.py``; ``make test`` does it), the scores are also checked against its
implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles import peer_modules
from scipy.special import log_softmax

from ood_zoo import testing as kit
from ood_zoo.detectors import EntropyDetector, GENDetector, KLMatchingDetector

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- references
def ref_log_softmax(z: np.ndarray) -> np.ndarray:
    return log_softmax(np.asarray(z, dtype=np.float64), axis=1)


def ref_entropy(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    log_p = ref_log_softmax(np.asarray(z, dtype=np.float64) / temperature)
    return (np.exp(log_p) * log_p).sum(axis=1)


def ref_gen(z: np.ndarray, gamma: float = 0.1, m: int = 100) -> np.ndarray:
    """``-Σ_top-M p^γ (1-p)^γ``; ``1 - p`` from the other classes' probabilities (no rounding)."""
    log_p = ref_log_softmax(z)
    p = np.exp(log_p)
    out = np.empty(len(z))
    for i, row in enumerate(p):
        order = np.argsort(-row, kind="stable")[: min(m, row.size)]
        complement = np.array([np.delete(row, j).sum() for j in order])
        out[i] = -np.sum(row[order] ** gamma * complement**gamma)
    return out


def ref_klm(fit_z: np.ndarray, z: np.ndarray) -> np.ndarray:
    fit_p = np.exp(ref_log_softmax(fit_z))
    predicted = fit_p.argmax(axis=1)
    dists = np.stack([fit_p[predicted == c].mean(axis=0) for c in np.unique(predicted)])
    p = np.exp(ref_log_softmax(z))
    with np.errstate(divide="ignore"):
        kl = np.where(p[:, None, :] > 0, p[:, None, :] * (np.log(p)[:, None, :]
                                                         - np.log(dists)[None]), 0.0).sum(-1)
    return -kl.min(axis=1)


def random_logits(seed: int, n: int, c: int, scale: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=scale, size=(n, c))


def assert_close(got, want, *, rtol: float, atol: float = 0.0) -> None:
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- references
@pytest.mark.parametrize("c", [1, 2, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_entropy_matches_reference(c, temperature):
    z = random_logits(c, 40, c)
    det = EntropyDetector(temperature=temperature)
    assert_close(det.score(logits=z), ref_entropy(z, temperature), rtol=1e-12, atol=1e-14)
    assert_close(det.score(logits=z.astype(np.float32)), ref_entropy(z, temperature),
                 rtol=1e-5, atol=1e-6 * np.log(max(c, 2)))


@pytest.mark.parametrize("c", [1, 2, 7, 1000])
@pytest.mark.parametrize(("gamma", "m"), [(0.1, 100), (0.5, 3), (2.0, 1000), (0.1, 1)])
def test_gen_matches_reference(c, gamma, m):
    z = random_logits(c + 1, 20, c)
    det = GENDetector(gamma=gamma, M=m)
    want = ref_gen(z, gamma, m)
    assert_close(det.score(logits=z), want, rtol=1e-11, atol=1e-300)
    assert_close(det.score(logits=torch.from_numpy(z).float()), want, rtol=2e-5)


@pytest.mark.parametrize("c", [1, 2, 7, 1000])
def test_klm_matches_reference(c):
    fit_z, z = random_logits(2 * c, 300, c), random_logits(2 * c + 1, 30, c)
    det = KLMatchingDetector().fit(logits=fit_z)
    want = ref_klm(fit_z, z)
    assert_close(det.score(logits=z), want, rtol=1e-9, atol=1e-12)
    assert_close(det.fit(logits=fit_z.astype(np.float32)).score(logits=z.astype(np.float32)),
                 want, rtol=1e-3, atol=1e-4)


def test_klm_keeps_only_predicted_classes():
    fit_z = np.zeros((50, 6))
    fit_z[:25, 1] = 5.0
    fit_z[25:, 4] = 3.0
    det = KLMatchingDetector().fit(logits=fit_z)
    assert det.classes_.tolist() == [1, 4]
    assert tuple(det.log_dists_.shape) == (2, 6)
    np.testing.assert_allclose(det.score(logits=fit_z[[0, 30]]), [0.0, 0.0], atol=1e-12)


# ----------------------------------------------------------------------------- extremes
def dominant_rows(gaps: list[float], c: int) -> np.ndarray:
    z = np.zeros((len(gaps), c))
    z[:, 0] = gaps
    return z


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gen_is_exact_where_one_minus_p_underflows_in_fp32(dtype):
    # 1 - p_max = (C - 1) e^-gap: below fp32's epsilon from gap 17 on, and e^-gap below
    # fp32's smallest normal from gap ~87; the terms p^γ stay representable throughout
    gaps = [5.0, 17.0, 20.0, 30.0, 60.0, 90.0, 120.0, 200.0]
    z = dominant_rows(gaps, 4).astype(dtype)
    got = np.asarray(GENDetector().score(logits=z), dtype=np.float64)
    assert_close(got, ref_gen(z.astype(np.float64)), rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert np.all(np.diff(got) > 0)  # more confident = more ID, strictly


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_extreme_logits_stay_finite_and_ordered(dtype):
    z = np.array([[1e4, -1e4, 0.0], [1e4, 1e4, -1e4], [0.0, 0.0, 0.0], [-1e4, -1e4, -1e4]])
    if dtype == np.float16:
        z = np.clip(z, -6e4, 6e4) / 4
    z = z.astype(dtype)
    for det in (EntropyDetector(), GENDetector()):
        s = np.asarray(det.score(logits=z), dtype=np.float64)
        assert np.isfinite(s).all()
        assert s[0] > s[1] > s[2]  # one class certain > two tied classes > uniform
        assert s[2] == pytest.approx(s[3], rel=1e-6)
    np.testing.assert_allclose(EntropyDetector().score(logits=z)[:3],
                               [0.0, -np.log(2), -np.log(3)], atol=1e-6)
    klm = KLMatchingDetector().fit(logits=z)
    assert np.isfinite(np.asarray(klm.score(logits=z), dtype=np.float64)).all()


def test_klm_is_finite_when_fit_probabilities_underflow():
    fit_z = np.array([[1e4, 0.0, -1e4], [1e4, -1e4, 0.0], [0.0, 1e4, 0.0]])
    det = KLMatchingDetector().fit(logits=fit_z)
    assert torch.isfinite(det.log_dists_).all()
    query = np.array([[0.0, 0.0, 0.0], [1e4, 0.0, -1e4], [3.0, 1.0, 0.0]])
    s = det.score(logits=query)
    assert np.isfinite(s).all()
    assert s[1] == pytest.approx(0.0, abs=1e-9)  # a fit row matches its own class
    assert s[0] < s[2] < s[1]


def test_ties_score_as_references():
    z = np.array([[2.0, 2.0, 2.0, -1.0], [5.0, 5.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert_close(GENDetector(M=2).score(logits=z), ref_gen(z, 0.1, 2), rtol=1e-12)
    assert_close(EntropyDetector().score(logits=z), ref_entropy(z), rtol=1e-12, atol=1e-15)
    klm = KLMatchingDetector().fit(logits=z)
    assert_close(klm.score(logits=z), ref_klm(z, z), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_half_precision_inputs_score_in_fp32(dtype):
    z = torch.from_numpy(random_logits(3, 25, 5)).to(dtype)
    want_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    z64 = z.double().numpy()
    for det, want in ((EntropyDetector(), ref_entropy(z64)), (GENDetector(), ref_gen(z64)),
                      (KLMatchingDetector().fit(logits=z), ref_klm(z64, z64))):
        s = det.score(logits=z)
        assert s.dtype == want_dtype
        assert_close(s.numpy(), want, rtol=2e-4, atol=1e-5)


# ----------------------------------------------------------------------------- API
@pytest.mark.parametrize("cls", [EntropyDetector, GENDetector, KLMatchingDetector])
def test_conformance_kit(cls, tmp_path):
    kit.check_detector(cls, tmp_path=tmp_path)


def test_gen_params_are_checked():
    for bad in ({"gamma": 0.0}, {"gamma": -1.0}, {"M": 0}, {"M": 2.5}):
        with pytest.raises(ValueError, match=f"parameter '{next(iter(bad))}'"):
            GENDetector(**bad)


def test_klm_save_load_round_trip(tmp_path):
    fit_z, z = random_logits(5, 200, 8), random_logits(6, 20, 8)
    det = KLMatchingDetector().fit(logits=fit_z)
    det.save(tmp_path / "klm")
    loaded = KLMatchingDetector.load(tmp_path / "klm")
    np.testing.assert_array_equal(loaded.score(logits=z), det.score(logits=z))
    assert loaded.threshold_ == det.threshold_
    assert torch.equal(loaded.classes_, det.classes_)


def test_klm_load_refuses_mismatched_state():
    det = KLMatchingDetector().fit(logits=random_logits(7, 50, 4))
    state = det.state_dict()
    with pytest.raises(ValueError, match="classes_"):
        KLMatchingDetector().load_state_dict({**state, "classes_": state["classes_"][:-1]})
    with pytest.raises(ValueError, match="log_dists_"):
        KLMatchingDetector().load_state_dict({**state, "log_dists_": state["log_dists_"][0]})


# ----------------------------------------------------------------------------- peer parity
@pytest.fixture
def pytorch_ood_detectors():
    """pytorch-ood's ``GEN``, ``Entropy`` and ``KLMatching`` modules, imported from the wheel.

    The package's ``__init__`` modules import torchvision (for its models and datasets), so the
    two packages are stand-ins with the wheel's path and only the three detector modules (with
    the ``api``/``utils`` modules they use) are imported; ``sys.modules`` is restored after.
    """
    names = ("gen", "entropy", "klmatching")
    with peer_modules("pytorch-ood", ("pytorch_ood", "pytorch_ood.detector"),
                      [f"pytorch_ood.detector.{name}" for name in names]) as modules:
        yield dict(zip(names, modules, strict=True))


@pytest.mark.parametrize("c", [2, 10, 1000])
def test_parity_with_pytorch_ood(c, pytorch_ood_detectors):
    """Signs: entropy = -Entropy, gen = -M·GEN (pytorch-ood averages), klm = -KLMatching.

    pytorch-ood clamps probabilities (to [1e-7, 1-1e-7] for GEN, 1e-7 from below for Entropy),
    so moderate logits (scale 1, every p well above 1e-7 for C <= 1000) make them agree.
    """
    peers = pytorch_ood_detectors
    fit_z = torch.from_numpy(random_logits(c, 400, c, scale=1.0))
    z = torch.from_numpy(random_logits(c + 1, 50, c, scale=1.0))
    m = min(100, c)
    peer_entropy = peers["entropy"].Entropy(None).predict_logits(z).numpy()
    np.testing.assert_allclose(EntropyDetector().score(logits=z).numpy(), -peer_entropy,
                               rtol=1e-12)
    peer_gen = peers["gen"].GEN(None, gamma=0.1, M=m).predict_logits(z).numpy()
    np.testing.assert_allclose(GENDetector().score(logits=z).numpy(), -m * peer_gen, rtol=1e-12)
    peer = peers["klmatching"].KLMatching(None).fit_logits(fit_z)
    np.testing.assert_allclose(KLMatchingDetector().fit(logits=fit_z).score(logits=z).numpy(),
                               -peer.predict_logits(z).numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.cuda  # skipped by tests/conftest.py where no GPU is present
def test_cuda_input_matches_cpu():
    fit_z = torch.from_numpy(random_logits(8, 200, 6)).float()
    z = torch.from_numpy(random_logits(9, 30, 6)).float()
    for make in (EntropyDetector, GENDetector, KLMatchingDetector):
        want = make().fit(logits=fit_z).score(logits=z)
        got = make().fit(logits=fit_z.cuda()).score(logits=z.cuda())
        mixed = make().fit(logits=fit_z).score(logits=z.cuda())  # CPU state, CUDA queries
        for scores in (got, mixed):
            assert scores.device.type == "cuda"
            torch.testing.assert_close(scores.cpu(), want, rtol=1e-4, atol=1e-5)
