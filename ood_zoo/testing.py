"""A conformance kit for detector authors: does a :class:`~ood_zoo.api.Detector` keep the contract?

Every detector in ood_zoo, built in or shipped by a third party, is expected to pass these
checks. They read the detector's ``requires`` to decide what to feed it (features, class labels,
logits), fit it on small synthetic data and check

``check_api_shape``
    the class attributes (a non-empty ``name`` and ``version``, a :class:`~ood_zoo.api.Requirements`
    instance, :class:`~ood_zoo.api.Param` records whose defaults validate, ``state_tensors`` that
    exist as tensors after ``fit``); ``fit`` returns ``self``; ``score`` returns a finite 1-D
    array with one score per input row; ``predict`` returns booleans.
``check_numpy_torch_roundtrip``
    numpy in gives numpy out, torch in gives torch out on the input's device; float32 in gives
    float32 out and float64 in gives float64 out; numpy and torch inputs give the same scores.
``check_half_precision``
    float16 and bfloat16 inputs are accepted (at fit and score time), scored in float32, and agree
    with the float32 scores of the same values.
``check_score_direction``
    higher = more in-distribution: on synthetic data the mean in-distribution (ID) score is above
    the mean out-of-distribution (OOD) score and the AUROC is above 0.9.
``check_save_load_roundtrip``
    ``save`` then ``load`` reproduces identical scores, threshold and parameters, and loading the
    directory into another detector class raises :class:`~ood_zoo.errors.PersistenceError`.
``check_bad_input_errors``
    NaN, Inf, a wrong rank, an empty array, a feature (or logit) width other than the fitted
    one, and labels of the wrong length or missing when required all raise
    :class:`~ood_zoo.errors.InputError`; scoring before ``fit`` raises
    :class:`~ood_zoo.errors.NotFittedError` when ``requires.fit``.

Each check raises ``AssertionError`` with a message naming the detector, the check and what went
wrong; an unexpected exception from the detector is reported the same way, chained to its cause.

The synthetic data (:func:`make_synthetic_inputs`): ID samples are ``n_classes`` Gaussian
clusters (unit variance) whose means lie on orthogonal axes at distance 8 from the origin, with
their class labels; OOD samples are one more cluster of the same shape on another orthogonal axis,
so it is far from the ID data both in angle and in Euclidean distance. Logits, for detectors that
need them, are confident for ID (8 on the true class plus noise) and flat for OOD (noise only).
A detector that needs other data passes its own ``make_inputs``.

Usage, for a plugin author (in the plugin's test suite)::

    import pytest
    from ood_zoo.testing import check_detector, detector_checks
    from my_package import MyDetector

    def test_conforms(tmp_path):
        check_detector(MyDetector, tmp_path=tmp_path)  # all checks, stops at the first failure

    # or one test per check, so that every failure shows up:
    @pytest.mark.parametrize(("name", "check"), detector_checks(MyDetector))
    def test_check(name, check):
        check()

    # with non-default hyperparameters:
    def test_small_k(tmp_path):
        check_detector(MyDetector, params={"k": 3}, tmp_path=tmp_path)

Detectors that need the language model itself (``requires.language_model``) take per-text
statistics of it as ``features`` (see :mod:`ood_zoo.detectors.likelihood`). Those that declare
one of the built-in layouts in ``stats_columns`` get every check on synthetic statistics
(:func:`make_likelihood_inputs`); for any other, pass ``make_inputs`` (its ``features`` are the
statistics), or only the class attributes are checked.
"""

from __future__ import annotations

import contextlib
import functools
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .api import Detector, Param, Requirements
from .detectors.likelihood import RATIO_STATS, SEQUENCE_STATS
from .errors import InputError, NotFittedError, PersistenceError

__all__ = [
    "CHECKS",
    "Split",
    "SyntheticInputs",
    "auroc",
    "check_api_shape",
    "check_bad_input_errors",
    "check_detector",
    "check_half_precision",
    "check_numpy_torch_roundtrip",
    "check_save_load_roundtrip",
    "check_score_direction",
    "default_make_inputs",
    "detector_checks",
    "make_likelihood_inputs",
    "make_synthetic_inputs",
]

#: The smallest AUROC :func:`check_score_direction` accepts on the synthetic data.
MIN_AUROC = 0.9

