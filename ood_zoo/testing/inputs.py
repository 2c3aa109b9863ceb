"""The conformance kit's synthetic data, chosen from a detector's ``requires``.

Gaussian ID clusters with labels and logits and a far OOD cluster (:func:`make_synthetic_inputs`),
the same per layer for detectors on layered features (:func:`make_layered_inputs`), or per-text
language-model statistics (:func:`make_likelihood_inputs`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..api import Detector, Requirements
from ..detectors.likelihood import (
    FISHER_RAO_STATS,
    RATIO_STATS,
    RENYI_STATS,
    SELF_CERTAINTY_STATS,
    SEQUENCE_STATS,
)

__all__ = [
    "LIKELIHOOD_COLUMNS",
    "MakeInputs",
    "Split",
    "SyntheticInputs",
    "default_make_inputs",
    "make_layered_inputs",
    "make_likelihood_inputs",
    "make_synthetic_inputs",
]

MakeInputs = Callable[[], "SyntheticInputs"]


@dataclass(frozen=True)
class Split:
    """One set of samples: features ``[n, d]`` (``[n, L, d]`` if layered), class labels ``[n]``
    and logits ``[n, C]``.

    ``head``, if given, is the linear head ``(weight [C, d], bias [C])`` behind the logits,
    passed to ``fit`` of detectors with ``requires.head``.
    """

    features: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    head: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def fit_kwargs(
        self, requires: Requirements, convert: Callable[[Any], Any] | None = None
    ) -> dict:
        """Keyword arguments for ``fit``: only the inputs ``requires`` asks for."""
        kwargs = self.score_kwargs(requires, convert)
        if requires.labels:
            kwargs["labels"] = self.labels
        if requires.head and self.head is not None:
            convert = convert or (lambda a: a)
            kwargs["head"] = tuple(convert(part) for part in self.head)
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
        """This split with features, logits and head cast to numpy ``dtype``."""
        head = None if self.head is None else tuple(part.astype(dtype) for part in self.head)
        return replace(self, features=self.features.astype(dtype), logits=self.logits.astype(dtype),
                       head=head)


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
    the OOD mean is ``separation * e_{n_classes}``. Every cluster has identity covariance. The
    logits are those of a linear head ``W = [e_0 .. e_{C-1}]ᵀ``, bias ``b`` drawn from
    N(0, 0.1²): ``x Wᵀ + b``, about ``separation`` on an ID sample's class and N(0, 1) elsewhere
    (and everywhere for OOD). Every split carries the head. Labels are int64.
    """
    if dim < n_classes + 1:
        raise ValueError(f"dim must be at least n_classes + 1 = {n_classes + 1}, got {dim}")
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    axes = rotation.T[: n_classes + 1] * separation  # orthogonal means, ID classes then OOD
    weight = rotation.T[:n_classes].astype(np.float32)
    bias = rng.normal(scale=0.1, size=n_classes).astype(np.float32)

    def logits_of(features: np.ndarray) -> np.ndarray:
        return (features.astype(np.float64) @ weight.T + bias).astype(np.float32)

    def cluster(mean: np.ndarray, n: int) -> np.ndarray:
        return mean + rng.normal(size=(n, dim))

    def split(n_per_class: int) -> Split:
        labels = np.repeat(np.arange(n_classes), n_per_class)
        features = np.concatenate([cluster(axes[c], n_per_class) for c in range(n_classes)])
        order = rng.permutation(labels.size)
        x = features[order].astype(np.float32)
        return Split(x, labels[order].astype(np.int64), logits_of(x), (weight, bias))

    fit, held_out = split(n_fit_per_class), split(n_test_per_class)
    n_ood = n_classes * n_test_per_class
    x_ood = cluster(axes[n_classes], n_ood).astype(np.float32)
    ood = Split(x_ood, rng.integers(0, n_classes, size=n_ood).astype(np.int64), logits_of(x_ood),
                (weight, bias))
    return SyntheticInputs(fit=fit, id=held_out, ood=ood)


def make_layered_inputs(
    *, n_layers: int = 3, noise: float = 0.3, seed: int = 0, **synthetic: Any,
) -> SyntheticInputs:
    """:func:`make_synthetic_inputs` seen through ``n_layers`` layers: ``[n, L, d]`` features.

    Layer ``l`` holds the samples rotated by a random orthogonal matrix of its own, plus
    N(0, (l · noise)²) noise, so the layers agree on which samples are ID but differ in values.
    Labels and logits are those of the one underlying data set, made by
    ``make_synthetic_inputs(seed=seed, **synthetic)``.
    """
    base = make_synthetic_inputs(seed=seed, **synthetic)
    rng = np.random.default_rng(seed + 1)
    dim = base.fit.features.shape[1]
    rotations = [np.linalg.qr(rng.normal(size=(dim, dim)))[0] for _ in range(n_layers)]

    def layered(split: Split) -> Split:
        shape = split.features.shape
        slices = [split.features @ rotation + rng.normal(scale=layer * noise, size=shape)
                  for layer, rotation in enumerate(rotations)]
        return replace(split, features=np.stack(slices, axis=1).astype(np.float32))

    return SyntheticInputs(fit=layered(base.fit), id=layered(base.id), ood=layered(base.ood))
