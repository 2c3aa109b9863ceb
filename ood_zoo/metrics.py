"""Evaluation metrics for OOD detection: AUROC, FPR at a fixed TPR, AUPR-In/Out, detection error.

Score convention: a **higher score means more in-distribution**, and by default in-distribution
(ID) samples are the positive class (``positive="id"``). ``TPR(t) = mean(id_scores >= t)`` is the
ID acceptance rate at threshold ``t`` and ``FPR(t) = mean(ood_scores >= t)`` the OOD acceptance
rate, so FPR95 is the share of OOD accepted at 95% ID recall.

``positive="ood"`` takes the convention of OpenOOD v1.5 (``openood/evaluators/metrics.py``,
``compute_all_metrics``) and pytorch-ood (``pytorch_ood.metrics.OODMetrics``) on the same scores:
OOD is the positive class of the outlier score ``-score``, FPR95 is the share of ID flagged as
OOD at the first threshold that catches 95% of OOD, and AUPR-In (ID positive) and AUPR-Out (OOD
positive, ``-score``) are trapezoidal areas under ``sklearn.metrics.precision_recall_curve``.
AUROC and the detection error are the same number in both conventions.

Inputs may be numpy arrays, torch tensors (any device, any floating dtype including fp16/bf16) or
lists; they must be 1-D, non-empty and finite. Everything is computed in float64 numpy on the CPU
and returned as plain Python floats (fractions, not percent).

These are the metrics reported by Liu et al., "How Good Are LLMs at Out-of-Distribution
Detection?" (LREC-COLING 2024), following Hendrycks & Gimpel (2017).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import numpy as np
import torch

from .errors import InputError

__all__ = [
    "METRIC_NAMES",
    "POSITIVE_CLASSES",
    "aupr_in",
    "aupr_out",
    "auroc",
    "convention",
    "detection_error",
    "evaluate",
    "format_table",
    "fpr_at_tpr",
    "roc_curve",
]

ScoresLike: TypeAlias = np.ndarray | torch.Tensor | Sequence[float]

#: The keys of :func:`evaluate`'s result, in order.
METRIC_NAMES: Final = ("auroc", "fpr95", "aupr_in", "aupr_out", "detection_error")
#: The values of ``positive``: ood_zoo's own convention first (the default), then the one of
#: OpenOOD v1.5 and pytorch-ood.
POSITIVE_CLASSES: Final = ("id", "ood")


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _as_scores(scores: ScoresLike, *, name: str) -> np.ndarray:
    """Return ``scores`` as a 1-D, non-empty, finite float64 numpy array on the CPU."""
    if isinstance(scores, torch.Tensor):
        if scores.is_complex():
            raise InputError(f"{name}: expected real scores, got dtype {scores.dtype}")
        array = scores.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        try:
            raw = np.asarray(scores)
        except (TypeError, ValueError) as exc:  # e.g. ragged nested lists
            raise InputError(f"{name}: cannot be read as an array of numbers ({exc})") from exc
        if raw.dtype.kind not in "biuf":
            raise InputError(f"{name}: expected real numbers, got dtype {raw.dtype}")
        array = raw.astype(np.float64, copy=False)
    if array.ndim != 1:
        raise InputError(
            f"{name}: expected a 1-D array of scores, got {array.ndim}-D with shape "
            f"{tuple(array.shape)}"
        )
    if array.size == 0:
        raise InputError(f"{name}: is empty; at least one score is needed")
    finite = np.isfinite(array)
    if not finite.all():
        first = int(np.argmin(finite))
        kind = "NaN" if np.isnan(array[first]) else "Inf"
        raise InputError(f"{name}: contains {kind} (first at index {first})")
    return array


def _as_pair(id_scores: ScoresLike, ood_scores: ScoresLike) -> tuple[np.ndarray, np.ndarray]:
    return _as_scores(id_scores, name="id_scores"), _as_scores(ood_scores, name="ood_scores")


def _check_tpr(tpr: float) -> float:
    """Return ``tpr`` as a float after checking that it lies in (0, 1]."""
    try:
        value = float(tpr)
    except (TypeError, ValueError) as exc:
        raise InputError(f"tpr: expected a number in (0, 1], got {tpr!r}") from exc
    if not 0.0 < value <= 1.0:  # also rejects NaN
        raise InputError(f"tpr: must lie in (0, 1], got {tpr!r}")
    return value


def _check_positive(positive: str) -> str:
    if positive not in POSITIVE_CLASSES:
        raise InputError(
            f"positive: expected 'id' (ood_zoo's convention) or 'ood' (OpenOOD v1.5 and "
            f"pytorch-ood), got {positive!r}"
        )
    return positive


# --------------------------------------------------------------------------------------------
# Core computations (arrays already validated)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Counts:
    """ID and OOD counts at every distinct pooled score, from one sort of the scores.

    ``thresholds`` holds the distinct pooled scores in descending order; ``tp[i]`` and ``fp[i]``
    (int64) are the numbers of ID and OOD scores ``>= thresholds[i]``.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_id: int
    n_ood: int

    @classmethod
    def of(cls, id_scores: np.ndarray, ood_scores: np.ndarray) -> _Counts:
        pooled = np.concatenate([np.sort(id_scores), np.sort(ood_scores)])
        # A stable sort of two sorted runs is a linear-time merge; the first id_scores.size
        # positions of ``pooled`` are the ID scores.
        order = np.argsort(pooled, kind="stable")[::-1]
        values = pooled[order]
        # The last index of every run of equal scores: counts are read off only there, so that
        # tied samples enter together.
        ends = np.append(np.flatnonzero(values[1:] != values[:-1]), values.size - 1)
        tp = np.cumsum(order < id_scores.size, dtype=np.int64)[ends]
        return cls(values[ends], tp, ends + 1 - tp, id_scores.size, ood_scores.size)

    def roc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fpr = np.concatenate([[0.0], self.fp / self.n_ood])
        tpr = np.concatenate([[0.0], self.tp / self.n_id])
        return fpr, tpr, np.concatenate([[np.inf], self.thresholds])

    def auroc(self) -> float:
        n_id, n_ood = self.n_id, self.n_ood
        id_in_group = np.diff(self.tp, prepend=0)
        group_size = id_in_group + np.diff(self.fp, prepend=0)
        # A group of g tied scores with b pooled scores below it holds ranks b + 1 .. b + g
        # (1-based, ascending), average (2b + g + 1) / 2; twice that is an integer, so the rank
        # sum is exact in int64.
        below = n_id + n_ood - (self.tp + self.fp)
        twice_rank_sum = int(np.sum(id_in_group * (2 * below + group_size + 1)))
        twice_u = twice_rank_sum - n_id * (n_id + 1)
        return twice_u / (2 * n_id * n_ood)

    def aupr_in(self) -> float:
        recall_steps = np.diff(self.tp, prepend=0)
        precision = self.tp / (self.tp + self.fp)
        return float(np.sum(recall_steps * precision) / self.n_id)

    def at_or_below(self) -> tuple[np.ndarray, np.ndarray]:
        """OOD and ID counts of the scores ``<= thresholds[i]``.

        With OOD positive and the scores negated, the threshold ``-t`` accepts the scores
        ``<= t``: the totals less the counts ``>=`` the next larger distinct score.
        """
        ood_le = self.n_ood - np.concatenate([[0], self.fp[:-1]])
        id_le = self.n_id - np.concatenate([[0], self.tp[:-1]])
        return ood_le, id_le

    def aupr_out(self) -> float:
        # Descending -t is ascending t: recall grows by the OOD scores equal to thresholds[i].
        ood_le, id_le = self.at_or_below()
        recall_steps = np.diff(self.fp, prepend=0)
        precision = ood_le / (ood_le + id_le)
        return float(np.sum(recall_steps * precision) / self.n_ood)

    def trapezoid_aupr_in(self) -> float:
        return _trapezoid_aupr(self.tp, self.fp)

    def trapezoid_aupr_out(self) -> float:
        ood_le, id_le = self.at_or_below()
        return _trapezoid_aupr(ood_le[::-1], id_le[::-1])

    def detection_error(self) -> float:
        fpr, tpr, _ = self.roc()
        return float(np.min(0.5 * (1.0 - tpr) + 0.5 * fpr))


