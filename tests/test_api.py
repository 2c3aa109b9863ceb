"""The Detector base class, and the conformance kit (ood_zoo.testing) run over every built-in."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import ClassVar

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

import ood_zoo
from ood_zoo import Detector, InputError, NotFittedError, Param, Requirements
from ood_zoo import testing as kit
from ood_zoo.api import THRESHOLD_MIN_ROWS, threshold_at_tpr, threshold_sample_rows
from ood_zoo.registry import get_registry

DATA = kit.make_synthetic_inputs(seed=5)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class CentroidDetector(Detector):
    """Negative scaled distance to the mean of the fit features (a toy for base-class tests)."""

    name = "test_centroid"
    requires = Requirements(features=True)
    params = (
        Param("alpha", 1.0, "scale of the distance", type=float, minimum=0.0,
              exclusive_minimum=True),
        Param("k", 3, "an integer knob", type=int, minimum=1),
        Param("mode", "l2", "the norm", type=str, choices=("l2", "l1")),
        Param("flag", False, "a switch", type=bool),
    )
    state_tensors = ("mean_",)

    def _fit(self, features, labels, logits):
        dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        self.mean_ = features.to(dtype).mean(dim=0)

    def _score(self, features, logits):
        dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        diff = features.to(dtype) - self.mean_.to(device=features.device, dtype=dtype)
        order = 2 if self.hparams["mode"] == "l2" else 1
        return -self.hparams["alpha"] * diff.norm(p=order, dim=1)


class MaxLogitToy(Detector):
    """Maximum logit; needs no fit."""

    name = "test_maxlogit"
    requires = Requirements(features=False, logits=True, fit=False)

    def _score(self, features, logits):
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return logits.to(dtype).max(dim=1).values


# ------------------------------------------------------------------------ parameters


def test_unknown_param_is_a_type_error():
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['beta'\].*alpha, k, mode"):
        CentroidDetector(beta=1)


def test_valid_params_are_converted_and_kept():
    detector = CentroidDetector(alpha=2, k=5, mode="l1", flag=True, target_tpr=0.9)
    assert detector.hparams == {"alpha": 2.0, "k": 5, "mode": "l1", "flag": True}
    assert isinstance(detector.hparams["alpha"], float)
    assert detector.get_params() == {**detector.hparams, "target_tpr": 0.9}
    assert CentroidDetector().hparams == {"alpha": 1.0, "k": 3, "mode": "l2", "flag": False}
    assert repr(detector) == "CentroidDetector(alpha=2.0, k=5, mode='l1', flag=True)"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"alpha": "1"}, "'alpha' must be a number"),
        ({"alpha": True}, "'alpha' must be a number"),
        ({"alpha": math.nan}, "'alpha' must be finite"),
        ({"alpha": math.inf}, "'alpha' must be finite"),
        ({"alpha": 0.0}, "'alpha' must be > 0.0"),
        ({"alpha": -1}, "'alpha' must be > 0.0"),
        ({"k": 2.0}, "'k' must be an int"),
        ({"k": True}, "'k' must be an int"),
        ({"k": "3"}, "'k' must be an int"),
        ({"k": 0}, "'k' must be >= 1"),
        ({"mode": "l3"}, r"'mode' must be one of \['l2', 'l1'\]"),
        ({"mode": 2}, "'mode' must be a string"),
        ({"flag": 1}, "'flag' must be a bool"),
        ({"flag": "yes"}, "'flag' must be a bool"),
    ],
)
def test_param_validation(params, message):
    with pytest.raises(ValueError, match=message):
        CentroidDetector(**params)


def test_minimum_is_inclusive_unless_exclusive():
    assert CentroidDetector(k=1).hparams["k"] == 1
    assert CentroidDetector(alpha=1e-12).hparams["alpha"] == 1e-12


@pytest.mark.parametrize("tpr", [0.0, -0.1, 1.01, math.nan])
def test_invalid_target_tpr(tpr):
    with pytest.raises(ValueError, match="target_tpr"):
        CentroidDetector(target_tpr=tpr)


@pytest.mark.parametrize(
    ("tpr", "message"),
    [("0.9", "must be a number, got '0.9'"), (True, "must be a number"),
     (None, "must be a number"), ([0.9], "must be a number"), (10**400, "must be finite"),
     (1.5, "must be <= 1.0"), (0.0, "must be > 0.0")],
    ids=["str", "bool", "none", "list", "huge-int", "above-one", "zero"],
)
def test_target_tpr_is_validated_like_a_declared_param(tpr, message):
    """Issue 11, root cause 3: ``create("cosine", target_tpr="0.9")`` named no parameter."""
    with pytest.raises(ValueError, match=rf"cosine: parameter 'target_tpr' {message}"):
        ood_zoo.create("cosine", target_tpr=tpr)
    if tpr is not None:  # calibrate(tpr=None) keeps target_tpr
        where = r"calibrate\(tpr\): parameter 'target_tpr'"
        with pytest.raises(ValueError, match=rf"{where} {message}"):
            MaxLogitToy().calibrate(logits=DATA.id.logits, tpr=tpr)
    with pytest.raises(ValueError, match=rf"target TPR: parameter 'target_tpr' {message}"):
        threshold_at_tpr(torch.ones(3), tpr)
    assert ood_zoo.create("cosine", target_tpr=1).target_tpr == 1.0


def test_param_maximum_is_inclusive():
    param = Param("p", 0.5, "a share", type=float, maximum=1.0)
    assert param.validate(1, "owner") == 1.0
    with pytest.raises(ValueError, match=r"owner: parameter 'p' must be <= 1.0, got 1.01"):
        param.validate(1.01, "owner")
    assert param.as_dict()["maximum"] == 1.0


def test_param_type_follows_the_default():
    assert Param("k", 10, "an int").type is int
    assert Param("k", 10, "an int").validate(12, "owner") == 12
    with pytest.raises(ValueError, match=r"must be an int, got 1\.5"):
        Param("k", 10, "an int").validate(1.5, "owner")
    assert Param("flag", True, "a bool, not an int").type is bool
    assert Param("mode", "l2", "a string").type is str
    assert Param("alpha", 0.5, "a float").type is float
    assert Param("alpha", None, "no default: a float").type is float
    # an explicit type wins: a float whose default is written as an int
    explicit = Param("temperature", 1, "a float", type=float)
    assert explicit.type is float
    assert isinstance(explicit.validate(1, "owner"), float)
    assert Param("k", 10, "an int").as_dict()["type"] == "int"


def test_every_builtin_param_keeps_its_type():
    for record in get_registry().detectors.values():
        for param in record.cls.params:
            assert param.type in (int, float, str, bool), (record.name, param)
            value = param.validate(param.default, record.name)
            assert type(value) is param.type, (record.name, param.name, value)


def test_param_exclusive_maximum():
    gamma = Param("gamma", 0.5, "0 < γ < 1", minimum=0.0, exclusive_minimum=True, maximum=1.0,
                  exclusive_maximum=True)
    assert gamma.validate(0.999, "owner") == 0.999
    with pytest.raises(ValueError, match=r"'gamma' must be < 1.0, got 1.0"):
        gamma.validate(1.0, "owner")
    with pytest.raises(ValueError, match=r"'gamma' must be > 0.0, got 0.0"):
        gamma.validate(0.0, "owner")
    shown = gamma.as_dict()
    assert (shown["minimum"], shown["exclusive_minimum"]) == (0.0, True)
    assert (shown["maximum"], shown["exclusive_maximum"]) == (1.0, True)


def test_detectors_json_shows_the_bounds(capsys):
    from ood_zoo.cli import main

    assert main(["detectors", "--json"]) == 0
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    rde = {p["name"]: p for p in records["rde"]["params"]}
    fraction = rde["support_fraction"]
    assert (fraction["minimum"], fraction["maximum"], fraction["type"]) == (0.0, 1.0, "float")
    assert (fraction["exclusive_minimum"], fraction["exclusive_maximum"]) == (False, False)


def test_requirements_features_has_no_default():
    with pytest.raises(TypeError, match="features"):
        Requirements(logits=True, fit=False)
    with pytest.raises(TypeError):
        Requirements(True)  # keywords only
    assert Requirements(features=False, logits=True).as_dict()["features"] is False


def test_a_logit_detector_scores_logits_alone():
    """What the kit runs is what a user runs: a logits-only detector scores without features."""
    logits = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    assert MaxLogitToy().score(logits=logits).shape == (5,)
    kit.check_detector(MaxLogitToy)


def test_an_int_beyond_float_range_is_not_finite():
    with pytest.raises(ValueError, match="'alpha' must be finite"):
        CentroidDetector(alpha=10**400)


# ------------------------------------------------------------------------ thresholds


def _brute_threshold(scores: list[float], tpr: Fraction) -> float:
    """The largest score value t with #(scores >= t) / n >= tpr, by trying every value."""
    n = len(scores)
    return max(t for t in set(scores) if Fraction(sum(s >= t for s in scores), n) >= tpr)


