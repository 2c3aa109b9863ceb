"""Fitting from mergeable per-shard statistics: any engine (Ray, Dask, Spark, a loop) can fit.

The covariance detectors (``mahalanobis``, ``relative_mahalanobis``, ``residual``) fit from
class counts, means and centred moments of the fit rows, and these merge exactly. So a bank split
into shards fits in three steps, none of which needs the bank in one place:

1. per shard, ``detector.partial_statistics(features, labels)`` (a :class:`ClassStatistics`,
   one streaming float64 pass) and the shard's rows among :func:`threshold_rows_per_shard`;
2. :meth:`ClassStatistics.merge` them, in any order or tree;
3. ``detector.fit_statistics(merged, threshold_features)``, the sampled rows in shard order.

The fitted detector equals ``detector.fit(whole_bank, labels)`` to float64 rounding, its default
threshold included: the rows that place it are the very rows ``fit`` would score
(:func:`ood_zoo.api.threshold_rows` of the whole bank). :func:`fit_shards` runs the three steps
in this process; ``ood_zoo_ray.fitting.fit`` runs step 1 as Ray tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Self

import numpy as np
import torch

from ..api import Detector, threshold_rows, threshold_sample_rows
from ..errors import InputError
from ..ops.arrays import ArrayLike, as_tensor, check_labels, check_matrix
from ..ops.streaming import bank_rows
from ._covariance import Moments
from .chunks import row_chunks, rows_per_chunk


@dataclass(frozen=True)
class ClassStatistics:
    """Per-class counts, means and centred moments of a set of rows, all float64; mergeable.

    With ``r_i = x_i - μ_c`` the residual of row ``i`` of class ``c`` about its class mean:

    Attributes
    ----------
    classes : torch.Tensor
        ``[C]`` int64 class labels, ascending (``[0]`` for rows fitted without labels).
    counts : torch.Tensor
        ``[C]`` int64 ``n_c >= 1``.
    means : torch.Tensor
        ``[C, d]`` ``μ_c``.
    scatter : torch.Tensor
        ``[d, d]`` pooled within-class scatter ``Σ_c Σ_{i∈c} r_i r_iᵀ``.
    class_scatters, third, fourth : torch.Tensor or None
        With ``higher_moments``: ``[C, d, d]`` ``M2_c = Σ_{i∈c} r_i r_iᵀ``, ``[C, d]``
        ``T_c = Σ_{i∈c} |r_i|² r_i`` and ``[C]`` ``F_c = Σ_{i∈c} |r_i|⁴``. The fourth moment
        about a merged mean (and so Ledoit–Wolf shrinkage) needs each class's own scatter (its
        term ``e_cᵀ M2_c e_c``, see :meth:`merge`), while the pooled scatter merges from the
        counts and means alone; so these ``C d²`` float64 values are kept only where asked
        for, ``None`` otherwise.
    """

    classes: torch.Tensor
    counts: torch.Tensor
    means: torch.Tensor
    scatter: torch.Tensor
    class_scatters: torch.Tensor | None = None
    third: torch.Tensor | None = None
    fourth: torch.Tensor | None = None

    @property
    def n_rows(self) -> int:
        return int(self.counts.sum())

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def higher_moments(self) -> bool:
        return self.fourth is not None

    @classmethod
    def from_features(
        cls, features: ArrayLike, labels: ArrayLike | None = None, *,
        higher_moments: bool = False,
    ) -> ClassStatistics:
        """The statistics of ``features`` ``[n, d]`` (any floating dtype, a memmap included).

        One pass in float64 row chunks of :func:`~.chunks.rows_per_chunk` rows: each chunk's
        statistics (two-pass within the chunk) are merged into the running ones
        (:meth:`merge`). ``labels`` are any integers (``None``: one class, label 0).

        Raises
        ------
        InputError
            For non-finite or empty features, or labels of the wrong length or kind.
        """
        x = check_matrix(features, name="features")
        y = None if labels is None else check_labels(labels, n_samples=x.shape[0])
        return _stream_statistics(x, y, higher_moments)

    def merge(self, other: ClassStatistics) -> ClassStatistics:
        """The statistics of both sets of rows, exactly (Chan, Golub & LeVeque 1979, extended).

        Per class, with ``n = n_a + n_b``, ``δ = μ_b - μ_a``, the merged mean
        ``μ = μ_a + δ n_b / n`` and each side's offset ``e_s = μ_s - μ`` (``e_a = -δ n_b / n``,
        ``e_b = δ n_a / n``): ``M2 = M2_a + M2_b + δδᵀ n_a n_b / n`` (pooled: summed over the
        classes), and the moments about ``μ`` of side ``s``'s rows, ``x - μ = r + e_s`` with
        ``Σ r = 0``, expand exactly as

        ``T = Σ_s T_s + 2 M2_s e_s + tr(M2_s) e_s + n_s |e_s|² e_s``,
        ``F = Σ_s F_s + 4 e_sᵀ T_s + 4 e_sᵀ M2_s e_s + 2 |e_s|² tr(M2_s) + n_s |e_s|⁴``

        (from ``|r + e|⁴ = (|r|² + 2 rᵀe + |e|²)²``; the terms odd in ``r`` with constant
        coefficients sum to 0). A class only one side has passes through unchanged.

        Raises
        ------
        InputError
            If the feature widths differ, or one side keeps the higher moments and the other not.
        """
        if other.n_features != self.n_features:
            raise InputError(
                f"statistics: cannot merge {self.n_features}- and {other.n_features}-feature "
                "statistics"
            )
        if other.higher_moments != self.higher_moments:
            raise InputError(
                "statistics: cannot merge statistics with the higher moments (Ledoit–Wolf) and "
                "statistics without; compute every shard's with the same detector"
            )
        device = self.means.device
        classes = torch.unique(torch.cat([self.classes, other.classes.to(device)]), sorted=True)
        a, b = self._on_classes(classes), other._on_classes(classes)
        n_a, n_b = a.counts.to(torch.float64), b.counts.to(torch.float64)
        n = n_a + n_b
        delta = b.means - a.means
        means = a.means + delta * (n_b / n).unsqueeze(1)
        weight = n_a * n_b / n
        scatter = a.scatter + b.scatter + delta.T @ (delta * weight.unsqueeze(1))
        if not self.higher_moments:
            return ClassStatistics(classes, a.counts + b.counts, means, scatter)
        class_scatters = (a.class_scatters + b.class_scatters
                          + torch.einsum("c,ci,cj->cij", weight, delta, delta))
        third_a, fourth_a = a._moments_about(means)
        third_b, fourth_b = b._moments_about(means)
        return ClassStatistics(classes, a.counts + b.counts, means, scatter, class_scatters,
                               third_a + third_b, fourth_a + fourth_b)

    @classmethod
    def merge_all(cls, statistics: Iterable[ClassStatistics]) -> ClassStatistics:
        """Merge any number of statistics in a balanced pairwise tree."""
        level = list(statistics)
        if not level:
            raise InputError("statistics: nothing to merge")
        while len(level) > 1:
            pairs = [level[i].merge(level[i + 1]) for i in range(0, len(level) - 1, 2)]
            level = pairs + level[len(level) - len(level) % 2 :]
        return level[0]

    def pooled(self) -> ClassStatistics:
        """All rows as one class (label 0) about their overall mean ``μ = Σ_c n_c μ_c / n``.

        Each class's moments move to ``μ`` by the offset ``e_c = μ_c - μ`` as in :meth:`merge`:
        the scatter becomes ``Σ_c M2_c + n_c e_c e_cᵀ`` (within plus between classes).
        """
        counts = self.counts.to(torch.float64)
        n = self.n_rows
        mean = (counts.unsqueeze(1) * self.means).sum(dim=0) / n
        offsets = self.means - mean
        scatter = self.scatter + offsets.T @ (offsets * counts.unsqueeze(1))
        one = torch.zeros(1, dtype=torch.int64, device=self.classes.device)
        total = torch.tensor([n], dtype=torch.int64, device=self.counts.device)
        if not self.higher_moments:
            return ClassStatistics(one, total, mean.unsqueeze(0), scatter)
        third, fourth = self._moments_about(mean.expand_as(self.means))
        return ClassStatistics(one, total, mean.unsqueeze(0), scatter, scatter.unsqueeze(0),
                               third.sum(dim=0, keepdim=True), fourth.sum(dim=0, keepdim=True))

    def moments(self) -> Moments:
        """The pooled within-class :class:`~._covariance.Moments` (``Σ_c F_c`` as the fourth;
        NaN without the higher moments)."""
        fourth = (self.fourth.sum() if self.higher_moments
                  else torch.tensor(float("nan"), dtype=torch.float64))
        return Moments(self.n_rows, self.scatter, fourth)

    def _on_classes(self, classes: torch.Tensor) -> ClassStatistics:
        """These statistics over the superset ``classes``, zeros for the classes not here."""
        if torch.equal(classes, self.classes):
            return self
        slots = torch.searchsorted(classes, self.classes)

        def spread(values: torch.Tensor | None) -> torch.Tensor | None:
            if values is None:
                return None
            out = values.new_zeros((classes.numel(), *values.shape[1:]))
            out[slots] = values
            return out

        return ClassStatistics(classes, spread(self.counts), spread(self.means), self.scatter,
                               spread(self.class_scatters), spread(self.third),
                               spread(self.fourth))

    def _moments_about(self, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per class, ``(T, F)`` of the class's rows about ``centres[c]``: the expansion of
        :meth:`merge` with the offsets ``e_c = μ_c - centres[c]``."""
        counts = self.counts.to(torch.float64)
        offsets = self.means - centres
        m2e = torch.einsum("cij,cj->ci", self.class_scatters, offsets)
        trace = torch.diagonal(self.class_scatters, dim1=1, dim2=2).sum(dim=1)
        squared = offsets.square().sum(dim=1)
        third = (self.third + 2.0 * m2e + (trace + counts * squared).unsqueeze(1) * offsets)
        fourth = (self.fourth + 4.0 * (offsets * self.third).sum(dim=1)
                  + 4.0 * (offsets * m2e).sum(dim=1) + 2.0 * squared * trace
                  + counts * squared.square())
        return third, fourth


