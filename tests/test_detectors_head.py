"""``vim``, ``fdbd`` and ``nci`` against the float64 numpy references of ``tests/reference.py``.

Inputs: random heads and features with edge shapes (``C = 1``, ``C = 2``, ``d = 1``, a few rows,
tied logits), every input dtype, the conformance kit, save/load, head validation and a fusion with
a head member. With the pytorch-ood 0.4.0 wheel unpacked (``tests/oracles.py``; ``make test`` does
it), the scores are also checked against its ``ViM``, ``fDBD`` and ``NCI`` (which compute in
float32): on 300 fit and 40 query rows, d = 32, C = 5, N(0, 1) features and head plus a bias, the
largest absolute difference measured was 1.2e-5 (vim), 3.4e-8 (fdbd) and 2.1e-7 (nci, alpha 0 and
0.01): float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles import peer_modules

import ood_zoo
from ood_zoo import testing as kit
from ood_zoo.detectors import FDBDDetector, FusionDetector, NCIDetector, ViMDetector
from ood_zoo.errors import InputError

try:  # tests/ as a package, or on sys.path (pytest's default rootdir-relative import)
    from . import reference as ref
except ImportError:
    import reference as ref

torch.set_num_threads(1)

HEAD_DETECTORS = (ViMDetector, FDBDDetector, NCIDetector)


# ----------------------------------------------------------------------------- references
ref_logits = ref.head_logits
ref_vim, ref_fdbd, ref_nci = ref.vim_scores, ref.fdbd_scores, ref.nci_scores


def problem(seed: int, n: int, d: int, c: int, nq: int = 20):
    rng = np.random.default_rng(seed)
    weight, bias = rng.normal(size=(c, d)), rng.normal(size=c)
    fit = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
    return fit, weight, bias, rng.normal(size=(nq, d)) * 1.5


def assert_close(got, want, *, rtol: float, atol: float = 0.0) -> None:
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


SHAPES = [(60, 8, 3), (40, 1, 2), (40, 1, 1), (30, 6, 2), (5, 4, 3), (200, 20, 10)]


@pytest.mark.parametrize(("n", "d", "c"), SHAPES)
def test_vim_matches_reference(n, d, c):
    fit, weight, bias, x = problem(n + d + c, n, d, c)
    dim = min(d // 2, (n - 1) // 2)
    det = ViMDetector().fit(fit, head=(weight, bias))
    assert det.dim_ == dim
    assert_close(det.score(x), ref_vim(fit, weight, bias, x, dim), rtol=1e-10, atol=1e-10)
    if d > 2:
        explicit = ViMDetector(dim=1).fit(fit, head=(weight, bias))
        assert_close(explicit.score(x), ref_vim(fit, weight, bias, x, 1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("n", "d", "c"), [s for s in SHAPES if s[2] >= 2])
def test_fdbd_matches_reference(n, d, c):
    fit, weight, bias, x = problem(n + d + c, n, d, c)
    det = FDBDDetector().fit(fit, head=(weight, bias))
    assert_close(det.score(x), ref_fdbd(fit, weight, bias, x), rtol=1e-11)


@pytest.mark.parametrize(("n", "d", "c"), SHAPES)
@pytest.mark.parametrize("alpha", [0.0, 0.01, 1.0])
def test_nci_matches_reference(n, d, c, alpha):
    fit, weight, bias, x = problem(n + d + c, n, d, c)
    det = NCIDetector(alpha=alpha).fit(fit, head=(weight, bias))
    assert_close(det.score(x), ref_nci(fit, weight, bias, x, alpha), rtol=1e-11, atol=1e-13)


def test_no_bias_means_zeros_and_vim_origin_is_zero():
    fit, weight, _, x = problem(1, 80, 6, 3)
    for cls in HEAD_DETECTORS:
        with_none = cls().fit(fit, head=(weight, None)).score(x)
        with_zeros = cls().fit(fit, head=(weight, np.zeros(3))).score(x)
        np.testing.assert_array_equal(with_none, with_zeros)
    origin = ViMDetector().fit(fit, head=(weight, None)).origin_
    assert torch.equal(origin, torch.zeros(6, dtype=torch.float64))


def test_tied_logits_take_the_first_class():
    weight = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -2.0]])
    bias = np.zeros(3)
    fit = np.random.default_rng(0).normal(size=(30, 2))
    x = np.array([[2.0, 2.0], [1.0, 1.0], [-1.0, 3.0], [-0.5, -0.5]])  # classes 0 and 1 tie
    assert_close(NCIDetector().fit(fit, head=(weight, bias)).score(x),
                 ref_nci(fit, weight, bias, x), rtol=1e-12)
    assert_close(FDBDDetector().fit(fit, head=(weight, bias)).score(x),
                 ref_fdbd(fit, weight, bias, x), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_input_dtypes(dtype):
    fit, weight, bias, x = problem(4, 120, 10, 4)
    fit_t, x_t = torch.from_numpy(fit).to(dtype), torch.from_numpy(x).to(dtype)
    head = (torch.from_numpy(weight).to(dtype), torch.from_numpy(bias).to(dtype))
    fit64, x64 = fit_t.double().numpy(), x_t.double().numpy()
    w64, b64 = head[0].double().numpy(), head[1].double().numpy()
    want_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    rtol = 1e-10 if dtype == torch.float64 else 2e-4
    for det, want in (
        (ViMDetector(), ref_vim(fit64, w64, b64, x64, 5)),
        (FDBDDetector(), ref_fdbd(fit64, w64, b64, x64)),
        (NCIDetector(alpha=0.1), ref_nci(fit64, w64, b64, x64, 0.1)),
    ):
        scores = det.fit(fit_t, head=head).score(x_t)
        assert scores.dtype == want_dtype
        assert_close(scores.numpy(), want, rtol=rtol, atol=rtol)
        if dtype != torch.float64:
            assert det.head_weight_.dtype == torch.float32


@pytest.mark.parametrize("cls", HEAD_DETECTORS)
def test_conformance_kit(cls, tmp_path):
    kit.check_detector(cls, tmp_path=tmp_path)


def test_registered():
    for cls in HEAD_DETECTORS:
        record = ood_zoo.get_registry().get(cls.name)
        assert record.cls is cls
        assert record.cls.requires.head
        assert not record.cls.requires.logits


@pytest.mark.parametrize("cls", HEAD_DETECTORS)
def test_save_load_keeps_the_head(cls, tmp_path):
    fit, weight, bias, x = problem(5, 50, 5, 3)
    det = cls().fit(fit, head=(weight, bias))
    det.save(tmp_path / cls.name)
    loaded = ood_zoo.load(tmp_path / cls.name)
    np.testing.assert_array_equal(loaded.score(x), det.score(x))
    assert torch.equal(loaded.head_weight_, torch.from_numpy(weight))
    state = det.state_dict()
    with pytest.raises(ValueError, match="head_bias_"):
        cls().load_state_dict({**state, "head_bias_": state["head_bias_"][:-1]})


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("cls", HEAD_DETECTORS)
def test_head_validation(cls):
    fit, weight, bias, _ = problem(6, 30, 4, 3)
    nan = weight.copy()
    nan[1, 2] = np.nan
    cases = [
        (None, "needs the linear head"),
        ((weight,), "pair"),
        ((nan, bias), "NaN"),
        ((weight, np.array([0.0, np.inf, 0.0])), "Inf"),
        ((weight[:, :3], bias), r"features have 4 columns"),
        ((weight[0], bias[:1]), "2-D"),
        ((weight, bias[:2]), r"bias must be a floating \[C\] = \[3\]"),
        ((weight, bias[None]), r"bias must be"),
        ((weight, np.arange(3)), r"bias must be"),
        ((weight[:, :0], bias), "empty"),
    ]
    for head, message in cases:
        with pytest.raises(InputError, match=message):
            cls().fit(fit, head=head)


def test_head_is_ignored_by_detectors_without_it():
    fit, weight, _bias, x = problem(7, 40, 4, 3)
    cosine = ood_zoo.create("cosine")
    np.testing.assert_array_equal(cosine.fit(fit, head=(weight[:, :1], None)).score(x),
                                  ood_zoo.create("cosine").fit(fit).score(x))


def test_head_must_match_the_logit_width():
    fit, weight, bias, _x = problem(8, 40, 4, 3)
    fusion = FusionDetector(members="vim,energy")
    with pytest.raises(InputError, match="head weight has 3 rows, but the logits have 2"):
        fusion.fit(fit, logits=ref_logits(fit, weight, bias)[:, :2], head=(weight, bias))


def test_fdbd_refuses_one_class_and_identical_rows():
    fit, weight, bias, _ = problem(9, 30, 4, 3)
    with pytest.raises(InputError, match="at least 2 classes"):
        FDBDDetector().fit(fit, head=(weight[:1], bias[:1]))
    twin = weight.copy()
    twin[2] = twin[0]
    with pytest.raises(InputError, match="rows 0 and 2 are identical"):
        FDBDDetector().fit(fit, head=(twin, bias))


def test_vim_dim_is_checked():
    fit, weight, bias, _ = problem(10, 10, 6, 2)
    with pytest.raises(InputError, match="smaller than the feature dimension"):
        ViMDetector(dim=6).fit(fit, head=(weight, bias))
    with pytest.raises(InputError, match="at least 6 fit samples"):
        ViMDetector(dim=5).fit(fit[:5], head=(weight, bias))
    with pytest.raises(InputError, match="no residual"):
        ViMDetector(dim=1).fit(np.zeros((5, 6)), head=(weight, np.zeros(2)))


# ----------------------------------------------------------------------------- fusion
def test_fusion_passes_the_head_to_its_members(tmp_path):
    fit, weight, bias, x = problem(11, 80, 6, 3)
    logits = ref_logits(fit, weight, bias)
    fusion = FusionDetector(members="vim,nci,msp")
    assert fusion.requires.head
    assert fusion.requires.logits
    with pytest.raises(InputError, match="fusion: needs the linear head"):
        FusionDetector(members="vim,msp").fit(fit, logits=logits)
    fusion.fit(fit, logits=logits, head=(weight, bias))
    vim = fusion.member_detectors[0]
    assert torch.equal(vim.head_weight_, torch.from_numpy(weight))
    alone = ViMDetector().fit(fit, head=(weight, bias))
    np.testing.assert_array_equal(vim.score(x), alone.score(x))
    fusion.save(tmp_path / "fusion")
    loaded = ood_zoo.load(tmp_path / "fusion")
    query_logits = ref_logits(x, weight, bias)
    np.testing.assert_array_equal(loaded.score(x, logits=query_logits),
                                  fusion.score(x, logits=query_logits))


def test_fusion_with_a_head_member_passes_the_kit(tmp_path):
    data = kit.make_synthetic_inputs()

    example = FusionDetector(members="vim,fdbd")

    class HeadFusion(FusionDetector):  # the kit reads requires and state_tensors off the class
        name = "head_fusion"
        requires = example.requires
        state_tensors = example.state_tensors

    kit.check_detector(HeadFusion, params={"members": "vim,fdbd"}, make_inputs=lambda: data,
                       tmp_path=tmp_path)


# ----------------------------------------------------------------------------- peer parity
@pytest.fixture
def pytorch_ood_detectors():
    """pytorch-ood's ``ViM``, ``fDBD`` and ``NCI`` modules, imported from the unpacked wheel
    through stand-in packages (its ``__init__`` modules import torchvision)."""
    names = ("vim", "fdbd", "nci")
    with peer_modules("pytorch-ood", ("pytorch_ood", "pytorch_ood.detector"),
                      [f"pytorch_ood.detector.{name}" for name in names]) as modules:
        yield dict(zip(names, modules, strict=True))


def test_parity_with_pytorch_ood(pytorch_ood_detectors):
    """Signs: vim = -ViM, fdbd = -fDBD, nci = -NCI (pytorch-ood: higher = OOD); it computes in
    float32, we compare float64 scores."""
    peers = pytorch_ood_detectors
    fit, weight, bias, x = problem(12, 300, 32, 5, nq=40)
    fit_t, x_t = torch.from_numpy(fit), torch.from_numpy(x)
    w_t, b_t = torch.from_numpy(weight), torch.from_numpy(bias)
    linear = torch.nn.Linear(32, 5).double()
    with torch.no_grad():
        linear.weight.copy_(w_t)
        linear.bias.copy_(b_t)
    head = (weight, bias)

    peer = peers["vim"].ViM(None, d=16, w=w_t, b=b_t).fit_features(fit_t.float(), None)
    ours = ViMDetector(dim=16).fit(fit, head=head).score(x)
    want = -peer.predict_features(x_t.float()).double().numpy()
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-4)

    peer = peers["fdbd"].fDBD(None, linear.float()).fit_features(fit_t.float())
    ours = FDBDDetector().fit(fit, head=head).score(x)
    want = -peer.predict_features(x_t.float()).double().numpy()
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)

    for alpha in (0.0, 0.01):
        peer = peers["nci"].NCI(None, linear.float(), alpha=alpha).fit_features(fit_t.float())
        ours = NCIDetector(alpha=alpha).fit(fit, head=head).score(x)
        want = -peer.predict_features(x_t.float()).double().numpy()
        np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda  # skipped by tests/conftest.py where no GPU is present
def test_cuda_input_matches_cpu():
    fit, weight, bias, x = problem(13, 200, 12, 4)
    for cls in HEAD_DETECTORS:
        want = cls().fit(fit.astype(np.float32), head=(weight, bias)).score(
            torch.from_numpy(x).float())
        got = cls().fit(torch.from_numpy(fit).float().cuda(), head=(weight, bias)).score(
            torch.from_numpy(x).float().cuda())
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