@settings(max_examples=300, deadline=None)
@given(
    scores=st.lists(
        st.one_of(st.integers(-5, 5).map(float), st.floats(-1e6, 1e6, allow_nan=False)),
        min_size=1, max_size=60,
    ),
    numerator=st.integers(1, 1000),
    denominator=st.integers(1, 1000),
)
def test_threshold_at_tpr_matches_brute_force(scores, numerator, denominator):
    tpr = Fraction(min(numerator, denominator), denominator)
    got = threshold_at_tpr(torch.tensor(scores, dtype=torch.float64), float(tpr))
    assert got == _brute_threshold(scores, tpr)
    accepted = sum(s >= got for s in scores)
    assert Fraction(accepted, len(scores)) >= tpr


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_threshold_at_tpr_accepts_any_float_dtype(dtype):
    scores = torch.tensor([[3.0, 1.0], [2.0, 4.0]], dtype=dtype)  # any shape is flattened
    assert threshold_at_tpr(scores, 0.5) == 3.0
    assert threshold_at_tpr(scores, 1.0) == 1.0
    assert threshold_at_tpr(scores, 0.25) == 4.0


@pytest.mark.parametrize("tpr", [0.0, 1.5, -1.0])
def test_threshold_at_tpr_rejects_bad_tpr(tpr):
    with pytest.raises(ValueError, match="target TPR"):
        threshold_at_tpr(torch.ones(3), tpr)