def _stream_statistics(
    features: torch.Tensor, labels: torch.Tensor | None, higher_moments: bool,
) -> ClassStatistics:
    """:meth:`ClassStatistics.from_features` on validated inputs."""
    total = None
    for start, chunk in row_chunks(features, rows_per_chunk(features.shape[1])):
        block = chunk.to(torch.float64)
        chunk_labels = (
            torch.zeros(block.shape[0], dtype=torch.int64) if labels is None
            else labels[start : start + block.shape[0]]
        )
        part = _chunk_statistics(block, chunk_labels.to(block.device), higher_moments)
        total = part if total is None else total.merge(part)
    return total


def _chunk_statistics(
    block: torch.Tensor, labels: torch.Tensor, higher_moments: bool,
) -> ClassStatistics:
    """The statistics of one float64 chunk, directly: means first, then moments about them."""
    classes, index = torch.unique(labels, sorted=True, return_inverse=True)
    n_classes = classes.numel()
    counts = torch.bincount(index, minlength=n_classes)
    sums = block.new_zeros(n_classes, block.shape[1]).index_add_(0, index, block)
    means = sums / counts.unsqueeze(1).to(torch.float64)
    resid = block - means[index]
    if not higher_moments:
        return ClassStatistics(classes, counts, means, resid.T @ resid)
    class_scatters = torch.stack([resid[index == c].T @ resid[index == c]
                                  for c in range(n_classes)])
    squared = resid.square().sum(dim=1)
    third = block.new_zeros(n_classes, block.shape[1]).index_add_(
        0, index, resid * squared.unsqueeze(1))
    fourth = block.new_zeros(n_classes).index_add_(0, index, squared.square())
    return ClassStatistics(classes, counts, means, class_scatters.sum(dim=0), class_scatters,
                           third, fourth)