MakeInputs = Callable[[], "SyntheticInputs"]


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One set of samples: features ``[n, d]``, class labels ``[n]`` and logits ``[n, C]``."""

    features: np.ndarray
    labels: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def fit_kwargs(
        self, requires: Requirements, convert: Callable[[Any], Any] | None = None
    ) -> dict:
        """Keyword arguments for ``fit``: only the inputs ``requires`` asks for."""
        kwargs = self.score_kwargs(requires, convert)
        if requires.labels:
            kwargs["labels"] = self.labels
        return kwargs

    def score_kwargs(
        self, requires: Requirements, convert: Callable[[Any], Any] | None = None
    ) -> dict:
        """Keyword arguments for ``score``/``calibrate``/``predict`` (``convert`` maps arrays)."""
        convert = convert or (lambda a: a)
        kwargs: dict[str, Any] = {}
        if requires.features or requires.language_model:  # LM statistics come as features
            kwargs["features"] = convert(self.features)
        if requires.logits:
            kwargs["logits"] = convert(self.logits)
        return kwargs

    def astype(self, dtype: Any) -> Split:
        """This split with features and logits cast to numpy ``dtype``."""
        return replace(self, features=self.features.astype(dtype), logits=self.logits.astype(dtype))


@dataclass(frozen=True)
class SyntheticInputs:
    """Fit data, held-out in-distribution data and out-of-distribution data."""

    fit: Split
    id: Split
    ood: Split


def make_synthetic_inputs(
    *,
    n_classes: int = 3,
    dim: int = 16,
    n_fit_per_class: int = 100,
    n_test_per_class: int = 50,
    separation: float = 8.0,
    seed: int = 0,
) -> SyntheticInputs:
    """Gaussian ID clusters with labels and a far OOD cluster, as float32 numpy arrays.

    Class ``c``'s mean is ``separation * e_c`` (``e_c`` the ``c``-th axis of a random rotation);
    the OOD mean is ``separation * e_{n_classes}``. Every cluster has identity covariance. ID
    logits are ``separation`` on the true class plus N(0, 0.5²) noise; OOD logits are the noise
    only. Labels are int64.
    """
    if dim < n_classes + 1:
        raise ValueError(f"dim must be at least n_classes + 1 = {n_classes + 1}, got {dim}")
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    axes = rotation.T[: n_classes + 1] * separation  # orthogonal means, ID classes then OOD

    def cluster(mean: np.ndarray, n: int) -> np.ndarray:
        return mean + rng.normal(size=(n, dim))

    def split(n_per_class: int) -> Split:
        labels = np.repeat(np.arange(n_classes), n_per_class)
        features = np.concatenate([cluster(axes[c], n_per_class) for c in range(n_classes)])
        logits = rng.normal(scale=0.5, size=(labels.size, n_classes))
        logits[np.arange(labels.size), labels] += separation
        order = rng.permutation(labels.size)
        return Split(
            features[order].astype(np.float32), labels[order].astype(np.int64),
            logits[order].astype(np.float32),
        )

    fit, held_out = split(n_fit_per_class), split(n_test_per_class)
    n_ood = n_classes * n_test_per_class
    ood = Split(
        cluster(axes[n_classes], n_ood).astype(np.float32),
        rng.integers(0, n_classes, size=n_ood).astype(np.int64),
        rng.normal(scale=0.5, size=(n_ood, n_classes)).astype(np.float32),
    )
    return SyntheticInputs(fit=fit, id=held_out, ood=ood)


def make_likelihood_inputs(
    *,
    columns: tuple[str, ...] = SEQUENCE_STATS,
    n_fit: int = 300,
    n_test: int = 150,
    seed: int = 0,
) -> SyntheticInputs:
    """Synthetic per-text language-model statistics, as float32 numpy ``features``.

    Each text has ``m`` tokens (uniform in 4..64). Per token, a base model's log-likelihood is
    about -3 for ID and -2 for OOD text (generic text is often the more likely), and a model fitted
    to the ID data gains about 1.5 nats on ID and loses 0.3 on OOD text. ``SEQUENCE_STATS`` gives
    ``(log_likelihood, n_tokens)`` of the fitted model; ``RATIO_STATS`` gives
    ``(log_likelihood_finetuned, log_likelihood_base, n_tokens)``. Labels are zeros and logits
    are zeros ``[n, 2]`` (such detectors use neither).
    """
    if columns not in (SEQUENCE_STATS, RATIO_STATS):
        raise ValueError(f"columns must be SEQUENCE_STATS or RATIO_STATS, got {columns!r}")
    rng = np.random.default_rng(seed)

    def split(n: int, base: float, gain: float) -> Split:
        tokens = rng.integers(4, 65, size=n).astype(np.float64)
        base_ll = tokens * rng.normal(base, 0.3, size=n)
        tuned_ll = base_ll + tokens * rng.normal(gain, 0.2, size=n)
        stats = [tuned_ll, base_ll, tokens] if columns == RATIO_STATS else [tuned_ll, tokens]
        return Split(np.stack(stats, axis=1).astype(np.float32), np.zeros(n, dtype=np.int64),
                     np.zeros((n, 2), dtype=np.float32))

    return SyntheticInputs(fit=split(n_fit, -3.0, 1.5), id=split(n_test, -3.0, 1.5),
                           ood=split(n_test, -2.0, -0.3))


def default_make_inputs(cls: type[Detector]) -> MakeInputs | None:
    """The kit's synthetic data for ``cls``, or ``None`` if it cannot make any.

    :func:`make_synthetic_inputs` for detectors on features and logits;
    :func:`make_likelihood_inputs` for language-model detectors whose ``stats_columns`` is
    ``SEQUENCE_STATS`` or ``RATIO_STATS``; ``None`` for other language-model detectors.
    """
    requires = getattr(cls, "requires", None)
    if not isinstance(requires, Requirements):
        return None
    if not requires.language_model:
        return make_synthetic_inputs
    columns = getattr(cls, "stats_columns", None)
    if columns in (SEQUENCE_STATS, RATIO_STATS):
        return functools.partial(make_likelihood_inputs, columns=columns)
    return None


def auroc(id_scores: Any, ood_scores: Any) -> float:
    """AUROC with ID as the positive class: P(ID score > OOD score) + ½ P(tie), in float64."""
    pos = np.asarray(_to_numpy(id_scores), dtype=np.float64).ravel()
    neg = np.asarray(_to_numpy(ood_scores), dtype=np.float64).ravel()
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


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _to_numpy(array: Any) -> np.ndarray:
    """A numpy copy of an array or tensor; bfloat16 (which numpy lacks) becomes float32."""
    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    return np.asarray(array)


def _label(cls: type) -> str:
    name = getattr(cls, "name", "")
    return f"{cls.__qualname__} ({name!r})" if name else cls.__qualname__


class _Checker:
    """Formats failures as ``<class> (<name>): <check>: <what>`` and wraps surprises."""

    def __init__(self, cls: type[Detector], check: str) -> None:
        self.cls, self.check = cls, check

    def prefix(self) -> str:
        return f"{_label(self.cls)}: {self.check}"

    def fail(self, message: str) -> None:
        raise AssertionError(f"{self.prefix()}: {message}")

    def require(self, condition: bool, message: str) -> None:
        if not condition:
            self.fail(message)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Run a step; an exception other than AssertionError becomes a clear AssertionError."""
        try:
            yield
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(
                f"{self.prefix()}: {what} raised {type(exc).__name__}: {exc}"
            ) from exc

    @contextlib.contextmanager
    def expect(self, error: type[BaseException], what: str) -> Iterator[None]:
        """The block must raise ``error`` (a subclass counts)."""
        try:
            yield
        except error:
            return
        except Exception as exc:
            raise AssertionError(
                f"{self.prefix()}: {what} should raise {error.__name__}, "
                f"but raised {type(exc).__name__}: {exc}"
            ) from exc
        self.fail(f"{what} should raise {error.__name__}, but raised nothing")