def test_fit_places_the_threshold_on_the_fit_data():
    detector = CentroidDetector(target_tpr=0.8).fit(DATA.fit.features)
    scores = detector.score(DATA.fit.features)
    assert detector.threshold_ == threshold_at_tpr(torch.from_numpy(scores), 0.8)
    assert (scores >= detector.threshold_).mean() >= 0.8


def test_fit_threshold_uses_a_seeded_subsample_of_large_fits():
    seen: list[torch.Tensor] = []

    class Recording(CentroidDetector):
        def _fit_scores(self, features, logits, rows):
            seen.append(rows)
            return super()._fit_scores(features, logits, rows)

    n = 5 * THRESHOLD_MIN_ROWS + 137
    bank = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    first = Recording().fit(bank)
    second = Recording().fit(bank)
    rows = seen[0]
    assert rows.numel() == threshold_sample_rows(n, 0.95) == THRESHOLD_MIN_ROWS
    assert torch.equal(rows, rows.sort().values)
    assert rows.unique().numel() == rows.numel()
    assert int(rows.min()) >= 0
    assert int(rows.max()) < n
    assert torch.equal(seen[0], seen[1])
    assert first.threshold_ == second.threshold_
    small = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    Recording().fit(small)
    assert torch.equal(seen[-1], torch.arange(50))


@pytest.mark.parametrize("tpr", [0.5, 0.9, 0.95, 0.99, 1.0])
def test_threshold_sample_reaches_its_standard_error(tpr):
    """Over many seeded samples, the accepted fit share scatters by the promised error."""
    n_rows = 20_000
    n = threshold_sample_rows(n_rows, tpr)
    assert THRESHOLD_MIN_ROWS <= n <= n_rows
    assert tpr * (1 - tpr) / n <= 0.01**2 + 1e-12
    population = torch.from_numpy(np.random.default_rng(3).normal(size=n_rows))
    accepted = []
    for seed in range(200):
        rows = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))[:n]
        threshold = threshold_at_tpr(population[rows], tpr)
        accepted.append(float((population >= threshold).double().mean()))
    accepted = np.array(accepted)
    assert abs(accepted.mean() - tpr) < 0.003
    assert accepted.std() <= 0.012  # 0.01 promised, plus the finite-population wobble
    assert threshold_sample_rows(50, tpr) == 50