class StatisticsDetector(Detector):
    """A detector whose fit is a function of the :class:`ClassStatistics` of its fit rows.

    Subclasses implement :meth:`_fit_statistics` (and override :meth:`higher_moments_needed`
    where their estimator reads the fourth moments); the base class validates as :meth:`fit`
    does and places the default threshold.
    """

    def higher_moments_needed(self) -> bool:
        """Whether the fit reads the fourth moments (Ledoit–Wolf shrinkage does)."""
        return False

    def _fit_statistics(self, statistics: ClassStatistics) -> None:
        """Set the fitted state from the statistics of every fit row."""
        raise NotImplementedError

    def partial_statistics(
        self, features: ArrayLike, labels: ArrayLike | None = None,
    ) -> ClassStatistics:
        """The statistics of one shard of the fit rows, validated as :meth:`fit` validates.

        Labels are required when the detector fits with labels, and ignored otherwise.
        """
        x, y, _ = self._check_inputs(features, labels, None, fitting=True)
        return _stream_statistics(x, y, self.higher_moments_needed())

    def fit_statistics(
        self, statistics: ClassStatistics | Iterable[ClassStatistics],
        threshold_features: ArrayLike | None = None,
    ) -> Self:
        """Fit from the statistics of every fit row (one record, or shards' to merge).

        ``threshold_features`` are the fit rows :func:`ood_zoo.api.threshold_rows` picks for
        the whole bank, in bank order (:func:`threshold_rows_per_shard` says which rows of each
        shard); the default threshold is placed on their scores, as :meth:`fit` places it.
        ``None`` leaves ``threshold_`` unset (place it with :meth:`calibrate`).

        Raises
        ------
        InputError
            If the statistics lack the fourth moments the estimator needs, or the threshold
            rows are not as many as :func:`~ood_zoo.api.threshold_sample_rows` or of another width.
        """
        stats = (statistics if isinstance(statistics, ClassStatistics)
                 else ClassStatistics.merge_all(statistics))
        if self.higher_moments_needed() and not stats.higher_moments:
            raise InputError(
                f"{self.name}: these statistics lack the fourth moments its estimator needs; "
                "compute them with this detector's partial_statistics"
            )
        sample = None
        if threshold_features is not None:
            sample = check_matrix(threshold_features, name="threshold_features",
                                  n_features=stats.n_features)
            want = threshold_sample_rows(stats.n_rows, self.target_tpr)
            if sample.shape[0] != want:
                raise InputError(
                    f"{self.name}: threshold_features has {sample.shape[0]} rows, but a bank of "
                    f"{stats.n_rows} rows places the threshold on {want} "
                    "(threshold_rows_per_shard says which)"
                )
        self._fit_statistics(stats)
        self._finish_fit(stats.n_features, None,
                         lambda: None if sample is None else self._score(sample, None))
        return self