def _trapezoid_aupr(tp: np.ndarray, fp: np.ndarray) -> float:
    """Trapezoidal area under the precision-recall curve of the cumulative counts ``tp``, ``fp``
    at descending thresholds, starting at (recall 0, precision 1): ``sklearn.metrics.auc`` of
    ``sklearn.metrics.precision_recall_curve``, as OpenOOD v1.5 and pytorch-ood compute AUPR."""
    recall = np.concatenate([[0.0], tp / tp[-1]])
    precision = np.concatenate([[1.0], tp / (tp + fp)])
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1])) / 2)


def _min_count(tpr: float, n: int) -> int:
    """The smallest ``k`` in ``1..n`` with ``k / n >= tpr`` (in float64 arithmetic)."""
    k = min(max(math.ceil(tpr * n), 1), n)
    # tpr * n may be off by an ulp (0.07 * 100 == 7.000000000000001); these loops correct that
    # and run at most a step or two, independent of n.
    while k > 1 and (k - 1) / n >= tpr:
        k -= 1
    while k < n and k / n < tpr:
        k += 1
    return k


def _fpr_at_tpr(positives: np.ndarray, negatives: np.ndarray, tpr: float) -> float:
    """Share of ``negatives >= t*`` at the largest ``t*`` with ``mean(positives >= t*) >= tpr``."""
    k = _min_count(tpr, positives.size)
    # The k-th largest positive score: at least k positives are >= it, fewer than k are >=
    # anything larger, so it is the largest threshold with TPR >= tpr.
    threshold = np.partition(positives, positives.size - k)[positives.size - k]
    return np.count_nonzero(negatives >= threshold) / negatives.size


