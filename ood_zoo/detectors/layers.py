"""Any feature detector run on each layer, the per-layer scores combined: ``layers``.

``create("layers", detector="cosine", layers="all", combine="fisher")`` takes the per-layer
features ``[n, L, d]`` of one :func:`ood_zoo.features.extract` pass (``layers="all"`` or a list),
fits one copy of the inner detector on each selected layer's slice, and combines the layers'
scores with statistics of their fit-set scores. The inner detectors' states are saved inside the
detector's own, stacked over the selected layers (``inner_<tensor>`` of shape ``[k, ...]``), so
it saves and loads like any detector.

Parity with OODEEL 0.4.0 (``oodeel.aggregator``; its scores are OOD scores, higher = OOD, so an
ood_zoo score ``s`` enters it as ``-s``): ``mean`` is ``-StdNormalizedAggregator`` on ``-s``
shifted by the constant ``mean_l μ_l/σ_l``; ``fisher`` is ``log(1 - FisherAggregator)`` on
``-s``, up to the empirical CDF (OODEEL interpolates ``i / (n + 2)`` between fit scores padded
with two bounds and clamps outside them; ood_zoo uses the mid-rank CDF with hyperbolic tails of
:func:`~ood_zoo.detectors.fusion.empirical_cdf`). OODEEL has no ``max`` aggregator. Measured
on the same five correlated per-layer score arrays (4,000 fit rows, 390 queries from the fit
distribution; ``tests/test_layers.py``): ``mean`` max abs difference 2.1e-10; ``fisher`` combined
p-values 6.9e-3 (Brown's ``c`` and ``f`` within 1.8%, Spearman 0.999996), from the two CDFs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from ..api import Detector, Param, Requirements
from ..errors import InputError
from ..ops.arrays import compute_dtype
from ._members import parse_json_object, registered_classes
from .chunks import check_state_shapes
from .distance import CosineDetector
from .fusion import FitScores, empirical_cdf, reference_rows, tail_scale

#: How per-layer scores are combined (see :class:`LayersDetector`).
COMBINATIONS: tuple[str, ...] = ("fisher", "mean", "max")

#: The fitted statistics of the per-layer fit-set scores, whatever the combination: the
#: sorted scores and tail scales of their empirical CDFs, Brown's ``(c, f)``, their means and
#: standard deviations.
SCORE_STATE: tuple[str, ...] = ("reference_", "tail_scale_", "brown_", "location_", "spread_")

#: Most continued-fraction terms of :func:`log_chi2_sf` (it converges in far fewer).
_MAX_FRACTION_TERMS = 500


def inner_state_name(tensor: str) -> str:
    """The ``layers`` detector's name of its inner detectors' stacked state tensor ``tensor``."""
    return f"inner_{tensor}"


def layers_state_names(inner: type[Detector] | Detector) -> tuple[str, ...]:
    """The state tensors of a ``layers`` detector over ``inner``."""
    return ("n_layers_", "layer_index_", *SCORE_STATE,
            *(inner_state_name(t) for t in inner.state_tensors))


def parse_layers(layers: str | Sequence[int]) -> str:
    """``layers`` in canonical form: ``"all"`` or comma-separated ints (``"0,-1"``).

    Raises
    ------
    ValueError
        If it is neither, or lists no layer or one index twice.
    """
    if isinstance(layers, str):
        text = layers.strip()
        if text == "all":
            return text
        parts = text.split(",")
    else:
        parts = list(layers)
    try:
        indices = [int(p) if isinstance(p, str) else p for p in parts]
    except ValueError:
        indices = []
    if not indices or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise ValueError(
            f"layers: parameter 'layers' must be 'all' or comma-separated layer indices, "
            f"got {layers!r}"
        )
    if len(set(indices)) != len(indices):
        raise ValueError(f"layers: parameter 'layers' lists an index twice: {layers!r}")
    return ",".join(str(i) for i in indices)


def select_layers(layers: str, n_layers: int) -> list[int]:
    """The non-negative indices of canonical ``layers`` into ``n_layers`` feature slices.

    Raises
    ------
    InputError
        If an index is out of range for ``n_layers``, or two name the same slice.
    """
    if layers == "all":
        return list(range(n_layers))
    indices = [int(i) for i in layers.split(",")]
    outside = [i for i in indices if not -n_layers <= i < n_layers]
    if outside:
        raise InputError(
            f"layers: layer(s) {outside} out of range for features with {n_layers} layers "
            f"(valid {-n_layers}..{n_layers - 1})"
        )
    chosen = [i % n_layers for i in indices]
    if len(set(chosen)) != len(chosen):
        raise InputError(f"layers: layers={layers!r} names one of the {n_layers} layers twice")
    return chosen


def log_chi2_sf(statistic: torch.Tensor, dof: float) -> torch.Tensor:
    """``log P(χ²_dof > statistic)`` in float64, finite for every finite ``statistic >= 0``.

    The survival function is the regularised upper incomplete gamma ``Q(f/2, x/2)``: from
    :func:`torch.special.gammaincc` where ``x/2 <= f/2 + 1`` (there ``Q`` is far from
    underflow), else from its continued fraction evaluated in log space (modified Lentz,
    Numerical Recipes §6.2), so far tails that underflow ``Q`` itself stay finite and ordered.
    """
    a = dof / 2
    x = statistic.to(torch.float64) / 2
    near = x <= a + 1
    log_q_near = torch.log(torch.special.gammaincc(torch.full_like(x, a), x.clamp_max(a + 1)))
    far = torch.where(near, torch.full_like(x, a + 2), x)  # the fraction's domain, x > a + 1
    tiny = torch.finfo(torch.float64).tiny
    b = far + 1 - a
    c = torch.full_like(far, 1 / tiny)
    d = 1 / b
    h = d
    for i in range(1, _MAX_FRACTION_TERMS):
        an = -i * (i - a)
        b = b + 2
        d = an * d + b
        d = torch.where(d.abs() < tiny, tiny, d)
        c = b + an / c
        c = torch.where(c.abs() < tiny, tiny, c)
        d = 1 / d
        h = h * (d * c)
        if bool(((d * c - 1).abs() < 1e-15).all()):
            break
    log_q_far = -far + a * torch.log(far) - math.lgamma(a) + torch.log(h)
    return torch.where(near, log_q_near, log_q_far)


def brown_correction(fisher: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Brown's ``(c, f)`` from fit-set Fisher statistics ``fisher`` ``[n]`` (float64).

    With ``μ`` and ``σ²`` the mean and (population) variance of ``-2 Σ_l log p_l`` over the fit
    set (the sum of the entries of the covariance of ``-2 log p_l`` across layers), ``c = σ² /
    (2μ)`` and ``f = 2μ² / σ²``: ``X / c`` is then approximately ``χ²_f``, matched in its first two
    moments. Without spread (a single fit row) the layers count as independent: ``c = 1``, ``f =
    2L``. Brown, "A method for combining non-independent, one-sided tests of significance",
    Biometrics 1975.
    """
    mean, var = fisher.mean(), fisher.var(correction=0)
    if not (var > 0 and mean > 0):
        return torch.tensor([1.0, 2.0 * n_layers], dtype=torch.float64)
    return torch.stack([var / (2 * mean), 2 * mean**2 / var])