def threshold_rows_per_shard(shard_rows: Sequence[int], tpr: float) -> list[torch.Tensor]:
    """Per shard, the local indices of its rows among :func:`ood_zoo.api.threshold_rows`.

    ``shard_rows`` are the shards' row counts, in bank order; the rows of shard ``s`` are
    ``threshold_rows(N, tpr)`` that fall in ``[o_s, o_s + n_s)``, minus ``o_s``.
    """
    bounds = np.cumsum([0, *shard_rows])
    rows = threshold_rows(int(bounds[-1]), tpr)
    return [rows[(rows >= lo) & (rows < hi)] - int(lo)
            for lo, hi in pairwise(bounds)]


def fit_shards(
    detector: StatisticsDetector, shards: Sequence[ArrayLike],
    labels: Sequence[ArrayLike] | None = None,
) -> StatisticsDetector:
    """Fit ``detector`` on the bank formed by ``shards`` (in order), one shard at a time.

    The in-process driver of the module's three steps: the statistics of each shard merged
    sequentially, then :meth:`StatisticsDetector.fit_statistics`. Equal to
    ``detector.fit(concatenated shards, concatenated labels)`` to float64 rounding.

    Raises
    ------
    InputError
        If there are no shards, or ``labels`` is not one array per shard.
    """
    if not shards:
        raise InputError(f"{detector.name}: no shards given")
    if labels is not None and len(labels) != len(shards):
        raise InputError(
            f"{detector.name}: {len(labels)} label arrays for {len(shards)} shards"
        )
    sizes = [int(shard.shape[0]) for shard in shards]
    wanted = threshold_rows_per_shard(sizes, detector.target_tpr)
    total, sample = None, []
    for i, (shard, rows) in enumerate(zip(shards, wanted, strict=True)):
        part = detector.partial_statistics(shard, None if labels is None else labels[i])
        total = part if total is None else total.merge(part)
        sample.append(bank_rows([as_tensor(shard, name="features")], rows))
    return detector.fit_statistics(total, torch.cat(sample))