def test_predict_before_a_threshold_is_not_fitted_error():
    with pytest.raises(NotFittedError, match="no threshold"):
        MaxLogitToy().predict(logits=DATA.id.logits)
    with pytest.raises(NotFittedError):
        CentroidDetector().predict(DATA.id.features)


def test_score_before_fit():
    with pytest.raises(NotFittedError, match="call fit"):
        CentroidDetector().score(DATA.id.features)
    # a detector that needs no fit scores straight away
    scores = MaxLogitToy().score(logits=DATA.id.logits)
    np.testing.assert_allclose(scores, DATA.id.logits.max(axis=1))


@pytest.mark.parametrize("tpr", [0.5, 0.9, 0.95, 1.0])
def test_calibrate_accepts_at_least_tpr_of_the_calibration_set(tpr):
    detector = MaxLogitToy().calibrate(logits=DATA.id.logits, tpr=tpr)
    assert detector.target_tpr == tpr
    scores = detector.score(logits=DATA.id.logits)
    accepted = detector.predict(logits=DATA.id.logits)
    np.testing.assert_array_equal(accepted, scores >= detector.threshold_)
    assert accepted.mean() >= tpr
    higher = scores[scores > detector.threshold_]
    if higher.size:  # the threshold is the largest that reaches the target
        assert (scores >= higher.min()).mean() < tpr


def test_calibrate_without_tpr_uses_target_tpr():
    detector = CentroidDetector(target_tpr=0.7).fit(DATA.fit.features)
    fit_threshold = detector.threshold_
    detector.calibrate(DATA.id.features)
    assert detector.target_tpr == 0.7
    assert detector.threshold_ == threshold_at_tpr(
        torch.from_numpy(detector.score(DATA.id.features)), 0.7
    )
    assert detector.threshold_ != fit_threshold


def test_calibrate_checks_its_inputs():
    detector = CentroidDetector().fit(DATA.fit.features)
    with pytest.raises(ValueError, match="tpr"):
        detector.calibrate(DATA.id.features, tpr=0.0)
    with pytest.raises(NotFittedError):
        CentroidDetector().calibrate(DATA.id.features)
    with pytest.raises(InputError):
        detector.calibrate(DATA.id.features[:, :3])


def _data(cls: type[Detector]) -> kit.SyntheticInputs:
    """DATA, or the kit's own inputs for detectors on LM statistics or layered features."""
    special = cls.requires.language_model or cls.requires.layered
    return DATA if not special else kit.default_make_inputs(cls)()


@pytest.mark.parametrize("name", ood_zoo.list_detectors())
def test_calibrate_every_builtin(name):
    cls = get_registry().get(name).cls
    data = _data(cls)
    detector = ood_zoo.create(name).fit(**data.fit.fit_kwargs(cls.requires))
    detector.calibrate(**data.id.score_kwargs(cls.requires), tpr=0.9)
    accepted = detector.predict(**data.id.score_kwargs(cls.requires))
    assert accepted.dtype == np.bool_
    assert accepted.mean() >= 0.9


# ------------------------------------------------------------------------ input and output kinds


def test_numpy_in_numpy_out_torch_in_torch_out():
    detector = CentroidDetector().fit(DATA.fit.features)
    as_numpy = detector.score(DATA.id.features)
    assert isinstance(as_numpy, np.ndarray)
    assert as_numpy.dtype == np.float32
    as_torch = detector.score(torch.from_numpy(DATA.id.features))
    assert isinstance(as_torch, torch.Tensor)
    assert as_torch.device.type == "cpu"
    np.testing.assert_array_equal(as_torch.numpy(), as_numpy)
    as_fp64 = detector.score(torch.from_numpy(DATA.id.features).double())
    assert as_fp64.dtype == torch.float64
    predicted = detector.predict(torch.from_numpy(DATA.id.features))
    assert isinstance(predicted, torch.Tensor)
    assert predicted.dtype == torch.bool


