"""scikit-learn estimators over ood_zoo's detectors: :class:`OODDetector`.

``OODDetector("knn", k=10)`` wraps any registered detector (built-in or plugin) as a scikit-learn
outlier detector (``BaseEstimator`` + ``OutlierMixin``), so it works with ``clone``,
``Pipeline`` and ``GridSearchCV``:

- ``fit(X, y=None)`` fits the detector on in-distribution rows and places the threshold
  ``offset_`` at ``target_tpr`` of them (the detector's own ``threshold_``);
- ``score_samples(X)``: **higher = more in-distribution**, as scikit-learn's outlier detectors;
- ``decision_function(X) = score_samples(X) - offset_``: negative means OOD;
- ``predict(X)``: ``+1`` in-distribution, ``-1`` OOD.

Its parameters are ``detector``, ``target_tpr`` and the wrapped detector's declared
:class:`~ood_zoo.api.Param` s, with their defaults (``get_params``); ``set_params(detector=...)``
switches to the new detector's parameters, at their defaults.

Inputs, by what the detector ``requires``:

- **features** (``cosine``, ``knn``, ``lof``, ...): ``X`` is the features ``[n, d]``;
- **labels** (``mahalanobis``, ...): ``fit(X, y)``; ``y`` may be any class labels
  (``classes_``), they are encoded as ``0 .. C-1``;
- **logits only** (``msp``, ``energy``, ...): ``X`` is the logits ``[n, C]``;
- **features and logits** (``neco``, ``nnguide``, ``she``): ``X`` is the features and the
  logits go by keyword to every method: ``fit(X, logits=Z)``, ``score_samples(X, logits=Z)``;
  in a ``Pipeline``, ``pipe.fit(X, <step name>__logits=Z)`` and ``pipe.predict(X, logits=Z)``;
- **the linear head** (``vim``, ``fdbd``, ``nci``): ``fit(X, head=(W, b))``.

Detectors on the language model's own statistics (``perplexity``, ...) or on per-layer
features ``[n, L, d]`` (``layers``) do not take a 2-D ``X``: they are refused at construction;
use :func:`ood_zoo.create` for them.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .api import DEFAULT_TARGET_TPR, Detector, Param
from .registry import get_registry

_FLOATS = (np.float64, np.float32)
#: The estimator's own parameters, besides the wrapped detector's declared ones.
_OWN_PARAMS = ("detector", "target_tpr")


class OODDetector(OutlierMixin, BaseEstimator):
    """A registered ood_zoo detector as a scikit-learn outlier detector.

    Parameters
    ----------
    detector : str
        The registered detector's name (``ood_zoo.list_detectors()``). Default ``"knn"``.
    target_tpr : float
        The fraction of fit (in-distribution) rows that :meth:`predict` accepts. Default 0.95.
    **params
        The detector's declared hyperparameters (``ood_zoo.create(detector).params``); those
        not given take their defaults. Unknown names are a ``TypeError``.

    Attributes
    ----------
    detector_ : ood_zoo.Detector
        The fitted detector.
    offset_ : float
        The threshold on :meth:`score_samples`: ``decision_function = score_samples - offset_``.
    classes_ : numpy.ndarray
        The class labels seen at fit, for detectors that need labels.
    n_features_in_ : int
        The number of columns of ``X`` at fit.

    Raises
    ------
    UnknownDetectorError
        If no detector of that name is registered.
    ValueError
        If the detector reads the language model or per-layer features, which a 2-D ``X`` cannot
        carry.
    TypeError
        For a parameter the detector does not declare.
    """

    def __init__(
        self, detector: str = "knn", *, target_tpr: float = DEFAULT_TARGET_TPR, **params: Any,
    ) -> None:
        declared = _declared_params(detector)
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise TypeError(
                f"OODDetector({detector!r}): unknown parameter(s) {unknown}; known parameters: "
                f"{', '.join([*_OWN_PARAMS, *declared])}"
            )
        self.detector = detector
        self.target_tpr = target_tpr
        for name, param in declared.items():
            setattr(self, name, params.get(name, param.default))

    # ------------------------------------------------------------------ parameters
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """``detector``, ``target_tpr`` and the detector's declared parameters (``deep`` is moot:
        nothing is nested)."""
        declared = _declared_params(self.detector)
        return {
            "detector": self.detector, "target_tpr": self.target_tpr,
            **{name: getattr(self, name) for name in declared},
        }

    def set_params(self, **params: Any) -> Self:
        """Set parameters; a new ``detector`` brings its own parameters, at their defaults.

        Raises
        ------
        ValueError
            For a name that is not a parameter of the (new) detector.
        """
        detector = params.pop("detector", self.detector)
        if detector != self.detector:
            declared = _declared_params(detector)
            for name in _declared_params(self.detector):
                delattr(self, name)
            self.detector = detector
            for name, param in declared.items():
                setattr(self, name, param.default)
        return super().set_params(**params)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.required = self._detector_class().requires.labels
        return tags

    # ------------------------------------------------------------------ estimator API
    def fit(
        self, X: Any, y: Any = None, *, logits: Any = None,
        head: tuple[Any, Any] | None = None,
    ) -> Self:
        """Fit the detector on in-distribution rows ``X`` and place ``offset_``.

        ``y`` (class labels) is used by detectors that need labels and ignored by the others;
        ``logits`` and ``head`` go to the detectors that need them (see the module docstring).
        """
        cls = self._detector_class()
        labels = None
        if cls.requires.labels:
            X, y = validate_data(self, X, y, dtype=_FLOATS)
            self.classes_, labels = np.unique(y, return_inverse=True)
        else:
            X = validate_data(self, X, dtype=_FLOATS)
        params = {name: _plain(getattr(self, name)) for name in _declared_params(self.detector)}
        detector = cls(target_tpr=_plain(self.target_tpr), **params)
        self.detector_ = detector.fit(**self._inputs(X, logits), labels=labels, head=head)
        self.offset_ = float(detector.threshold_)
        return self

    def score_samples(self, X: Any, *, logits: Any = None) -> np.ndarray:
        """One score per row; **higher = more in-distribution** (the detector's ``score``)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=_FLOATS, reset=False)
        return np.asarray(self.detector_.score(**self._inputs(X, logits)))

    def decision_function(self, X: Any, *, logits: Any = None) -> np.ndarray:
        """``score_samples(X) - offset_``: negative means OOD."""
        return self.score_samples(X, logits=logits) - self.offset_

    def predict(self, X: Any, *, logits: Any = None) -> np.ndarray:
        """``+1`` for in-distribution rows (``decision_function >= 0``), ``-1`` for OOD."""
        return np.where(self.decision_function(X, logits=logits) >= 0, 1, -1)

    def fit_predict(
        self, X: Any, y: Any = None, *, logits: Any = None,
        head: tuple[Any, Any] | None = None,
    ) -> np.ndarray:
        """``fit(X, y, ...)`` then ``predict(X, ...)``: ``+1`` in-distribution, ``-1`` OOD."""
        return self.fit(X, y, logits=logits, head=head).predict(X, logits=logits)

    # ------------------------------------------------------------------ helpers
    def _detector_class(self) -> type[Detector]:
        return get_registry().get(self.detector).cls

    def _inputs(self, X: np.ndarray, logits: Any) -> dict[str, Any]:
        """``X`` and ``logits`` as the detector's ``features`` and ``logits``."""
        requires = self._detector_class().requires
        if not requires.features:
            if logits is not None:
                raise ValueError(
                    f"OODDetector({self.detector!r}): X is the logits for this detector; "
                    "do not pass logits= too"
                )
            return {"features": None, "logits": X}
        if not requires.logits:
            return {"features": X, "logits": None}
        if logits is None:
            raise ValueError(
                f"OODDetector({self.detector!r}): needs the logits with the features X; pass "
                "them by keyword: fit(X, logits=Z), score_samples(X, logits=Z)"
            )
        return {"features": X, "logits": check_array(logits, dtype=_FLOATS)}


def _declared_params(detector: str) -> dict[str, Param]:
    """The declared parameters of the registered detector ``detector``, by name.

    Raises
    ------
    UnknownDetectorError
        If no detector of that name is registered.
    ValueError
        If its inputs do not fit a 2-D ``X``, or a parameter name clashes with the estimator's.
    """
    cls = get_registry().get(detector).cls
    if cls.requires.language_model:
        raise ValueError(
            f"OODDetector({detector!r}): the detector scores the language model's own "
            "statistics, which a feature matrix X cannot carry; use ood_zoo.create"
            f"({detector!r}) with its runner instead"
        )
    if cls.requires.layered:
        raise ValueError(
            f"OODDetector({detector!r}): the detector reads per-layer features [n, L, d], not a "
            f"2-D X; use ood_zoo.create({detector!r}) instead"
        )
    clashes = [p.name for p in cls.params if p.name in _OWN_PARAMS or hasattr(OODDetector, p.name)]
    if clashes:
        raise ValueError(
            f"OODDetector({detector!r}): the detector's parameter(s) {clashes} clash with the "
            "estimator's own names; use ood_zoo.create instead"
        )
    return {p.name: p for p in cls.params}


def _plain(value: Any) -> Any:
    """A numpy scalar (as ``np.arange`` grids give) as its Python value; anything else as is."""
    return value.item() if isinstance(value, np.generic) else value
