"""Streaming class means, scatter matrices, covariance estimators and pseudo-inverse factors.

Shared by the ``mahalanobis``, ``relative_mahalanobis`` and ``residual`` detectors. Everything is
accumulated in float64, a chunk of rows at a time, so an ``[N, d]`` bank (a memmap included) is
read but never held twice; the largest intermediate is one ``[rows, d]`` float64 chunk plus the
``[d, d]`` scatter matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError
from .chunks import row_chunks, rows_per_chunk

COVARIANCES = ("empirical", "ledoit_wolf")


@dataclass(frozen=True)
class Moments:
    """Second and fourth moments of the residuals ``r_i = x_i - c_i`` of ``n`` rows.

    Attributes
    ----------
    n : int
        Number of rows.
    scatter : torch.Tensor
        ``Σ_i r_i r_iᵀ``, ``[d, d]`` float64.
    fourth : torch.Tensor
        ``Σ_i |r_i|⁴`` (a float64 scalar), which Ledoit–Wolf shrinkage needs.
    """

    n: int
    scatter: torch.Tensor
    fourth: torch.Tensor


def encode_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map arbitrary integer labels to ``0..C-1``: returns ``(classes [C], index [n])``."""
    classes, index = torch.unique(labels, sorted=True, return_inverse=True)
    return classes, index


def class_means(
    features: torch.Tensor, index: torch.Tensor | None, n_classes: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class counts ``[C]`` (int64) and means ``[C, d]`` (float64), in one streaming pass.

    ``index`` holds each row's class in ``0..n_classes-1``; ``None`` puts every row in one class.
    """
    n, d = features.shape
    device = features.device
    sums = torch.zeros(n_classes, d, dtype=torch.float64, device=device)
    for start, chunk in row_chunks(features, rows_per_chunk(d)):
        block = chunk.to(torch.float64)
        if index is None:
            sums[0] += block.sum(dim=0)
        else:
            sums.index_add_(0, index[start : start + block.shape[0]].to(device), block)
    if index is None:
        counts = torch.tensor([n], dtype=torch.int64, device=device)
    else:
        counts = torch.bincount(index.to(device), minlength=n_classes)
    return counts, sums / counts.clamp_min(1).unsqueeze(1).to(torch.float64)


def residual_moments(
    features: torch.Tensor,
    centerings: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
) -> list[Moments]:
    """Residual moments for several centrings, in one streaming float64 pass over the rows.

    Parameters
    ----------
    features : tensor ``[n, d]``
        Any floating dtype and storage; read ``rows_per_chunk(d)`` rows at a time.
    centerings : sequence of ``(means, index)``
        ``means`` is ``[C, d]``; row ``i`` is centred at ``means[index[i]]``, or at ``means[0]``
        when ``index`` is ``None``.

    Returns
    -------
    list of Moments
        One per centring, in order.
    """
    n, d = features.shape
    device = features.device
    centerings = [
        (means.to(device=device, dtype=torch.float64), None if index is None else index.to(device))
        for means, index in centerings
    ]
    scatters = [torch.zeros(d, d, dtype=torch.float64, device=device) for _ in centerings]
    fourths = [torch.zeros((), dtype=torch.float64, device=device) for _ in centerings]
    for start, chunk in row_chunks(features, rows_per_chunk(d)):
        block = chunk.to(torch.float64)
        for j, (means, index) in enumerate(centerings):
            if index is None:
                resid = block - means[0]
            else:
                resid = block - means[index[start : start + block.shape[0]]]
            scatters[j].addmm_(resid.T, resid)
            fourths[j] += (resid * resid).sum(dim=1).square().sum()
    return [Moments(n, s, f) for s, f in zip(scatters, fourths, strict=True)]


def ledoit_wolf_shrinkage(emp_cov: torch.Tensor, fourth: torch.Tensor, n: int) -> float:
    """The Ledoit–Wolf (2004) shrinkage intensity for centred data.

    With ``S`` the empirical covariance of ``n`` centred rows in ``p`` dimensions and the
    normalised Frobenius norm ``|A|² = tr(AAᵀ)/p``:
    ``m = tr(S)/p``, ``d² = |S - mI|²``,
    ``b̄² = (1/n²) Σ_i |x_i x_iᵀ - S|² = (Σ_i |x_i|⁴ / n - |S|_F²) / (n p)``,
    ``b² = min(b̄², d²)`` and the intensity is ``b² / d²`` (0 when ``d² = 0``).
    Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance matrices",
    J. Multivariate Analysis 88 (2004).
    """
    p = emp_cov.shape[0]
    mu = torch.diagonal(emp_cov).sum() / p
    shifted = emp_cov - mu * torch.eye(p, dtype=emp_cov.dtype, device=emp_cov.device)
    d2 = float((shifted * shifted).sum()) / p
    b2_bar = (float(fourth) / n - float((emp_cov * emp_cov).sum())) / (n * p)
    if d2 <= 0.0:
        return 0.0
    return min(max(min(b2_bar, d2), 0.0) / d2, 1.0)


def estimate_covariance(moments: Moments, method: str) -> torch.Tensor:
    """Covariance ``[d, d]`` (float64) from residual moments.

    ``"empirical"``: the maximum-likelihood ``S = scatter / n`` (scikit-learn
    ``EmpiricalCovariance``). ``"ledoit_wolf"``: ``(1 - s) S + s (tr(S)/d) I`` with the
    Ledoit–Wolf intensity ``s`` (:func:`ledoit_wolf_shrinkage`).
    """
    if method not in COVARIANCES:
        raise InputError(f"covariance must be one of {list(COVARIANCES)}, got {method!r}")
    emp_cov = moments.scatter / moments.n
    if method == "empirical":
        return emp_cov
    s = ledoit_wolf_shrinkage(emp_cov, moments.fourth, moments.n)
    p = emp_cov.shape[0]
    mu = torch.diagonal(emp_cov).sum() / p
    eye = torch.eye(p, dtype=emp_cov.dtype, device=emp_cov.device)
    return (1.0 - s) * emp_cov + s * mu * eye


def pinv_factor(cov: torch.Tensor) -> torch.Tensor:
    """``W`` (``[d, r]``, float64) with ``W Wᵀ = cov⁺``, the pseudo-inverse, via ``eigh``.

    ``W = V_r Λ_r^{-1/2}`` over the eigenvalues above ``max|λ| · d · eps(float64)``, the default
    cutoff of ``scipy.linalg.pinvh`` (which scikit-learn's ``EmpiricalCovariance`` uses). A zero
    covariance gives a single zero column (every distance is 0, as with ``pinvh(0) = 0``).
    """
    cov = cov.to(torch.float64)
    d = cov.shape[0]
    evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
    cutoff = float(evals.abs().max()) * d * torch.finfo(torch.float64).eps
    keep = evals > cutoff
    if not bool(keep.any()):
        return torch.zeros(d, 1, dtype=torch.float64, device=cov.device)
    return evecs[:, keep] * evals[keep].rsqrt()