def test_logit_detector_output_follows_the_logits():
    scores = MaxLogitToy().score(logits=torch.from_numpy(DATA.id.logits))
    assert isinstance(scores, torch.Tensor)


@pytest.mark.cuda
@needs_cuda
def test_cuda_in_cuda_out():
    detector = CentroidDetector().fit(torch.from_numpy(DATA.fit.features).cuda())
    scores = detector.score(torch.from_numpy(DATA.id.features).cuda())
    assert scores.device.type == "cuda"
    assert isinstance(detector.score(DATA.id.features), np.ndarray)


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a.astype(np.float16),
        lambda a: torch.from_numpy(a).half(),
        lambda a: torch.from_numpy(a).bfloat16(),
    ],
    ids=["numpy-fp16", "torch-fp16", "torch-bf16"],
)
def test_half_precision_is_accepted(convert):
    detector = CentroidDetector().fit(convert(DATA.fit.features))
    scores = detector.score(convert(DATA.id.features))
    assert scores.dtype in (np.float32, torch.float32)
    reference = CentroidDetector().fit(DATA.fit.features).score(DATA.id.features)
    values = scores.numpy() if isinstance(scores, torch.Tensor) else scores
    np.testing.assert_allclose(values, reference, rtol=2e-2, atol=2e-2)


def test_inputs_a_detector_does_not_need_are_ignored():
    detector = CentroidDetector().fit(DATA.fit.features, labels=[1, 2], logits="not looked at")
    assert detector.n_logits_in_ is None
    assert detector.score(DATA.id.features, logits=None).shape == (len(DATA.id),)


def test_rows_of_features_and_logits_must_agree():
    class Both(MaxLogitToy):
        name = "test_both"
        requires = Requirements(features=True, logits=True)

    with pytest.raises(InputError, match="rows"):
        Both().fit(DATA.fit.features, logits=DATA.fit.logits[:-1])


@pytest.mark.parametrize(
    "bad",
    [[[1.0, 2.0]], "text", np.array([["a", "b"]]), np.ones((3, 2), dtype=np.int64)],
    ids=["list", "str", "strings", "ints"],
)
def test_non_array_or_non_float_input_is_an_input_error(bad):
    with pytest.raises(InputError):
        CentroidDetector().fit(bad)


def _memmap(tmp_path, array: np.ndarray, name: str) -> np.memmap:
    path = tmp_path / f"{name}.dat"
    writer = np.memmap(path, dtype=array.dtype, mode="w+", shape=array.shape)
    writer[:] = array
    writer.flush()
    del writer
    return np.memmap(path, dtype=array.dtype, mode="r", shape=array.shape)


@pytest.mark.parametrize("name", ["test_centroid", *ood_zoo.list_detectors()])
def test_memmap_input_works(name, tmp_path):
    cls = CentroidDetector if name == "test_centroid" else get_registry().get(name).cls
    data = _data(cls)
    mapped = {
        split: kit.Split(
            _memmap(tmp_path, getattr(data, split).features, f"{split}-features"),
            getattr(data, split).labels,
            _memmap(tmp_path, getattr(data, split).logits, f"{split}-logits"),
            getattr(data, split).head,
        )
        for split in ("fit", "id")
    }
    assert not mapped["fit"].features.flags.writeable
    from_memmap = cls().fit(**mapped["fit"].fit_kwargs(cls.requires))
    from_array = cls().fit(**data.fit.fit_kwargs(cls.requires))
    scores = from_memmap.score(**mapped["id"].score_kwargs(cls.requires))
    assert type(scores) is np.ndarray
    np.testing.assert_array_equal(scores, from_array.score(**data.id.score_kwargs(cls.requires)))
    assert from_memmap.threshold_ == from_array.threshold_


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("shape", [(4,), (), (3, 4)], ids=["vector", "scalar", "matrix"])
def test_load_state_dict_refuses_non_finite_floating_state(bad, shape):
    """Issue 11, root cause 5: checked in the base class, for every detector."""
    tensor = torch.zeros(shape, dtype=torch.float16)
    tensor.view(-1)[-1] = bad
    detector = CentroidDetector()
    with pytest.raises(InputError, match=r"test_centroid: state tensor 'mean_'.*(NaN|Inf)"):
        detector.load_state_dict({"mean_": tensor})
    assert not detector.is_fitted_


