"""Split-conformal p-values and thresholds, and Benjamini–Hochberg over a batch.

Bates, Candès, Lei, Romano & Sesia, "Testing for outliers with conformal p-values", Annals of
Statistics 51(1), 2023. Scores follow ood_zoo's convention (higher = more in-distribution), so a
*low* score is evidence of an outlier.

Given ``n`` held-out ID calibration scores ``s_1..s_n`` and a test score ``s``, the conformal
p-value is

    p(s) = (1 + #{i : s_i <= s}) / (n + 1).

If the test sample is exchangeable with the calibration samples (an ID sample drawn like them),
``P(p(s) <= u) <= u`` for every ``u`` (superuniform), over the draw of both, whatever the
scores' distribution, ties included (a tie counts in the p-value's favour). With continuous
scores (no ties) ``p(s)`` is exactly uniform on ``{1, ..., n + 1} / (n + 1)``.

Rejecting when ``p(s) <= alpha`` is the same as rejecting when ``s < s_(k)``, the ``k``-th
smallest calibration score, with ``k = floor(alpha (n + 1))`` (:func:`conformal_rank`). So
``P(reject an ID sample) <= k / (n + 1) <= alpha``, with equality to ``k / (n + 1)`` (at least
``alpha - 1 / (n + 1)``) for continuous scores. The guarantee is marginal: averaged over the
calibration draw; for one fixed calibration set the false-alarm rate is ``Beta(k, n + 1 - k)``
distributed, with mean ``k / (n + 1)``.
"""

from __future__ import annotations

import torch

from .errors import InputError
from .ops.arrays import ArrayKind, ArrayLike, as_tensor

__all__ = ["benjamini_hochberg", "conformal_pvalues", "conformal_rank"]


def conformal_rank(n_calibration: int, alpha: float) -> int:
    """The order ``k`` of the calibration score a level-``alpha`` conformal test rejects below.

    ``k = #{j in 1..n : j / (n + 1) <= alpha}`` (that is ``floor(alpha (n + 1))``, capped at
    ``n``), computed with the same float64 divisions as :func:`conformal_pvalues`, so that
    ``s < s_(k)`` holds exactly when ``p(s) <= alpha``. ``0`` means no score is ever rejected
    (``alpha < 1 / (n + 1)``).
    """
    levels = torch.arange(1, n_calibration + 1, dtype=torch.float64) / (n_calibration + 1)
    return int((levels <= alpha).sum())


def conformal_pvalues(calibration_scores: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Conformal p-values ``(1 + #{i : s_i <= s}) / (n + 1)`` of ``scores``, in float64.

    Parameters
    ----------
    calibration_scores : torch.Tensor
        The ``n >= 1`` ID calibration scores, 1-D, **sorted ascending**.
    scores : torch.Tensor
        1-D test scores (higher = more ID); the result is on their device.
    """
    reference = calibration_scores.to(device=scores.device, dtype=torch.float64)
    at_most = torch.searchsorted(reference, scores.to(torch.float64).contiguous(), right=True)
    return (at_most + 1).to(torch.float64) / (reference.numel() + 1)


def benjamini_hochberg(pvalues: ArrayLike, q: float) -> ArrayLike:
    """Benjamini–Hochberg at level ``q``: which of a batch of p-values are rejected (OOD).

    Rejects the ``r`` smallest p-values, ``r`` the largest ``i`` with ``p_(i) <= q i / m`` (none
    if there is no such ``i``), over the ``m`` p-values of the batch.

    Guarantee: applied to conformal p-values of one batch computed against the same calibration
    set (:meth:`ood_zoo.api.Detector.pvalues`), the expected share of ID samples among the
    rejected ones (the false discovery rate) is at most ``q m0 / m <= q``, ``m0`` the number of
    ID samples in the batch, when those are exchangeable with the calibration samples and the
    scores have no ties: the p-values are then PRDS (Bates et al. 2023, section 3), for which
    BH controls the FDR (Benjamini & Yekutieli 2001).

    Parameters
    ----------
    pvalues : array_like
        1-D p-values in ``[0, 1]``, numpy or torch.
    q : float
        The target false discovery rate, in ``(0, 1)``.

    Returns
    -------
    array_like
        Boolean, ``True`` = rejected (declared OOD); numpy for numpy input, else a tensor on the
        input's device.
    """
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q < 1.0:
        raise InputError(f"benjamini_hochberg: q must be a number in (0, 1), got {q!r}")
    p = as_tensor(pvalues, name="benjamini_hochberg: pvalues").to(torch.float64)
    if p.dim() != 1 or p.isnan().any() or (p < 0).any() or (p > 1).any():
        raise InputError("benjamini_hochberg: pvalues must be a 1-D array of values in [0, 1]")
    m = p.numel()
    ordered = torch.sort(p).values
    passing = ordered <= q * torch.arange(1, m + 1, dtype=torch.float64, device=p.device) / m
    n_rejected = int(passing.nonzero().max()) + 1 if bool(passing.any()) else 0
    rejected = p <= ordered[n_rejected - 1] if n_rejected else torch.zeros_like(p, dtype=torch.bool)
    return ArrayKind.of(pvalues).wrap(rejected)
