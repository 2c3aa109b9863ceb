"""The detector API: one base class, declared requirements and hyperparameters.

Score convention (everywhere in ood_zoo): **higher = more in-distribution**, as in Liu et al.,
"How Good Are LLMs at Out-of-Distribution Detection?" (LREC-COLING 2024) and scikit-learn's
``score_samples``.

A detector subclass declares, as class-level data,

- ``name``: the registry name (``"cosine"``),
- ``requires``: a :class:`Requirements` saying which inputs it needs,
- ``params``: its hyperparameters as :class:`Param` records with defaults,
- ``state_tensors``: the names of its fitted tensor attributes (saved by :meth:`Detector.save`),
- ``state_widths``: which state tensor axis is the feature (or logit) width, checked on load,
- ``nonfinite_state``: the state tensors that may hold NaN/Inf (none, for the built-ins),

and implements ``_fit`` and ``_score`` on validated tensors. The base class does validation,
numpy/torch round-tripping, thresholds and persistence, so every detector behaves the same.

Fitted state (scikit-learn's rule): every attribute ``_fit`` sets that ``_score`` needs is named
with a trailing underscore (``centroids_``), and nothing else is. :meth:`Detector.save` keeps

- the tensors named in ``state_tensors`` (safetensors; the conformance kit checks that each is a
  tensor ending in ``_``),
- the other trailing-underscore attributes when their values are JSON scalars (``None``, bool,
  int, float, str) or lists of them (in ``detector.json``, e.g. a chosen ``dim_``),

and refuses to save any other trailing-underscore attribute (a tensor missing from
``state_tensors``, an object), naming it, rather than drop it. Scratch values that need not
survive a save (a cache for the fit-time threshold) take a leading underscore (``_fit_cache``);
configuration set in ``__init__`` takes neither.

A detector whose ``requires.head`` is true uses the linear classifier head ``(W [C, d], b [C])``
that maps its features to their logits (``fit(..., head=(W, b))``). The base class validates
the head and sets it, before ``_fit`` runs, as the fitted tensors ``head_weight_`` ``[C, d]``
and ``head_bias_`` ``[C]`` (on the features' device, float32 or float64); such a detector lists
both in ``state_tensors``, so a loaded one needs no head to score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import torch

from .conformal import benjamini_hochberg, conformal_pvalues, conformal_rank
from .declarations import Param, Requirements
from .errors import InputError, NotFittedError
from .io import load_detector, save_detector
from .ops.arrays import (
    ArrayKind,
    ArrayLike,
    as_tensor,
    check_finite,
    check_labels,
    check_matrix,
    compute_dtype,
)

#: Default target true-positive rate of in-distribution samples for :meth:`Detector.predict`.
DEFAULT_TARGET_TPR = 0.95

#: The default threshold is placed on a seeded sample of the fit rows, large enough that the
#: accepted ID share has this binomial standard error (see :func:`threshold_sample_rows`).
THRESHOLD_TPR_STDERR = 0.01
#: ... but never fewer rows than this (or all of them).
THRESHOLD_MIN_ROWS = 500


#: The ``target_tpr`` argument every detector takes, validated like its declared parameters.
TARGET_TPR = Param(
    "target_tpr", DEFAULT_TARGET_TPR, "fraction of in-distribution samples predict accepts",
    type=float, minimum=0.0, exclusive_minimum=True, maximum=1.0,
)

#: The ``alpha`` argument of :meth:`Detector.calibrate`: the false-alarm rate it guarantees.
ALPHA = Param(
    "alpha", 0.05, "largest probability that predict rejects an in-distribution sample",
    type=float, minimum=0.0, exclusive_minimum=True, maximum=1.0,
)


def threshold_at_tpr(id_scores: torch.Tensor, tpr: float) -> float:
    """The largest threshold ``t`` with ``mean(id_scores >= t) >= tpr``.

    Parameters
    ----------
    id_scores : torch.Tensor
        1-D scores of in-distribution samples (higher = more ID).
    tpr : float
        Target fraction of ID samples to accept, in ``(0, 1]``.
    """
    tpr = TARGET_TPR.validate(tpr, "threshold_at_tpr: target TPR")
    ordered = torch.sort(id_scores.detach().flatten().double(), descending=True).values
    return float(ordered[_accepted_at_tpr(ordered.numel(), tpr) - 1])


def _accepted_at_tpr(n_scores: int, tpr: float) -> int:
    """How many of ``n_scores`` ID scores a threshold at target TPR ``tpr`` accepts."""
    return max(math.ceil(tpr * n_scores - 1e-9), 1)


def threshold_sample_rows(n_rows: int, tpr: float) -> int:
    """How many fit rows are scored to place the default threshold at target TPR ``t``.

    The threshold is the empirical ``(1 - t)``-quantile of ``n`` sampled fit scores, so the share
    of the fit distribution it accepts has standard error ``sqrt(t (1 - t) / n)``. The sample
    is the smallest with standard error at most :data:`THRESHOLD_TPR_STDERR`, i.e.
    ``n = ceil(t (1 - t) / 0.01²)``, at least :data:`THRESHOLD_MIN_ROWS`, at most ``n_rows``:
    500 rows (standard error 0.0097) at the default ``t = 0.95``, 900 at ``t = 0.9``. It does not
    grow with the bank, so fitting a kNN detector on a million rows scores 500 of them (leave
    one out): about half the cost of scoring 1,000 queries. For a tighter threshold, use
    :meth:`Detector.calibrate` on held-out ID data.
    """
    need = math.ceil(tpr * (1.0 - tpr) / THRESHOLD_TPR_STDERR**2)
    return min(n_rows, max(need, THRESHOLD_MIN_ROWS))


def threshold_rows(n_rows: int, tpr: float) -> torch.Tensor:
    """The fit rows whose scores place the default threshold, sorted: all ``n_rows`` if at most
    :func:`threshold_sample_rows`, else that many drawn without replacement (seed 0)."""
    n_sample = threshold_sample_rows(n_rows, tpr)
    if n_rows <= n_sample:
        return torch.arange(n_rows)
    generator = torch.Generator().manual_seed(0)
    return torch.randperm(n_rows, generator=generator)[:n_sample].sort().values


class Detector:
    """Base class of every OOD detector.

    Subclasses set the class attributes below and implement :meth:`_fit` and :meth:`_score`.

    Parameters
    ----------
    target_tpr : float
        The fraction of in-distribution samples :meth:`predict` accepts; the threshold is placed
        on the fit data (or on a calibration set, see :meth:`calibrate`). Default 0.95.
    **params
        The detector's declared hyperparameters (see ``params``); unknown names are an error.

    Fitted state ends in ``_`` (see the module notes): tensors go in ``state_tensors``,
    JSON scalars and lists of them are saved as they are, anything else is refused by
    :meth:`save`.

    Attributes
    ----------
    threshold_ : float or None
        Score threshold used by :meth:`predict`; ``None`` until fit data or a calibration set
        has been seen.
    calibration_scores_ : torch.Tensor or None
        The scores of the last :meth:`calibrate` set, float64, sorted ascending, on the CPU:
        the reference of :meth:`pvalues`. ``None`` before ``calibrate`` (and after a new ``fit``).
    false_alarm_bound_ : float or None
        What the threshold guarantees once calibrated: :meth:`predict` rejects an ID sample
        exchangeable with the calibration set with probability at most this (``k / (n + 1)``,
        the threshold being the ``k``-th smallest of ``n`` calibration scores).
        ``None`` while the threshold is the in-sample one placed by ``fit``: no guarantee.
    n_features_in_, n_logits_in_ : int or None
        Feature and logit widths seen at fit time (the last axis of layered features).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    requires: ClassVar[Requirements] = Requirements(features=True)
    params: ClassVar[tuple[Param, ...]] = ()
    state_tensors: ClassVar[tuple[str, ...]] = ()
    #: Where the fitted state fixes an input width: ``{"n_features_in": (tensor, axis)}`` (or
    #: ``"n_logits_in"``). ``fit`` checks it; a load refuses a saved width that contradicts it.
    state_widths: ClassVar[Mapping[str, tuple[str, int]]] = {}
    #: The floating state tensors that may legitimately hold NaN or Inf; a load refuses
    #: non-finite values in every other one.
    nonfinite_state: ClassVar[tuple[str, ...]] = ()
    #: True if ``fit`` itself rejects non-finite features with an :class:`InputError` (because it
    #: reads every value anyway, e.g. a kNN index's norm pass); the base class then skips its
    #: own pass over them, which costs seconds on a multi-GB bank.
    checks_finite_fit_features: ClassVar[bool] = False

    def __init__(self, *, target_tpr: float = DEFAULT_TARGET_TPR, **params: Any) -> None:
        owner = self.name or type(self).__name__
        declared = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(declared))
        if unknown:
            known = ", ".join(declared) or "none"
            raise TypeError(
                f"{owner}: unknown parameter(s) {unknown}; known parameters: {known}"
            )
        self.hparams: dict[str, Any] = {
            p.name: p.validate(params.get(p.name, p.default), owner) for p in self.params
        }
        self.target_tpr: float = TARGET_TPR.validate(target_tpr, owner)
        self.threshold_: float | None = None
        self.calibration_scores_: torch.Tensor | None = None
        self.false_alarm_bound_: float | None = None
        self.n_features_in_: int | None = None
        self.n_logits_in_: int | None = None
        self.is_fitted_ = False

    # ------------------------------------------------------------------ subclass hooks
    def _fit(
        self, features: torch.Tensor | None, labels: torch.Tensor | None,
        logits: torch.Tensor | None,
    ) -> None:
        """Compute fitted state from validated inputs (features/logits keep their dtype)."""

    def _score(self, features: torch.Tensor | None, logits: torch.Tensor | None) -> torch.Tensor:
        """Return 1-D scores (higher = more ID) in fp32, or fp64 for fp64 input."""
        raise NotImplementedError

    def _fit_scores(
        self, features: torch.Tensor | None, logits: torch.Tensor | None, rows: torch.Tensor,
    ) -> torch.Tensor:
        """Scores of the fit rows ``rows``, used to place the default threshold.

        Detectors whose fit data is their own reference set (kNN banks) override this with a
        leave-one-out score, since a sample always matches itself.
        """
        return self._score(_take(features, rows), _take(logits, rows))

    # ------------------------------------------------------------------ public API
    def fit(
        self, features: ArrayLike | None = None, labels: ArrayLike | None = None,
        logits: ArrayLike | None = None, *,
        head: tuple[ArrayLike, ArrayLike | None] | None = None,
    ) -> Self:
        """Fit on in-distribution data and place the :meth:`predict` threshold on it.

        Inputs a detector does not need (see ``requires``) are ignored, so a runner can pass
        the same inputs to every detector. ``head`` is the linear head ``(weight [C, d], bias
        [C] or None for zeros)`` mapping the features to the logits, for detectors with
        ``requires.head``; it must be finite, with ``d`` the feature width and ``C`` the logit
        width where logits are given too.
        """
        x, y, z = self._check_inputs(features, labels, logits, fitting=True)
        if self.requires.head:
            self.head_weight_, self.head_bias_ = self._check_head(head, x, z)
        self._fit(x, y, z)
        for attr in self.state_tensors:  # saved tensors are contiguous; score as they will load
            value = getattr(self, attr, None)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{self.name}: _fit did not set state tensor {attr!r}")
            setattr(self, attr, value.contiguous())
        self.n_features_in_ = None if x is None else int(x.shape[-1])
        self.n_logits_in_ = None if z is None else int(z.shape[1])
        self._check_state_widths()
        self.is_fitted_ = True
        self.calibration_scores_ = self.false_alarm_bound_ = None  # a new scorer: recalibrate
        n = _n_rows(x, z)
        if n:
            rows = threshold_rows(n, self.target_tpr)
            self.threshold_ = threshold_at_tpr(self._fit_scores(x, z, rows), self.target_tpr)
        else:
            self.threshold_ = None
        return self

    def score(
        self, features: ArrayLike | None = None, logits: ArrayLike | None = None
    ) -> ArrayLike:
        """Return one score per sample; **higher = more in-distribution**.

        The result is a numpy array for numpy input and a tensor on the input's device for
        torch input; float32, or float64 for float64 input.
        """
        scores = self._checked_score(features, logits)
        return self._output_kind(features, logits).wrap(scores)

    def calibrate(
        self, features: ArrayLike | None = None, logits: ArrayLike | None = None,
        tpr: float | None = None, *, alpha: float | None = None,
    ) -> Self:
        """Place the :meth:`predict` threshold on held-out ID data and keep its scores.

        With ``alpha``, the threshold is split-conformal (Bates et al., Annals of Statistics
        2023; :mod:`ood_zoo.conformal`): :meth:`predict` rejects exactly the samples with
        ``pvalues <= alpha``, so an ID sample exchangeable with the ``n`` calibration samples is
        rejected with probability at most ``false_alarm_bound_ = floor(alpha (n + 1)) / (n + 1)
        <= alpha``, over the draw of both; equal to it for continuous scores (no ties).
        Without, the threshold accepts a ``tpr`` fraction (default ``target_tpr``) of the
        calibration set; being its ``k``-th smallest score, it too rejects an exchangeable ID
        sample with probability at most ``false_alarm_bound_ = k / (n + 1)``.

        Raises
        ------
        TypeError
            If both ``tpr`` and ``alpha`` are given.
        InputError
            If ``alpha < 1 / (n + 1)``: a level-``alpha`` test then never rejects.
        """
        if tpr is not None and alpha is not None:
            raise TypeError(f"{self.name}: calibrate takes tpr or alpha, not both")
        if tpr is not None:
            self.target_tpr = TARGET_TPR.validate(tpr, f"{self.name}: calibrate(tpr)")
        if alpha is not None:
            alpha = ALPHA.validate(alpha, f"{self.name}: calibrate(alpha)")
        ordered = torch.sort(self._checked_score(features, logits).double().cpu()).values
        n = ordered.numel()
        if alpha is None:
            rank = n - _accepted_at_tpr(n, self.target_tpr) + 1
        else:
            rank = conformal_rank(n, alpha)
            if rank == 0:
                raise InputError(
                    f"{self.name}: calibrate(alpha={alpha}) with {n} calibration sample(s) can "
                    f"never reject: a level-alpha conformal threshold needs n + 1 >= 1 / alpha, "
                    f"at least {math.ceil(1 / alpha) - 1} samples"
                )
        self.threshold_ = float(ordered[rank - 1])
        self.calibration_scores_ = ordered
        self.false_alarm_bound_ = rank / (n + 1)
        return self

    def pvalues(
        self, features: ArrayLike | None = None, logits: ArrayLike | None = None
    ) -> ArrayLike:
        """Split-conformal p-values against the :meth:`calibrate` set, float64, one per sample.

        ``p = (1 + #{calibration scores <= score}) / (n + 1)``: small means OOD. For an ID
        sample exchangeable with the calibration samples, ``P(p <= u) <= u`` for every ``u``
        (marginally, over the draw of both). Numpy for numpy input, else a tensor on the
        input's device.

        Raises
        ------
        NotFittedError
            If :meth:`calibrate` has not been called (since the last ``fit``).
        """
        pvalues = self._checked_pvalues(features, logits)
        return self._output_kind(features, logits).wrap(pvalues)

    def predict(
        self, features: ArrayLike | None = None, logits: ArrayLike | None = None, *,
        fdr: float | None = None,
    ) -> ArrayLike:
        """Return a boolean per sample: ``True`` = in-distribution (score >= ``threshold_``).

        With ``fdr=q``, the batch is tested as a whole instead: Benjamini–Hochberg at level
        ``q`` over its :meth:`pvalues` (:func:`ood_zoo.conformal.benjamini_hochberg`) flags
        the OOD samples (``False``), so that the expected share of ID samples among the flagged
        ones is at most ``q`` (for continuous scores, the batch's ID samples exchangeable with
        the calibration set). It needs :meth:`calibrate`.
        """
        if fdr is not None:
            flagged = benjamini_hochberg(self._checked_pvalues(features, logits), fdr)
            return self._output_kind(features, logits).wrap(~flagged)
        if self.threshold_ is None:
            raise NotFittedError(
                f"{self.name}: no threshold yet; call fit() with data or calibrate() first"
            )
        scores = self.score(features, logits)
        return scores >= self.threshold_

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters, as passed to the constructor (``target_tpr`` included)."""
        return {**self.hparams, "target_tpr": self.target_tpr}

    def save(self, path: str | Path) -> Path:
        """Save to directory ``path``: safetensors for tensors, JSON for the rest (no pickle)."""
        return save_detector(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Load a detector saved by :meth:`save`; it must be this class's detector.

        Call it on the detector's class (``KNNDetector.load(path)``); to load a saved detector
        of any class, by the name it was saved under, use :func:`ood_zoo.load`.

        Raises
        ------
        TypeError
            If called on a class without a ``name`` (such as ``Detector`` itself).
        PersistenceError
            If ``path`` is not a whole, valid save of this detector.
        """
        if not cls.name:
            raise TypeError(
                f"{cls.__qualname__}.load() needs a detector class with a name; to load a saved "
                "detector of any class, use ood_zoo.load(path)"
            )
        return load_detector(path, cls)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fitted tensors named in ``state_tensors``, as contiguous CPU tensors."""
        self._check_fitted()
        return {n: getattr(self, n).detach().cpu().contiguous() for n in self.state_tensors}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore the fitted tensors saved by :meth:`state_dict`.

        Every floating tensor must be finite, except those named in ``nonfinite_state``: one
        pass over each, in bounded memory, on load only (``fit`` validates its inputs instead).
        Subclasses check shapes after calling this.

        Raises
        ------
        KeyError
            If a state tensor is missing.
        InputError
            If a state tensor holds NaN or Inf.
        """
        missing = [n for n in self.state_tensors if n not in tensors]
        if missing:
            raise KeyError(f"{self.name}: saved state lacks tensors {missing}")
        for n in self.state_tensors:
            tensor = tensors[n]
            if tensor.is_floating_point() and n not in self.nonfinite_state:
                check_finite(tensor.reshape(1) if tensor.dim() == 0 else tensor,
                             name=f"{self.name}: state tensor {n!r}")
        for n in self.state_tensors:
            setattr(self, n, tensors[n])
        self.is_fitted_ = True

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ helpers
    def _checked_score(self, features: Any, logits: Any) -> torch.Tensor:
        self._check_fitted()
        x, _, z = self._check_inputs(features, None, logits, fitting=False)
        return self._score(x, z)

    def _checked_pvalues(self, features: Any, logits: Any) -> torch.Tensor:
        if self.calibration_scores_ is None:
            raise NotFittedError(
                f"{self.name}: no calibration scores; call calibrate() with held-out ID data "
                "first"
            )
        return conformal_pvalues(self.calibration_scores_, self._checked_score(features, logits))

    def _output_kind(self, features: Any, logits: Any) -> ArrayKind:
        """The kind of the outputs: that of the features, or of the logits if none are used."""
        return ArrayKind.of(
            features if features is not None and self.requires.features else logits
        )

    def _check_state_widths(self) -> None:
        widths = {"n_features_in": self.n_features_in_, "n_logits_in": self.n_logits_in_}
        for key, (attr, axis) in self.state_widths.items():
            shape = tuple(getattr(self, attr).shape)
            if key not in widths or axis >= len(shape) or shape[axis] != widths[key]:
                raise TypeError(
                    f"{self.name}: state_widths declares {key} = {attr}.shape[{axis}], but "
                    f"{key} is {widths.get(key)} and {attr} has shape {shape}"
                )

    def _check_head(
        self, head: Any, features: torch.Tensor | None, logits: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The validated head ``(weight [C, d], bias [C])`` on the inputs' device, float32 or
        float64 (float64 if either part is)."""
        usage = "pass fit(..., head=(weight [C, d], bias [C] or None))"
        if head is None:
            raise InputError(
                f"{self.name}: needs the linear head mapping features to logits; {usage}"
            )
        if not isinstance(head, tuple | list) or len(head) != 2:
            raise InputError(f"{self.name}: head must be a (weight, bias) pair; {usage}")
        weight = check_matrix(head[0], name=f"{self.name}: head weight")
        n_classes, width = weight.shape
        if features is not None and width != features.shape[1]:
            raise InputError(
                f"{self.name}: head weight has shape {tuple(weight.shape)}, but the features "
                f"have {features.shape[1]} columns (expected [C, {features.shape[1]}])"
            )
        if logits is not None and n_classes != logits.shape[1]:
            raise InputError(
                f"{self.name}: head weight has {n_classes} rows, but the logits have "
                f"{logits.shape[1]} columns"
            )
        if head[1] is None:
            bias = torch.zeros(n_classes, dtype=weight.dtype, device=weight.device)
        else:
            bias = as_tensor(head[1], name=f"{self.name}: head bias")
            if not bias.is_floating_point() or tuple(bias.shape) != (n_classes,):
                raise InputError(
                    f"{self.name}: head bias must be a floating [C] = [{n_classes}] array, got "
                    f"{bias.dtype} of shape {tuple(bias.shape)}"
                )
            check_finite(bias, name=f"{self.name}: head bias")
        dtype = compute_dtype(torch.promote_types(weight.dtype, bias.dtype))
        device = _device(features, logits)
        return (weight.to(device=device, dtype=dtype, copy=True),
                bias.to(device=device, dtype=dtype, copy=True))

    def _check_fitted(self) -> None:
        if self.requires.fit and not self.is_fitted_:
            raise NotFittedError(f"{self.name}: call fit() before score()")

    def _check_inputs(
        self, features: Any, labels: Any, logits: Any, *, fitting: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        req = self.requires
        x = y = z = None
        if req.features:
            if features is None:
                raise InputError(f"{self.name}: needs features, got None")
            x = check_matrix(
                features, name="features", n_features=None if fitting else self.n_features_in_,
                finite=not (fitting and self.checks_finite_fit_features), layered=req.layered,
            )
        if req.logits:
            if logits is None:
                raise InputError(f"{self.name}: needs logits, got None")
            z = check_matrix(
                logits, name="logits",
                n_features=None if fitting or self.n_logits_in_ is None else self.n_logits_in_,
            )
        if x is not None and z is not None:
            if x.shape[0] != z.shape[0]:
                raise InputError(
                    f"{self.name}: features have {x.shape[0]} rows but logits have {z.shape[0]}"
                )
            if z.device != x.device:
                raise InputError(
                    f"{self.name}: features on {x.device} but logits on {z.device}"
                )
        if fitting and req.labels:
            if labels is None:
                raise InputError(f"{self.name}: needs class labels to fit, got None")
            y = check_labels(labels, n_samples=_n_rows(x, z)).to(_device(x, z))
        return x, y, z


def _take(tensor: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if tensor is None else tensor[rows.to(tensor.device)]


def _n_rows(*tensors: torch.Tensor | None) -> int:
    return next((int(t.shape[0]) for t in tensors if t is not None), 0)


def _device(*tensors: torch.Tensor | None) -> torch.device:
    return next((t.device for t in tensors if t is not None), torch.device("cpu"))