class InfiniteBoundToy(CentroidDetector):
    """Stores an infinite bound legitimately, and says so."""

    name = "test_infinite_bound"
    state_tensors = ("mean_", "bound_", "counts_")
    nonfinite_state = ("bound_",)

    def _fit(self, features, labels, logits):
        super()._fit(features, labels, logits)
        self.bound_ = torch.tensor([math.inf])
        self.counts_ = torch.tensor([3])


def test_declared_nonfinite_state_loads():
    detector = InfiniteBoundToy().fit(DATA.fit.features)
    loaded = InfiniteBoundToy()
    loaded.load_state_dict(detector.state_dict())
    assert math.isinf(float(loaded.bound_))
    with pytest.raises(InputError, match="'mean_'"):
        loaded.load_state_dict({**detector.state_dict(), "mean_": torch.full((3,), math.nan)})


class WrongWidthToy(CentroidDetector):
    name = "test_wrong_width"
    state_widths: ClassVar[dict[str, tuple[str, int]]] = {"n_features_in": ("mean_", 1)}


def test_fit_checks_the_declared_state_widths():
    with pytest.raises(TypeError, match=r"state_widths declares n_features_in = mean_.shape\[1\]"):
        WrongWidthToy().fit(DATA.fit.features)


def test_state_dict_round_trip_and_missing_tensors():
    detector = CentroidDetector().fit(DATA.fit.features)
    state = detector.state_dict()
    assert set(state) == {"mean_"}
    other = CentroidDetector()
    other.load_state_dict(state)
    assert other.is_fitted_
    with pytest.raises(KeyError, match="mean_"):
        CentroidDetector().load_state_dict({})
    with pytest.raises(NotFittedError):
        CentroidDetector().state_dict()


# ------------------------------------------------------------------------ the conformance kit


def _builtin_checks():
    for name in ood_zoo.list_detectors():
        cls = get_registry().get(name).cls
        checks = kit.detector_checks(cls)
        assert [n for n, _ in checks] == list(kit.CHECKS), f"{name}: the kit has no data for it"
        for check_name, check in checks:
            yield pytest.param(name, check_name, check, id=f"{name}-{check_name}")


@pytest.mark.parametrize(("name", "check_name", "check"), list(_builtin_checks()))
def test_builtin_conforms(name, check_name, check):
    check()


TWO_CLASSES = kit.detector_params(CentroidDetector, MaxLogitToy)


@pytest.mark.parametrize(("name", "check"), TWO_CLASSES)
def test_detector_params_ids_read_detector_colon_check(name, check, request):
    assert request.node.callspec.id in {f"{c.name}:{name}" for c in (CentroidDetector, MaxLogitToy)}
    check()


def test_detector_params_covers_every_check_of_each_class():
    classes = (CentroidDetector, MaxLogitToy)
    expected = [f"{c.name}:{check}" for c in classes for check in kit.CHECKS]
    assert [p.id for p in TWO_CLASSES] == expected
    assert [p.values[0] for p in TWO_CLASSES] == [*kit.CHECKS, *kit.CHECKS]


def test_kit_passes_a_good_detector(tmp_path):
    kit.check_detector(CentroidDetector, tmp_path=tmp_path)
    kit.check_detector(CentroidDetector, params={"mode": "l1", "alpha": 3.0})
    kit.check_detector(MaxLogitToy)
    assert [n for n, _ in kit.detector_checks(CentroidDetector)] == list(kit.CHECKS)


def test_kit_checks_only_class_attributes_of_language_model_detectors():
    class NeedsLM(Detector):
        name = "test_needs_lm"
        requires = Requirements(features=False, language_model=True)

    assert [n for n, _ in kit.detector_checks(NeedsLM)] == ["check_api_shape"]
    kit.check_detector(NeedsLM)


def test_kit_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 6, size=40).astype(float)  # ties on purpose
    neg = rng.integers(0, 5, size=30).astype(float)
    expected = roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[pos, neg])
    assert kit.auroc(pos, neg) == pytest.approx(expected, abs=1e-12)
    assert kit.auroc(torch.tensor([2.0]), torch.tensor([1.0])) == 1.0