def _inputs(cls: type[Detector], make_inputs: MakeInputs | None) -> SyntheticInputs:
    make = make_inputs or default_make_inputs(cls)
    assert make is not None  # _data_checks_apply said so
    return make()


def _new(c: _Checker, params: Mapping[str, Any] | None) -> Detector:
    with c.step(f"{c.cls.__qualname__}(**{dict(params or {})!r})"):
        return c.cls(**dict(params or {}))


def _fitted(
    c: _Checker, params: Mapping[str, Any] | None, data: Split,
    convert: Callable[[Any], Any] | None = None,
) -> Detector:
    detector = _new(c, params)
    with c.step("fit"):
        returned = detector.fit(**data.fit_kwargs(c.cls.requires, convert))
    c.require(returned is detector, f"fit() must return self, got {returned!r}")
    return detector


def _score(c: _Checker, detector: Detector, data: Split, what: str, convert=None) -> Any:
    with c.step(f"score({what})"):
        return detector.score(**data.score_kwargs(c.cls.requires, convert))


def _check_scores(c: _Checker, scores: Any, n: int, what: str) -> np.ndarray:
    """Scores must be a 1-D array of length ``n`` holding finite values; returns them as numpy."""
    c.require(
        isinstance(scores, np.ndarray | torch.Tensor),
        f"score({what}) must return a numpy array or torch tensor, got {type(scores).__name__}",
    )
    c.require(
        scores.ndim == 1 and scores.shape[0] == n,
        f"score({what}) must return shape ({n},), got {tuple(scores.shape)}",
    )
    values = _to_numpy(scores)
    c.require(
        np.issubdtype(values.dtype, np.floating),
        f"score({what}) must return floating-point scores, got dtype {scores.dtype}",
    )
    c.require(bool(np.isfinite(values).all()), f"score({what}) returned non-finite values")
    return values