def _fpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float, positive: str) -> float:
    if positive == "id":
        return _fpr_at_tpr(id_scores, ood_scores, tpr)
    # OOD positive on the outlier score -score: the first threshold (descending -score) whose
    # OOD recall reaches tpr, and the share of ID flagged there.
    return _fpr_at_tpr(-ood_scores, -id_scores, tpr)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def auroc(id_scores: ScoresLike, ood_scores: ScoresLike) -> float:
    """Area under the ROC curve, ID positive.

    ``AUROC = P(s_id > s_ood) + 0.5 * P(s_id == s_ood)`` over independent random draws, i.e. the
    Mann–Whitney statistic ``U / (n_id * n_ood)`` with ``U = R_id - n_id (n_id + 1) / 2``, where
    ``R_id`` is the sum of the ID samples' ranks in the pooled scores (tied scores share their
    average rank). ``O(n log n)``. Equals ``sklearn.metrics.roc_auc_score`` with ID labelled 1,
    and, as the statistic is symmetric, the OOD-positive AUROC of the outlier score ``-score``
    (OpenOOD v1.5, pytorch-ood): one number in both conventions.
    """
    return _Counts.of(*_as_pair(id_scores, ood_scores)).auroc()


def aupr_in(id_scores: ScoresLike, ood_scores: ScoresLike, *, positive: str = "id") -> float:
    """Area under the precision-recall curve with ID as the positive class, the scores as they are.

    ``positive="id"``: average precision, ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct
    thresholds in descending order, with precision ``P_k`` and recall ``R_k`` at threshold ``k``
    (step-wise, no interpolation); equals ``sklearn.metrics.average_precision_score(y, s)`` with
    ID labelled 1, ties included. ``positive="ood"``: OpenOOD v1.5's and pytorch-ood's AUPR-In,
    the trapezoidal ``sklearn.metrics.auc(recall, precision)`` of
    ``precision_recall_curve(y, s)``, which starts at (recall 0, precision 1). ID is the positive
    class of AUPR-In in both conventions; ``positive`` picks the rule.

    Raises
    ------
    InputError
        (a ``ValueError``) if ``positive`` is not ``"id"`` or ``"ood"`` or the scores are invalid.
    """
    counts = _Counts.of(*_as_pair(id_scores, ood_scores))
    return counts.aupr_in() if _check_positive(positive) == "id" else counts.trapezoid_aupr_in()


