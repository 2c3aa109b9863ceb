"""The checks of the conformance kit, one function each, and the runners over all of them."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import Detector, Param, Requirements
from ..errors import InputError, NotFittedError, PersistenceError
from ._kit import (
    Checker,
    check_scores,
    data_checks_apply,
    fitted_detector,
    inputs_for,
    new_detector,
    score_split,
    to_numpy,
    writable_directory,
)
from .inputs import MakeInputs, Split

__all__ = [
    "CHECKS",
    "MIN_AUROC",
    "auroc",
    "check_api_shape",
    "check_bad_input_errors",
    "check_class_attributes",
    "check_detector",
    "check_half_precision",
    "check_numpy_torch_roundtrip",
    "check_save_load_roundtrip",
    "check_score_direction",
    "detector_checks",
    "detector_params",
]

#: The smallest AUROC :func:`check_score_direction` accepts on the synthetic data.
MIN_AUROC = 0.9


def auroc(id_scores: Any, ood_scores: Any) -> float:
    """AUROC with ID as the positive class: P(ID score > OOD score) + ½ P(tie), in float64."""
    pos = np.asarray(to_numpy(id_scores), dtype=np.float64).ravel()
    neg = np.asarray(to_numpy(ood_scores), dtype=np.float64).ravel()
    both = np.concatenate([pos, neg])
    ranks = np.empty(both.size)
    order = np.argsort(both, kind="stable")
    ranks[order] = np.arange(1, both.size + 1)
    for value in np.unique(both):  # average ranks over ties
        tied = both == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def check_class_attributes(cls: type[Detector], *, params: Mapping[str, Any] | None = None) -> None:
    """The class-level declarations: name, version, requires, params and state_tensors."""
    c = Checker(cls, "check_api_shape")
    c.require(
        isinstance(cls, type) and issubclass(cls, Detector),
        f"{cls!r} is not a subclass of ood_zoo.api.Detector",
    )
    c.require(
        isinstance(cls.name, str) and bool(cls.name.strip()) and cls.name == cls.name.strip(),
        f"name must be a non-empty string without surrounding blanks, got {cls.name!r}",
    )
    c.require(
        isinstance(cls.version, str) and bool(cls.version.strip()),
        f"version must be a non-empty string, got {cls.version!r}",
    )
    c.require(
        isinstance(cls.requires, Requirements),
        f"requires must be an ood_zoo.api.Requirements instance, got {cls.requires!r}",
    )
    c.require(
        cls.requires.features or cls.requires.logits or cls.requires.language_model,
        "requires asks for neither features, logits nor the language model: nothing to score",
    )
    c.require(
        isinstance(cls.params, tuple), f"params must be a tuple of Param, got {cls.params!r}"
    )
    seen: set[str] = set()
    for param in cls.params:
        c.require(isinstance(param, Param), f"params holds {param!r}, which is not a Param")
        c.require(
            isinstance(param.name, str) and param.name.isidentifier(),
            f"parameter name {param.name!r} is not a valid keyword",
        )
        c.require(param.name not in seen, f"parameter {param.name!r} is declared twice")
        c.require(
            param.name != "target_tpr", "'target_tpr' is reserved by the Detector base class"
        )
        seen.add(param.name)
        c.require(
            isinstance(param.doc, str) and bool(param.doc.strip()),
            f"parameter {param.name!r} has no doc string",
        )
        c.require(
            param.type in (int, float, str, bool),
            f"parameter {param.name!r} has type {param.type!r}; use int, float, str or bool",
        )
        try:
            param.validate(param.default, cls.name)
        except ValueError as exc:
            c.fail(f"parameter {param.name!r} has an invalid default: {exc}")
    unknown = sorted(set(params or {}) - seen)
    c.require(not unknown, f"params passed to the kit are not declared: {unknown}")
    c.require(
        isinstance(cls.state_tensors, tuple)
        and all(isinstance(n, str) and n.isidentifier() for n in cls.state_tensors),
        f"state_tensors must be a tuple of attribute names, got {cls.state_tensors!r}",
    )
    c.require(
        len(set(cls.state_tensors)) == len(cls.state_tensors),
        f"state_tensors lists a name twice: {cls.state_tensors!r}",
    )


def check_api_shape(
    cls: type[Detector], *, make_inputs: MakeInputs | None = None,
    params: Mapping[str, Any] | None = None,
) -> None:
    """Class attributes; ``fit`` returns self; fitted state; ``score``/``predict`` shapes."""
    check_class_attributes(cls, params=params)
    if not data_checks_apply(cls, make_inputs):
        return
    c = Checker(cls, "check_api_shape")
    data = inputs_for(cls, make_inputs)
    detector = new_detector(c, params)
    if not cls.requires.fit:
        with c.step("score() before fit() (requires.fit is False)"):
            scores = detector.score(**data.id.score_kwargs(cls.requires))
        check_scores(c, scores, len(data.id), "unfitted detector")
    with c.step("fit"):
        returned = detector.fit(**data.fit.fit_kwargs(cls.requires))
    c.require(returned is detector, f"fit() must return self, got {returned!r}")
    c.require(detector.is_fitted_ is True, "is_fitted_ must be True after fit()")
    for name in cls.state_tensors:
        value = getattr(detector, name, None)
        c.require(
            isinstance(value, torch.Tensor),
            f"state tensor {name!r} must be a torch.Tensor after fit(), got "
            f"{type(value).__name__}",
        )
        c.require(
            name.endswith("_"), f"fitted attribute {name!r} should end in '_' (sklearn style)"
        )
    with c.step("state_dict"):
        state = detector.state_dict()
    c.require(
        set(state) == set(cls.state_tensors),
        f"state_dict() holds {sorted(state)}, but state_tensors declares "
        f"{sorted(cls.state_tensors)}",
    )
    c.require(
        detector.threshold_ is not None and math.isfinite(detector.threshold_),
        f"fit() must place a finite threshold_, got {detector.threshold_!r}",
    )
    for split_name, split in (("held-out ID", data.id), ("OOD", data.ood)):
        check_scores(c, score_split(c, detector, split, split_name), len(split), split_name)
    one = Split(data.id.features[:1], data.id.labels[:1], data.id.logits[:1])
    check_scores(c, score_split(c, detector, one, "a single row"), 1, "a single row")
    with c.step("predict"):
        accepted = detector.predict(**data.id.score_kwargs(cls.requires))
    c.require(
        isinstance(accepted, np.ndarray) and accepted.dtype == np.bool_
        and accepted.shape == (len(data.id),),
        f"predict() on numpy input must return a bool array of shape ({len(data.id)},), got "
        f"{type(accepted).__name__} {getattr(accepted, 'dtype', '')} "
        f"{tuple(getattr(accepted, 'shape', ()))}",
    )
    params_out = detector.get_params()
    expected = {p.name: (params or {}).get(p.name, p.default) for p in cls.params}
    for key, value in expected.items():
        c.require(
            key in params_out and params_out[key] == value,
            f"get_params()[{key!r}] should be {value!r}, got {params_out.get(key)!r}",
        )


def check_numpy_torch_roundtrip(
    cls: type[Detector], *, make_inputs: MakeInputs | None = None,
    params: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
) -> None:
    """numpy in → numpy out, torch in → torch out on the same device; dtypes and agreement.

    The detector is fitted on numpy float32 and on torch float32 (on ``device``); both must
    score float32 numpy, float32 torch and float64 input with matching kinds and dtypes, and all
    the scores must agree.
    """
    if not data_checks_apply(cls, make_inputs):
        return
    c = Checker(cls, "check_numpy_torch_roundtrip")
    device = torch.device(device)
    data = inputs_for(cls, make_inputs)
    split = data.id

    def to_torch(dtype: torch.dtype) -> Callable[[Any], torch.Tensor]:
        return lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    from_numpy = fitted_detector(c, params, data.fit)
    from_torch = fitted_detector(c, params, data.fit, to_torch(torch.float32))
    reference: np.ndarray | None = None
    for fitted_on, detector in (("numpy", from_numpy), ("torch", from_torch)):
        cases = (
            ("numpy float32", None, np.ndarray, np.float32),
            ("numpy float64", lambda a: a.astype(np.float64), np.ndarray, np.float64),
            ("torch float32", to_torch(torch.float32), torch.Tensor, torch.float32),
            ("torch float64", to_torch(torch.float64), torch.Tensor, torch.float64),
        )
        for what, convert, kind, dtype in cases:
            label = f"{what} input, fitted on {fitted_on}"
            scores = score_split(c, detector, split, label, convert)
            values = check_scores(c, scores, len(split), label)
            c.require(
                isinstance(scores, kind),
                f"score({label}) must return a {kind.__module__}.{kind.__name__}, got "
                f"{type(scores).__module__}.{type(scores).__name__}",
            )
            c.require(
                scores.dtype == dtype,
                f"score({label}) must return dtype {dtype}, got {scores.dtype}",
            )
            if isinstance(scores, torch.Tensor):
                c.require(
                    scores.device == device,
                    f"score({label}) must return a tensor on {device}, got {scores.device}",
                )
            if reference is None:
                reference = values.astype(np.float64)
            else:
                scale = max(1.0, float(np.abs(reference).max()))
                worst = float(np.abs(values - reference).max())
                c.require(
                    worst <= 1e-4 * scale,
                    f"score({label}) differs from score(numpy float32 input, fitted on numpy) "
                    f"by up to {worst:.3g} (allowed {1e-4 * scale:.3g})",
                )


def check_half_precision(
    cls: type[Detector], *, make_inputs: MakeInputs | None = None,
    params: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
) -> None:
    """float16 (numpy, torch) and bfloat16 (torch) inputs are accepted and scored in float32.

    The half-precision scores must be finite, float32 (accumulation in fp32 or better) and close
    to the float32 scores of the same (rounded) values; fitting on half-precision data works too.
    """
    if not data_checks_apply(cls, make_inputs):
        return
    c = Checker(cls, "check_half_precision")
    device = torch.device(device)
    data = inputs_for(cls, make_inputs)
    detector = fitted_detector(c, params, data.fit)
    for what, convert in (
        ("numpy float16", lambda a: a.astype(np.float16)),
        ("torch float16", lambda a: torch.from_numpy(a).to(device=device, dtype=torch.float16)),
        ("torch bfloat16", lambda a: torch.from_numpy(a).to(device=device, dtype=torch.bfloat16)),
    ):
        scores = score_split(c, detector, data.id, f"{what} input", convert)
        values = check_scores(c, scores, len(data.id), f"{what} input")
        c.require(
            scores.dtype == (torch.float32 if isinstance(scores, torch.Tensor) else np.float32),
            f"score({what} input) must return float32 (accumulated in fp32), got {scores.dtype}",
        )
        rounded = score_split(
            c, detector, data.id, f"{what} values as float32",
            lambda a, convert=convert: to_numpy(convert(a)).astype(np.float32),
        )
        rounded = to_numpy(rounded).astype(np.float64)
        scale = max(1.0, float(np.abs(rounded).max()))
        worst = float(np.abs(values - rounded).max())
        c.require(
            worst <= 1e-3 * scale,
            f"score({what} input) differs from the float32 scores of the same values by up to "
            f"{worst:.3g} (allowed {1e-3 * scale:.3g}); accumulate in float32 or better",
        )
    half = fitted_detector(c, params, data.fit, lambda a: torch.from_numpy(a).to(torch.bfloat16))
    scores = score_split(c, half, data.id, "float32 input, fitted on bfloat16")
    check_scores(c, scores, len(data.id), "float32 input, fitted on bfloat16")


def check_score_direction(
    cls: type[Detector], *, make_inputs: MakeInputs | None = None,
    params: Mapping[str, Any] | None = None,
) -> None:
    """Higher = more in-distribution: mean ID score > mean OOD score, and AUROC > 0.9."""
    if not data_checks_apply(cls, make_inputs):
        return
    c = Checker(cls, "check_score_direction")
    data = inputs_for(cls, make_inputs)
    detector = fitted_detector(c, params, data.fit)
    id_scores = check_scores(
        c, score_split(c, detector, data.id, "held-out ID"), len(data.id), "ID"
    )
    ood_scores = check_scores(c, score_split(c, detector, data.ood, "OOD"), len(data.ood), "OOD")
    id_mean, ood_mean = float(id_scores.mean()), float(ood_scores.mean())
    c.require(
        id_mean > ood_mean,
        f"mean ID score {id_mean:.6g} is not above mean OOD score {ood_mean:.6g}; "
        f"scores must be higher for in-distribution samples (negate distances)",
    )
    area = auroc(id_scores, ood_scores)
    c.require(
        area > MIN_AUROC,
        f"AUROC on the synthetic data is {area:.4f}, expected > {MIN_AUROC} (ID positive)",
    )


class _OtherDetector(Detector):
    """A stand-in with another name, to check that loading into the wrong class is refused."""

    name = "ood_zoo.testing.other"

    def _score(self, features, logits):  # pragma: no cover - never scored
        raise NotImplementedError


def check_save_load_roundtrip(
    cls: type[Detector], *, make_inputs: MakeInputs | None = None,
    params: Mapping[str, Any] | None = None, tmp_path: str | Path | None = None,
) -> None:
    """``save``/``load`` reproduces identical scores, threshold and params; wrong class refused.

    Writes under ``tmp_path`` (a fresh temporary directory when ``None``).
    """
    if not data_checks_apply(cls, make_inputs):
        return
    c = Checker(cls, "check_save_load_roundtrip")
    data = inputs_for(cls, make_inputs)
    detector = fitted_detector(c, params, data.fit)
    with writable_directory(tmp_path) as root:
        target = root / f"{cls.name}-saved"
        with c.step("save"):
            detector.save(target)
        with c.step(f"{cls.__qualname__}.load"):
            loaded = cls.load(target)
        c.require(
            type(loaded) is cls, f"load() returned a {type(loaded).__qualname__}, not {cls!r}"
        )
        c.require(
            loaded.threshold_ == detector.threshold_,
            f"threshold_ after load is {loaded.threshold_!r}, saved {detector.threshold_!r}",
        )
        c.require(
            loaded.get_params() == detector.get_params(),
            f"params after load are {loaded.get_params()!r}, saved {detector.get_params()!r}",
        )
        for split_name, split in (("held-out ID", data.id), ("OOD", data.ood)):
            before = to_numpy(score_split(c, detector, split, split_name))
            after = to_numpy(score_split(c, loaded, split, f"{split_name}, after load"))
            c.require(
                before.dtype == after.dtype and np.array_equal(before, after),
                f"scores ({split_name}) after load differ from before save: max difference "
                f"{float(np.abs(after.astype(np.float64) - before).max()):.3g}",
            )
        with c.expect(PersistenceError, f"_OtherDetector.load(<a saved {cls.name!r}>)"):
            _OtherDetector.load(target)


def check_bad_input_errors(
    cls: type[Detector], *, make_inputs: MakeInputs | None = None,
    params: Mapping[str, Any] | None = None,
) -> None:
    """Bad inputs raise ``InputError``; scoring before ``fit`` raises ``NotFittedError``.

    Bad inputs: NaN/Inf, wrong rank, empty or missing features and logits, widths other than at
    fit time, bad labels, and (``requires.head``) a missing, non-finite or misshapen head.
    """
    if not data_checks_apply(cls, make_inputs):
        return
    c = Checker(cls, "check_bad_input_errors")
    requires = cls.requires
    data = inputs_for(cls, make_inputs)
    fit, test = data.fit, data.id

    if requires.fit:
        with c.expect(NotFittedError, "score() before fit()"):
            new_detector(c, params).score(**test.score_kwargs(requires))

    inputs = [n for n, needed in (("features", requires.features or requires.language_model),
                                  ("logits", requires.logits)) if needed]

    def corrupt(split: Split, field: str, value: np.ndarray) -> dict:
        return {**split.fit_kwargs(requires), field: value}

    def bad_values(array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        for what, value in (("NaN", np.nan), ("+Inf", np.inf), ("-Inf", -np.inf)):
            broken = array.copy()
            broken[len(broken) // 2, 0] = value
            yield what, broken
        yield f"a {array.ndim - 1}-D array", array[0].copy()
        yield f"a {array.ndim + 1}-D array", array[None].copy()
        yield "zero rows", array[:0].copy()
        yield "zero columns", array[..., :0].copy()

    for field in inputs:
        for what, broken in bad_values(getattr(fit, field)):
            with c.expect(InputError, f"fit() with {field} holding {what}"):
                new_detector(c, params).fit(**corrupt(fit, field, broken))
        with c.expect(InputError, f"fit() without {field}"):
            new_detector(c, params).fit(**{**fit.fit_kwargs(requires), field: None})

    detector = fitted_detector(c, params, fit)
    for field in inputs:
        for what, broken in bad_values(getattr(test, field)):
            kwargs = {**test.score_kwargs(requires), field: broken}
            with c.expect(InputError, f"score() with {field} holding {what}"):
                detector.score(**kwargs)
        array = getattr(test, field)
        wider = np.concatenate([array, array[..., :1]], axis=-1)  # the width is the last axis
        narrower = array[..., :-1].copy()
        for what, broken in (("one column more", wider), ("one column less", narrower)):
            kwargs = {**test.score_kwargs(requires), field: broken}
            with c.expect(InputError, f"score() with {field} of {what} than at fit time"):
                detector.score(**kwargs)
        with c.expect(InputError, f"score() without {field}"):
            detector.score(**{**test.score_kwargs(requires), field: None})
        if field == "features" and requires.logits:
            kwargs = {**test.score_kwargs(requires), "logits": test.logits[:-1].copy()}
            with c.expect(InputError, "score() with fewer logit rows than feature rows"):
                detector.score(**kwargs)

    if requires.head and fit.head is not None:
        weight, bias = fit.head
        nan_weight = weight.copy()
        nan_weight[0, 0] = np.nan
        nan_bias = bias.copy()
        nan_bias[-1] = np.inf
        for what, broken in (
            ("missing", None),
            ("not a pair", weight),
            ("holding NaN in its weight", (nan_weight, bias)),
            ("holding Inf in its bias", (weight, nan_bias)),
            ("with a 1-D weight", (weight[0].copy(), bias[:1].copy())),
            ("with one weight column more", (np.concatenate([weight, weight[:, :1]], 1), bias)),
            ("with one bias entry short", (weight, bias[:-1].copy())),
        ):
            with c.expect(InputError, f"fit() with the head {what}"):
                new_detector(c, params).fit(**{**fit.fit_kwargs(requires), "head": broken})

    if requires.labels:
        labels = fit.labels
        for what, broken in (
            ("missing", None),
            ("one entry short", labels[:-1].copy()),
            ("one entry too many", np.concatenate([labels, labels[:1]])),
            ("2-D", labels[:, None].copy()),
            ("non-integer floats", labels.astype(np.float64) + 0.5),
        ):
            with c.expect(InputError, f"fit() with labels {what}"):
                new_detector(c, params).fit(**{**fit.fit_kwargs(requires), "labels": broken})


#: Every check, by name, in the order :func:`check_detector` runs them.
CHECKS: dict[str, Callable[..., None]] = {
    "check_api_shape": check_api_shape,
    "check_numpy_torch_roundtrip": check_numpy_torch_roundtrip,
    "check_half_precision": check_half_precision,
    "check_score_direction": check_score_direction,
    "check_save_load_roundtrip": check_save_load_roundtrip,
    "check_bad_input_errors": check_bad_input_errors,
}


def detector_checks(
    cls: type[Detector], *, make_inputs: MakeInputs | None = None,
    params: Mapping[str, Any] | None = None, tmp_path: str | Path | None = None,
) -> list[tuple[str, Callable[[], None]]]:
    """``(check_name, check)`` pairs for ``pytest.mark.parametrize``; each ``check()`` runs one.

    :func:`detector_params` gives the same for several classes, with ids that name the detector.

    Language-model detectors the kit has no data for (see :func:`default_make_inputs`) get the
    class-attribute check only.
    """
    if not data_checks_apply(cls, make_inputs):
        return [("check_api_shape", functools.partial(check_class_attributes, cls, params=params))]
    pairs = []
    for name, check in CHECKS.items():
        kwargs: dict[str, Any] = {"make_inputs": make_inputs, "params": params}
        if name == "check_save_load_roundtrip":
            kwargs["tmp_path"] = tmp_path
        pairs.append((name, functools.partial(check, cls, **kwargs)))
    return pairs


def detector_params(
    *classes: type[Detector], make_inputs: MakeInputs | None = None,
    params: Mapping[str, Any] | None = None, tmp_path: str | Path | None = None,
) -> list[Any]:
    """:func:`detector_checks` of every class, as ``pytest.param`` values with readable ids.

    Each is ``pytest.param(check_name, check, id="<detector name>:<check_name>")``, so that
    ``@pytest.mark.parametrize(("name", "check"), detector_params(GEN, NNGuide))`` collects
    ``test_check[gen:check_api_shape]``, ``test_check[nnguide:check_api_shape]``, and so on. The
    keyword arguments go to :func:`detector_checks` for every class. Needs pytest.
    """
    import pytest

    return [
        pytest.param(name, check, id=f"{cls.name}:{name}")
        for cls in classes
        for name, check in detector_checks(
            cls, make_inputs=make_inputs, params=params, tmp_path=tmp_path
        )
    ]


def check_detector(
    cls: type[Detector], *, make_inputs: MakeInputs | None = None,
    params: Mapping[str, Any] | None = None, tmp_path: str | Path | None = None,
) -> None:
    """Run every check on detector class ``cls``; raise ``AssertionError`` at the first failure.

    Parameters
    ----------
    cls : Detector subclass
        The detector to check (it need not be registered).
    make_inputs : callable, optional
        ``make_inputs() -> SyntheticInputs``; by default :func:`default_make_inputs`.
    params : mapping, optional
        Hyperparameters passed to the constructor (defaults otherwise).
    tmp_path : path, optional
        Where the save/load check writes; a fresh temporary directory by default.
    """
    for _, check in detector_checks(cls, make_inputs=make_inputs, params=params, tmp_path=tmp_path):
        check()