def _data_checks_apply(cls: type[Detector], make_inputs: MakeInputs | None) -> bool:
    """Whether the kit has data for ``cls``: its own synthetic data, or the caller's."""
    requires = getattr(cls, "requires", None)
    return isinstance(requires, Requirements) and (
        make_inputs is not None or default_make_inputs(cls) is not None
    )


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------


def check_class_attributes(cls: type[Detector], *, params: Mapping[str, Any] | None = None) -> None:
    """The class-level declarations: name, version, requires, params and state_tensors."""
    c = _Checker(cls, "check_api_shape")
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
    if not _data_checks_apply(cls, make_inputs):
        return
    c = _Checker(cls, "check_api_shape")
    data = _inputs(cls, make_inputs)
    detector = _new(c, params)
    if not cls.requires.fit:
        with c.step("score() before fit() (requires.fit is False)"):
            scores = detector.score(**data.id.score_kwargs(cls.requires))
        _check_scores(c, scores, len(data.id), "unfitted detector")
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
        _check_scores(c, _score(c, detector, split, split_name), len(split), split_name)
    one = Split(data.id.features[:1], data.id.labels[:1], data.id.logits[:1])
    _check_scores(c, _score(c, detector, one, "a single row"), 1, "a single row")
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
    if not _data_checks_apply(cls, make_inputs):
        return
    c = _Checker(cls, "check_numpy_torch_roundtrip")
    device = torch.device(device)
    data = _inputs(cls, make_inputs)
    split = data.id

    def to_torch(dtype: torch.dtype) -> Callable[[Any], torch.Tensor]:
        return lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    from_numpy = _fitted(c, params, data.fit)
    from_torch = _fitted(c, params, data.fit, to_torch(torch.float32))
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
            scores = _score(c, detector, split, label, convert)
            values = _check_scores(c, scores, len(split), label)
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
    if not _data_checks_apply(cls, make_inputs):
        return
    c = _Checker(cls, "check_half_precision")
    device = torch.device(device)
    data = _inputs(cls, make_inputs)
    detector = _fitted(c, params, data.fit)
    for what, convert in (
        ("numpy float16", lambda a: a.astype(np.float16)),
        ("torch float16", lambda a: torch.from_numpy(a).to(device=device, dtype=torch.float16)),
        ("torch bfloat16", lambda a: torch.from_numpy(a).to(device=device, dtype=torch.bfloat16)),
    ):
        scores = _score(c, detector, data.id, f"{what} input", convert)
        values = _check_scores(c, scores, len(data.id), f"{what} input")
        c.require(
            scores.dtype == (torch.float32 if isinstance(scores, torch.Tensor) else np.float32),
            f"score({what} input) must return float32 (accumulated in fp32), got {scores.dtype}",
        )
        rounded = _score(
            c, detector, data.id, f"{what} values as float32",
            lambda a, convert=convert: _to_numpy(convert(a)).astype(np.float32),
        )
        rounded = _to_numpy(rounded).astype(np.float64)
        scale = max(1.0, float(np.abs(rounded).max()))
        worst = float(np.abs(values - rounded).max())
        c.require(
            worst <= 1e-3 * scale,
            f"score({what} input) differs from the float32 scores of the same values by up to "
            f"{worst:.3g} (allowed {1e-3 * scale:.3g}); accumulate in float32 or better",
        )
    half = _fitted(c, params, data.fit, lambda a: torch.from_numpy(a).to(torch.bfloat16))
    scores = _score(c, half, data.id, "float32 input, fitted on bfloat16")
    _check_scores(c, scores, len(data.id), "float32 input, fitted on bfloat16")