#: Every statistic column :func:`make_likelihood_inputs` can make (``n_tokens`` comes last).
LIKELIHOOD_COLUMNS = tuple(dict.fromkeys(
    c for layout in (SEQUENCE_STATS, RENYI_STATS, FISHER_RAO_STATS, SELF_CERTAINTY_STATS,
                     RATIO_STATS) for c in layout[:-1]))


def _known_layout(columns: Any) -> bool:
    return (isinstance(columns, tuple) and len(columns) >= 2 and columns[-1] == "n_tokens"
            and all(c in LIKELIHOOD_COLUMNS for c in columns[:-1]))


def make_likelihood_inputs(
    *,
    columns: tuple[str, ...] = SEQUENCE_STATS,
    n_fit: int = 300,
    n_test: int = 150,
    seed: int = 0,
) -> SyntheticInputs:
    """Synthetic per-text language-model statistics, as float32 numpy ``features``.

    Each text has ``m`` tokens (uniform in 4..64); every statistic is ``m`` times a per-text mean.
    Per token, a base model's log-likelihood is about -3 for ID and -2 for OOD text (generic text
    is often the more likely), and a model fitted to the ID data gains about 1.5 nats on ID and
    loses 0.3 on OOD text. Its next-token distributions are more peaked on ID text: Rényi
    divergence to uniform about 5 against 4 nats, normalised Fisher–Rao distance 0.75 against
    0.65, self-certainty 9 against 7. ``columns`` picks and orders them: any of
    :data:`LIKELIHOOD_COLUMNS` (``log_likelihood`` is the fitted model's,
    ``log_likelihood_finetuned`` and ``log_likelihood_base`` the two of ``RATIO_STATS``), then
    ``n_tokens``. Labels are zeros and logits are zeros ``[n, 2]`` (such detectors use neither).
    """
    if not _known_layout(columns):
        raise ValueError(f"columns must be names from {LIKELIHOOD_COLUMNS} followed by "
                         f"'n_tokens', got {columns!r}")
    rng = np.random.default_rng(seed)

    def split(n: int, base: float, gain: float, peaked: bool) -> Split:
        tokens = rng.integers(4, 65, size=n).astype(np.float64)
        base_ll = tokens * rng.normal(base, 0.3, size=n)
        tuned_ll = base_ll + tokens * rng.normal(gain, 0.2, size=n)
        means = {"renyi_divergence": (5.0, 4.0, 0.4), "fisher_rao": (0.75, 0.65, 0.04),
                 "self_certainty": (9.0, 7.0, 0.7)}
        values = {"log_likelihood": tuned_ll, "log_likelihood_finetuned": tuned_ll,
                  "log_likelihood_base": base_ll, "n_tokens": tokens}
        for name, (id_mean, ood_mean, sd) in means.items():
            values[name] = tokens * rng.normal(id_mean if peaked else ood_mean, sd, size=n)
        stats = np.stack([values[c] for c in columns], axis=1)
        return Split(stats.astype(np.float32), np.zeros(n, dtype=np.int64),
                     np.zeros((n, 2), dtype=np.float32))

    return SyntheticInputs(fit=split(n_fit, -3.0, 1.5, True), id=split(n_test, -3.0, 1.5, True),
                           ood=split(n_test, -2.0, -0.3, False))


def default_make_inputs(cls: type[Detector]) -> MakeInputs | None:
    """The kit's synthetic data for ``cls``, or ``None`` if it cannot make any.

    :func:`make_synthetic_inputs` for detectors on features and logits,
    :func:`make_layered_inputs` for those on layered features;
    :func:`make_likelihood_inputs` for language-model detectors whose ``stats_columns`` are
    columns it makes (:data:`LIKELIHOOD_COLUMNS`, then ``n_tokens``); ``None`` for other
    language-model detectors.
    """
    requires = getattr(cls, "requires", None)
    if not isinstance(requires, Requirements):
        return None
    if requires.layered:
        return make_layered_inputs
    if not requires.language_model:
        return make_synthetic_inputs
    columns = getattr(cls, "stats_columns", None)
    if _known_layout(columns):
        return functools.partial(make_likelihood_inputs, columns=columns)
    return None