class LayersDetector(Detector):
    """A feature detector fitted on each selected layer, its per-layer scores combined.

    With ``s_l(x)`` the inner detector's score on layer ``l`` (higher = more ID) and ``r_l1..r_ln``
    its fit-set scores (leave-one-out for detectors whose fit data is their reference set, such
    as kNN banks, as in ``fusion``; of at most :data:`~ood_zoo.detectors.fusion.REFERENCE_ROWS`
    fit rows, a seeded sample of a larger bank), the combinations are

    ``mean``
        ``mean_l z_l(x)``, with ``z_l = (s_l - μ_l) / σ_l`` standardised by the mean and the
        (population) standard deviation of ``r_l`` (``σ_l = 1`` if those are all equal).
    ``max``
        The maximum over layers of the standardised OOD evidence ``-z_l``, negated to keep
        higher = ID: ``min_l z_l(x)``. The layer that finds the sample most unusual decides.
    ``fisher``
        Fisher's combination of per-layer ID p-values ``p_l = F_l(s_l(x))``, ``F_l`` the
        continuous mid-rank empirical CDF of ``r_l`` (:func:`~ood_zoo.detectors.fusion.
        empirical_cdf`; left tail: a low score is unusual), ``X = -2 Σ_l log p_l``, with Brown's
        correction for the dependence between layers (:func:`brown_correction`, from ``X`` on
        the fit set). The score is the log combined p-value ``log P(χ²_f > X / c)``
        (:func:`log_chi2_sf`), in ``(-∞, 0]``. Haroush et al., "A Statistical Framework for
        Efficient Out of Distribution Detection in Deep Neural Networks", ICLR 2022; Dadalto et
        al., "Combine and Conquer: A Meta-Analysis on Data Shift and Out-of-Distribution
        Detection", 2024.

    Every inner detector is fitted on its layer's slice of the same features: one extraction.
    ``layers`` indexes the given feature slices (not the model's hidden states): ``"all"`` or a
    comma list of indices, negatives counting from the last; the layer count seen at fit is
    required at score time. ``detector`` is any registered detector on plain ``[n, d]``
    features (with or without class labels); ``detector_params`` its parameters, as a JSON
    object (or a mapping, kept as JSON). ``requires`` and ``state_tensors`` are set per
    instance, from the inner detector; the class-level ones describe the default (``cosine``).
    The statistics of every combination are fitted and saved, whichever is chosen.
    """

    name = "layers"
    version = "1"
    requires = Requirements(features=True, layered=True)
    params = (
        Param("detector", CosineDetector.name,
              "the registered feature detector fitted on each layer", type=str),
        Param("detector_params", "{}", "JSON object: the inner detector's parameters", type=str),
        Param("layers", "all", "'all' or comma-separated indices of the feature slices to use",
              type=str),
        Param("combine", "fisher", "how per-layer scores are combined", type=str,
              choices=COMBINATIONS),
    )
    state_tensors: ClassVar[tuple[str, ...]] = layers_state_names(CosineDetector)

    def __init__(
        self, *, detector: str = params[0].default,
        detector_params: str | Mapping[str, Any] = params[1].default,
        layers: str | Sequence[int] = params[2].default, combine: str = params[3].default,
        **kwargs: Any,
    ) -> None:
        inner_params = parse_json_object(detector_params, "layers", "detector_params")
        super().__init__(
            detector=detector.strip() if isinstance(detector, str) else detector,
            detector_params=json.dumps(inner_params, sort_keys=True),
            layers=parse_layers(layers), combine=combine, **kwargs,
        )
        (inner,) = registered_classes([self.hparams["detector"]], "layers", "inner")
        # One instance checks the parameters now, and gives the declarations of these
        # parameters (a fusion's requires and state depend on its members).
        template = inner(**inner_params)
        req = template.requires
        if not req.features or req.logits or req.language_model or req.layered:
            raise ValueError(
                f"layers: detector {inner.name!r} does not score plain [n, d] features alone "
                "(it needs logits, the language model or layered features); choose a feature "
                "detector such as 'cosine' or 'mahalanobis'"
            )
        self.inner_class = inner
        self.inner_params = inner_params
        self.inner_state_tensors = template.state_tensors
        self.inner_detectors: list[Detector] = []
        self.requires = Requirements(features=True, labels=req.labels, layered=True)
        self.state_tensors = layers_state_names(template)
        self.nonfinite_state = tuple(inner_state_name(t) for t in template.nonfinite_state)

    # ------------------------------------------------------------------ fitting
    def _fit(self, features, labels, logits):
        n_rows, n_layers = features.shape[0], features.shape[1]
        chosen = select_layers(self.hparams["layers"], n_layers)
        self.inner_detectors = []
        for layer in chosen:
            inner = self.inner_class(**self.inner_params)
            inner.fit(features[:, layer], labels if inner.requires.labels else None)
            self.inner_detectors.append(inner)
        self._stack_inner_states()
        self.n_layers_ = torch.tensor(n_layers, dtype=torch.int64)
        self.layer_index_ = torch.tensor(chosen, dtype=torch.int64)
        rows = reference_rows(n_rows)
        self._fit_cache = FitScores(rows, self._layer_fit_scores(features, rows))
        reference = self._fit_cache.scores  # [k, rows]
        self.reference_ = reference.sort(dim=1).values
        self.tail_scale_ = tail_scale(self.reference_)
        self.brown_ = brown_correction(self._fisher(reference), len(chosen))
        self.location_ = reference.mean(dim=1)
        spread = reference.std(dim=1, correction=0)
        self.spread_ = torch.where(spread > 0, spread, torch.ones_like(spread))

    def _layer_fit_scores(self, features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Each layer's inner fit scores of the fit rows ``rows`` (``[k, rows]``, float64)."""
        return torch.stack([
            inner._fit_scores(features[:, int(layer)], None, rows).to("cpu", torch.float64)
            for inner, layer in zip(self.inner_detectors, self.layer_index_.tolist(), strict=True)
        ])

    def _stack_inner_states(self) -> None:
        """Stack each inner state tensor over the layers; the inner detectors keep views."""
        for tensor in self.inner_state_tensors:
            parts = [getattr(inner, tensor) for inner in self.inner_detectors]
            shapes = {tuple(p.shape) for p in parts}
            if len(shapes) != 1:
                raise InputError(
                    f"layers: {self.inner_class.name}'s state {tensor!r} has a different shape "
                    f"per layer ({sorted(shapes)}), so it cannot be stacked"
                )
            stacked = torch.stack(parts).contiguous()
            setattr(self, inner_state_name(tensor), stacked)
            for i, inner in enumerate(self.inner_detectors):
                setattr(inner, tensor, stacked[i])

    # ------------------------------------------------------------------ combining
    def _fisher(self, layer_scores: torch.Tensor) -> torch.Tensor:
        """``-2 Σ_l log F_l(s_l)`` of per-layer scores ``[k, m]``, float64."""
        reference = self.reference_.to(layer_scores.device)
        log_p = torch.stack([
            torch.log(empirical_cdf(reference[i], layer_scores[i], float(self.tail_scale_[i])))
            for i in range(reference.shape[0])
        ])
        return -2 * log_p.sum(dim=0)

    def _combine(self, layer_scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """One score per column of float64 per-layer scores ``[k, m]``."""
        combine = self.hparams["combine"]
        if combine == "fisher":
            scale, dof = (float(v) for v in self.brown_)
            return log_chi2_sf(self._fisher(layer_scores) / scale, dof).to(dtype)
        device = layer_scores.device
        z = (layer_scores - self.location_.to(device)[:, None]) / self.spread_.to(device)[:, None]
        return (z.mean(dim=0) if combine == "mean" else z.amin(dim=0)).to(dtype)

    def _score(self, features, logits):
        n_layers = int(self.n_layers_)
        if features.shape[1] != n_layers:
            raise InputError(
                f"layers: features have {features.shape[1]} layers, but the detector was fitted "
                f"on {n_layers}"
            )
        scores = torch.stack([
            inner._score(features[:, int(layer)], None).to(torch.float64)
            for inner, layer in zip(self.inner_detectors, self.layer_index_.tolist(), strict=True)
        ])
        return self._combine(scores, compute_dtype(features.dtype))

    def _fit_scores(self, features, logits, rows):
        scores = self._fit_cache.of(rows, lambda other: self._layer_fit_scores(features, other))
        return self._combine(scores, compute_dtype(features.dtype))

    # ------------------------------------------------------------------ persistence
    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(tensors)
        index = self.layer_index_
        if self.n_layers_.dtype != torch.int64 or self.n_layers_.dim() != 0 or (
                int(self.n_layers_) < 1):
            raise ValueError(f"{self.name}: state tensor 'n_layers_' must be a positive int64")
        if index.dtype != torch.int64 or index.dim() != 1 or index.numel() == 0 or bool(
                ((index < 0) | (index >= int(self.n_layers_))).any()):
            raise ValueError(
                f"{self.name}: state tensor 'layer_index_' must be int64 indices below n_layers_"
            )
        k = index.numel()
        if any(getattr(self, n).dtype != torch.float64 for n in SCORE_STATE):
            raise ValueError(f"{self.name}: state tensors {list(SCORE_STATE)} must be float64")
        check_state_shapes(
            self.name, reference_=(self.reference_, (k, None)),
            tail_scale_=(self.tail_scale_, (k,)), brown_=(self.brown_, (2,)),
            location_=(self.location_, (k,)), spread_=(self.spread_, (k,)),
        )
        positive = ("tail_scale_", "brown_", "spread_")
        if not all(bool((getattr(self, n) > 0).all()) for n in positive):
            raise ValueError(f"{self.name}: 'tail_scale_', 'brown_' and 'spread_' must be positive")
        if self.reference_.shape[1] == 0 or not bool(
                (self.reference_[:, 1:] >= self.reference_[:, :-1]).all()):
            raise ValueError(f"{self.name}: 'reference_' must be non-empty, sorted per layer")
        stacked = {t: tensors[inner_state_name(t)] for t in self.inner_state_tensors}
        if any(s.dim() == 0 or s.shape[0] != k for s in stacked.values()):
            raise ValueError(f"{self.name}: inner state tensors must have one entry per layer")
        self.inner_detectors = []
        for i in range(k):
            inner = self.inner_class(**self.inner_params)
            inner.load_state_dict({t: s[i] for t, s in stacked.items()})
            self.inner_detectors.append(inner)