def test_synthetic_inputs_shape():
    data = kit.make_synthetic_inputs(n_classes=4, dim=8, n_fit_per_class=5, n_test_per_class=3)
    assert data.fit.features.shape == (20, 8)
    assert data.fit.logits.shape == (20, 4)
    assert sorted(np.unique(data.fit.labels)) == [0, 1, 2, 3]
    assert len(data.id) == 12
    assert len(data.ood) == 12
    assert data.fit.features.dtype == np.float32
    assert data.fit.labels.dtype == np.int64
    # the ID logits are confident in the true class, the OOD logits are not
    assert (data.id.logits.argmax(axis=1) == data.id.labels).all()
    assert data.ood.logits.max(axis=1).max() < data.id.logits.max(axis=1).min()
    with pytest.raises(ValueError, match="dim"):
        kit.make_synthetic_inputs(n_classes=4, dim=4)


# Broken detectors: each one must be caught by the named check.


class FarIsHigh(CentroidDetector):
    name = "test_far_is_high"

    def _score(self, features, logits):
        return -super()._score(features, logits)


class WrongLength(CentroidDetector):
    name = "test_wrong_length"

    def _score(self, features, logits):
        return super()._score(features, logits)[:-1]


class AlwaysFloat64(CentroidDetector):
    name = "test_always_fp64"

    def _score(self, features, logits):
        return super()._score(features, logits).double()


class HalfAccumulation(CentroidDetector):
    name = "test_half_accumulation"

    def _score(self, features, logits):
        if features.dtype in (torch.float16, torch.bfloat16):
            mean = self.mean_.to(features.dtype)
            return -(features - mean).norm(dim=1)
        return super()._score(features, logits)


class ForgetsState(CentroidDetector):
    name = "test_forgets_state"
    state_tensors = ()


class UndeclaredStateTensor(CentroidDetector):
    name = "test_undeclared"
    state_tensors = ("mean_", "scale_")


class SkipsValidation(CentroidDetector):
    name = "test_skips_validation"

    def score(self, features=None, logits=None):
        self._check_fitted()
        return self._score(torch.as_tensor(features), None).numpy()


class ScoresUnfitted(CentroidDetector):
    name = "test_scores_unfitted"
    mean_ = torch.zeros(16)

    def _check_fitted(self):
        pass


class NonFinite(CentroidDetector):
    name = "test_non_finite"

    def _score(self, features, logits):
        scores = super()._score(features, logits)
        scores[0] = math.nan
        return scores


class Nameless(CentroidDetector):
    name = ""


class BadDefault(CentroidDetector):
    name = "test_bad_default"
    params = (Param("k", 0, "must be positive", type=int, minimum=1),)


class UnsavedParam(CentroidDetector):
    name = "test_unsaved_param"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hparams["alpha"] = float(np.random.default_rng().uniform(1, 2))


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (FarIsHigh, "check_score_direction", "is not above mean OOD score"),
        (WrongLength, "check_api_shape", "must return shape"),
        (AlwaysFloat64, "check_numpy_torch_roundtrip", "must return dtype"),
        (HalfAccumulation, "check_half_precision", "must return float32"),
        (ForgetsState, "check_save_load_roundtrip", "cannot save fitted attribute .mean_."),
        (UndeclaredStateTensor, "check_api_shape", "state tensor 'scale_'"),
        (SkipsValidation, "check_bad_input_errors", "should raise InputError"),
        (ScoresUnfitted, "check_bad_input_errors", "should raise NotFittedError"),
        (NonFinite, "check_api_shape", "non-finite"),
        (Nameless, "check_api_shape", "name must be a non-empty string"),
        (BadDefault, "check_api_shape", "invalid default"),
        (UnsavedParam, "check_save_load_roundtrip", "params after load"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_kit_catches_broken_detectors(cls, check, message):
    with pytest.raises(AssertionError, match=message) as excinfo:
        kit.CHECKS[check](cls)
    assert check in str(excinfo.value)
    with pytest.raises(AssertionError):
        kit.check_detector(cls)