def check_score_direction(
    cls: type[Detector], *, make_inputs: MakeInputs | None = None,
    params: Mapping[str, Any] | None = None,
) -> None:
    """Higher = more in-distribution: mean ID score > mean OOD score, and AUROC > 0.9."""
    if not _data_checks_apply(cls, make_inputs):
        return
    c = _Checker(cls, "check_score_direction")
    data = _inputs(cls, make_inputs)
    detector = _fitted(c, params, data.fit)
    id_scores = _check_scores(c, _score(c, detector, data.id, "held-out ID"), len(data.id), "ID")
    ood_scores = _check_scores(c, _score(c, detector, data.ood, "OOD"), len(data.ood), "OOD")
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
    if not _data_checks_apply(cls, make_inputs):
        return
    c = _Checker(cls, "check_save_load_roundtrip")
    data = _inputs(cls, make_inputs)
    detector = _fitted(c, params, data.fit)
    with _directory(tmp_path) as root:
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
            before = _to_numpy(_score(c, detector, split, split_name))
            after = _to_numpy(_score(c, loaded, split, f"{split_name}, after load"))
            c.require(
                before.dtype == after.dtype and np.array_equal(before, after),
                f"scores ({split_name}) after load differ from before save: max difference "
                f"{float(np.abs(after.astype(np.float64) - before).max()):.3g}",
            )
        with c.expect(PersistenceError, f"_OtherDetector.load(<a saved {cls.name!r}>)"):
            _OtherDetector.load(target)


@contextlib.contextmanager
def _directory(path: str | Path | None) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="ood_zoo_check_") as tmp:
        yield Path(tmp)


def check_bad_input_errors(
    cls: type[Detector], *, make_inputs: MakeInputs | None = None,
    params: Mapping[str, Any] | None = None,
) -> None:
    """Bad inputs raise ``InputError``; scoring before ``fit`` raises ``NotFittedError``."""
    if not _data_checks_apply(cls, make_inputs):
        return
    c = _Checker(cls, "check_bad_input_errors")
    requires = cls.requires
    data = _inputs(cls, make_inputs)
    fit, test = data.fit, data.id

    if requires.fit:
        with c.expect(NotFittedError, "score() before fit()"):
            _new(c, params).score(**test.score_kwargs(requires))

    inputs = [n for n, needed in (("features", requires.features or requires.language_model),
                                  ("logits", requires.logits)) if needed]

    def corrupt(split: Split, field: str, value: np.ndarray) -> dict:
        return {**split.fit_kwargs(requires), field: value}

    def bad_values(array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        for what, value in (("NaN", np.nan), ("+Inf", np.inf), ("-Inf", -np.inf)):
            broken = array.copy()
            broken[len(broken) // 2, 0] = value
            yield what, broken
        yield "a 1-D array", array[0].copy()
        yield "a 3-D array", array[None].copy()
        yield "zero rows", array[:0].copy()
        yield "zero columns", array[:, :0].copy()

    for field in inputs:
        for what, broken in bad_values(getattr(fit, field)):
            with c.expect(InputError, f"fit() with {field} holding {what}"):
                _new(c, params).fit(**corrupt(fit, field, broken))
        with c.expect(InputError, f"fit() without {field}"):
            _new(c, params).fit(**{**fit.fit_kwargs(requires), field: None})

    detector = _fitted(c, params, fit)
    for field in inputs:
        for what, broken in bad_values(getattr(test, field)):
            kwargs = {**test.score_kwargs(requires), field: broken}
            with c.expect(InputError, f"score() with {field} holding {what}"):
                detector.score(**kwargs)
        array = getattr(test, field)
        wider = np.concatenate([array, array[:, :1]], axis=1)
        narrower = array[:, :-1].copy()
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
                _new(c, params).fit(**{**fit.fit_kwargs(requires), "labels": broken})


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

    Language-model detectors the kit has no data for (see :func:`default_make_inputs`) get the
    class-attribute check only.
    """
    if not _data_checks_apply(cls, make_inputs):
        return [("check_api_shape", functools.partial(check_class_attributes, cls, params=params))]
    pairs = []
    for name, check in CHECKS.items():
        kwargs: dict[str, Any] = {"make_inputs": make_inputs, "params": params}
        if name == "check_save_load_roundtrip":
            kwargs["tmp_path"] = tmp_path
        pairs.append((name, functools.partial(check, cls, **kwargs)))
    return pairs


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