def aupr_out(id_scores: ScoresLike, ood_scores: ScoresLike, *, positive: str = "id") -> float:
    """Area under the precision-recall curve with OOD as the positive class, the scores negated.

    Same rules as :func:`aupr_in`: average precision, ``average_precision_score(1 - y, -s)``, for
    ``positive="id"``; the trapezoidal area of ``precision_recall_curve(1 - y, -s)`` (OpenOOD
    v1.5, pytorch-ood) for ``positive="ood"``.
    """
    counts = _Counts.of(*_as_pair(id_scores, ood_scores))
    return counts.aupr_out() if _check_positive(positive) == "id" else counts.trapezoid_aupr_out()


def fpr_at_tpr(
    id_scores: ScoresLike, ood_scores: ScoresLike, tpr: float = 0.95, *, positive: str = "id"
) -> float:
    """False positive rate at the threshold that keeps a fraction ``tpr`` of the positive class.

    ``positive="id"`` (ood_zoo's FPR95): the OOD acceptance rate at ID recall ``tpr``. The
    threshold is ``t* = max{t : mean(id_scores >= t) >= tpr}`` (the ``ceil(tpr * n_id)``-th
    largest ID score) and the result is ``mean(ood_scores >= t*)``. Ties at ``t*`` are accepted
    on both sides.

    ``positive="ood"`` (the FPR@95 of OpenOOD v1.5 and pytorch-ood): the share of ID samples
    flagged as OOD when a fraction ``tpr`` of OOD is caught. The threshold is
    ``t* = min{t : mean(ood_scores <= t) >= tpr}`` (the ``ceil(tpr * n_ood)``-th smallest OOD
    score) and the result is ``mean(id_scores <= t*)``: the false positive rate at the first point
    of the OOD-positive ROC curve of ``-score`` with a true positive rate ``>= tpr``.

    Notes
    -----
    Hendrycks' ``fpr_and_fdr_at_recall`` (used by Liu et al., 2024) instead picks the ROC point
    whose recall is *closest* to ``tpr``, which may lie below it; on small or heavily tied score
    sets the two rules can give different numbers. This rule never goes below the target recall.
    OpenOOD reads the point off ``sklearn.metrics.roc_curve`` with its default
    ``drop_intermediate=True``, which drops collinear points; its FPR@95 is therefore larger than
    pytorch-ood's and this one's where ID and OOD scores tie at ``t*`` and at the next larger
    score in the same numbers (e.g. every score shared by one ID and one OOD sample: 1.0 instead
    of 0.95). Without such ties the three agree exactly.

    Raises
    ------
    InputError
        (a ``ValueError``) if ``tpr`` is not in ``(0, 1]``, ``positive`` is not ``"id"`` or
        ``"ood"``, or the scores are invalid.
    """
    tpr = _check_tpr(tpr)
    return _fpr(*_as_pair(id_scores, ood_scores), tpr, _check_positive(positive))


def detection_error(id_scores: ScoresLike, ood_scores: ScoresLike) -> float:
    """Minimum misclassification rate at equal class priors.

    ``min_t 0.5 * (1 - TPR(t)) + 0.5 * FPR(t)`` with ``TPR(t) = mean(id >= t)`` and
    ``FPR(t) = mean(ood >= t)``, over every distinct score ``t`` and ``t = +inf`` (accept nothing).
    Symmetric in the two classes, so the same in both conventions.
    """
    return _Counts.of(*_as_pair(id_scores, ood_scores)).detection_error()


def roc_curve(
    id_scores: ScoresLike, ood_scores: ScoresLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve, ID positive: ``(fpr, tpr, thresholds)`` as float64 numpy arrays.

    ``thresholds`` is ``+inf`` followed by every distinct pooled score in descending order, and
    ``fpr[i] = mean(ood >= thresholds[i])``, ``tpr[i] = mean(id >= thresholds[i])``; the curve
    therefore starts at ``(0, 0)`` and ends at ``(1, 1)``. No point is dropped.
    """
    return _Counts.of(*_as_pair(id_scores, ood_scores)).roc()


def evaluate(
    id_scores: ScoresLike, ood_scores: ScoresLike, *, tpr: float = 0.95, positive: str = "id"
) -> dict[str, float]:
    """Every metric at once, keyed by :data:`METRIC_NAMES`.

    Parameters
    ----------
    id_scores, ood_scores
        Scores, higher = more in-distribution, in either convention.
    tpr
        Recall of the positive class for ``fpr95``.
    positive
        ``"id"`` (default, ood_zoo's convention) or ``"ood"``: the definitions of OpenOOD v1.5's
        ``compute_all_metrics`` and pytorch-ood's ``OODMetrics`` (see :func:`fpr_at_tpr`,
        :func:`aupr_in`); :func:`convention` says which in one line.

    Returns
    -------
    dict[str, float]
        ``auroc`` (:func:`auroc`), ``fpr95`` (:func:`fpr_at_tpr` at ``tpr``; the key keeps its
        name whatever ``tpr`` is), ``aupr_in``, ``aupr_out`` and ``detection_error``, as plain
        Python floats in ``[0, 1]``. ``auroc`` and ``detection_error`` do not depend on
        ``positive``.

    Raises
    ------
    InputError
        (a ``ValueError``) naming the argument that is empty, not 1-D, or holds NaN/Inf, or if
        ``tpr`` is not in ``(0, 1]`` or ``positive`` is not ``"id"`` or ``"ood"``.
    """
    tpr = _check_tpr(tpr)
    positive = _check_positive(positive)
    id_array, ood_array = _as_pair(id_scores, ood_scores)
    counts = _Counts.of(id_array, ood_array)
    by_id = positive == "id"
    return {
        "auroc": float(counts.auroc()),
        "fpr95": float(_fpr(id_array, ood_array, tpr, positive)),
        "aupr_in": float(counts.aupr_in() if by_id else counts.trapezoid_aupr_in()),
        "aupr_out": float(counts.aupr_out() if by_id else counts.trapezoid_aupr_out()),
        "detection_error": float(counts.detection_error()),
    }


def convention(positive: str = "id", *, tpr: float = 0.95) -> str:
    """The metric convention in one sentence, for the header of a table, CSV or report.

    It names the positive class and what FPR95 (at ``tpr``) and AUPR-In/Out mean in it, e.g.
    ``"Metric convention: ID positive (ood_zoo), higher score = more ID; FPR95 = share of OOD
    accepted at 95% ID recall; AUPR-In/Out = average precision."``
    """
    tpr = _check_tpr(tpr)
    percent = f"{100 * tpr:g}%"
    if _check_positive(positive) == "id":
        return (f"Metric convention: ID positive (ood_zoo), higher score = more ID; FPR95 = "
                f"share of OOD accepted at {percent} ID recall; AUPR-In/Out = average precision.")
    return (f"Metric convention: OOD positive (OpenOOD v1.5, pytorch-ood), outlier score = "
            f"-score; FPR95 = share of ID flagged OOD at {percent} OOD recall; AUPR-In/Out = "
            f"trapezoidal area under the PR curve.")


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _format_cell(value: object) -> str:
    if value is None:
        return "-"
    if _is_number(value) and not isinstance(value, numbers.Integral):
        return f"{float(value):.4f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """Render ``rows`` as a fixed-width text table, one line per row under a header.

    Parameters
    ----------
    rows
        One mapping per table row, e.g. ``{"detector": "cosine", **evaluate(...)}``.
    columns
        The columns, in order. ``None`` uses every key of ``rows`` in first-seen order.

    Returns
    -------
    str
        Header, a dashed rule and the rows, joined by newlines (no trailing newline). Floats are
        shown to 4 decimals and integers as is, both right-aligned; other values (strings) as
        ``str(value)``, left-aligned; a missing key or ``None`` as ``-``. Columns are separated
        by two spaces and padded to their widest cell.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = [str(column) for column in columns]
    if not columns:
        return ""
    cells = [[_format_cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max([len(column)] + [len(line[j]) for line in cells]) for j, column in enumerate(columns)
    ]
    right = [
        all(_is_number(row.get(column)) or row.get(column) is None for row in rows)
        and any(_is_number(row.get(column)) for row in rows)
        for column in columns
    ]

    def render(line: Sequence[str]) -> str:
        padded = (
            text.rjust(width) if align_right else text.ljust(width)
            for text, width, align_right in zip(line, widths, right, strict=True)
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(columns), rule, *(render(line) for line in cells)])
