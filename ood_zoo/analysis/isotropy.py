"""Isotropy measures of an embedding matrix ``X`` (``[n, d]``: ``n`` vectors in ``d`` dimensions).

An embedding space is *isotropic* when its vectors spread evenly over all directions, and
*anisotropic* when they crowd into a narrow cone or a few dominant directions. Liu et al., "How
Good Are LLMs at Out-of-Distribution Detection?" (LREC-COLING 2024) explain the strength of the
cosine detector on LLM features by the isotropy of LLM embedding spaces, against the anisotropy
of BERT-family encoders. Each measure here quantifies that claim in a different way:

=========================  ========================  ===================  =====================
measure                    isotropic                 anisotropic          invariant to
=========================  ========================  ===================  =====================
:func:`average_cosine`     ≈ 0                       → 1 (a narrow cone)  rotation, scale
:func:`partition_isotropy` 1                         → 0                  rotation
:func:`isoscore`           1                         0 (one direction)    rotation, scale, shift
:func:`top_pc_variance`    ``k / d``                 → 1                  rotation, scale, shift
=========================  ========================  ===================  =====================

Inputs may be numpy arrays or torch tensors (any device) of any floating dtype, fp16 and bf16
included; every measure is computed in float64 on the CPU and returned as a Python float.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..ops.arrays import check_matrix

__all__ = [
    "MEASURES",
    "average_cosine",
    "isoscore",
    "isotropy_measures",
    "partition_isotropy",
    "top_pc_variance",
]

#: The keys of :func:`isotropy_measures`, each with the direction that means "more isotropic".
MEASURES: dict[str, str] = {
    "average_cosine": "lower",
    "partition_isotropy": "higher",
    "log_partition_isotropy": "higher",
    "isoscore": "higher",
    "top1_variance": "lower",
    "top10_variance": "lower",
}

#: Total variance below this fraction of the mean squared norm counts as zero (identical rows).
_ZERO_VARIANCE = 1e-20


def _float64(x: Any, *, name: str = "x") -> torch.Tensor:
    """Validate ``x`` as a finite ``[n, d]`` floating matrix with ``n >= 2``; a float64 CPU copy."""
    tensor = check_matrix(x, name=name)
    if tensor.shape[0] < 2:
        raise InputError(f"{name}: isotropy needs at least 2 rows, got {tensor.shape[0]}")
    return tensor.detach().to(device="cpu", dtype=torch.float64)


def _gram(v: torch.Tensor) -> torch.Tensor:
    """``V Vᵀ`` or ``Vᵀ V``, whichever is smaller: both have the non-zero eigenvalues ``s_j²``."""
    return v @ v.T if v.shape[0] <= v.shape[1] else v.T @ v


def _variances(x: torch.Tensor, *, name: str) -> np.ndarray:
    """The ``d`` principal variances of ``x`` (covariance eigenvalues, ddof=1), descending.

    Raises :class:`InputError` when the total variance is zero (all rows identical), where
    variance-based measures are undefined.
    """
    eigenvalues = torch.linalg.eigvalsh(_gram(x - x.mean(dim=0))).flip(0).clamp_min(0.0)
    variances = np.zeros(x.shape[1])
    variances[: eigenvalues.numel()] = eigenvalues.numpy() / (x.shape[0] - 1)
    scale = float((x * x).sum(dim=1).mean())
    if variances.sum() <= _ZERO_VARIANCE * scale:
        raise InputError(f"{name}: all rows are identical (zero variance); the measure is "
                         "undefined")
    return variances


def average_cosine(x: Any, *, n_pairs: int | None = None, seed: int = 0) -> float:
    """Mean cosine similarity between distinct rows (Ethayarajh's anisotropy baseline).

    ``A(X) = 2 / (n (n - 1)) Σ_{i<j} cos(x_i, x_j)``, ``cos(u, v) = uᵀv / (|u| |v|)``, and 0 when
    either vector is zero. Exactly, over all pairs, through the identity
    ``Σ_{i≠j} cos(x_i, x_j) = |Σ_i u_i|² - Σ_i |u_i|²`` with ``u_i = x_i / |x_i|`` (``O(n d)``).
    Near 0 for isotropic data; near 1 when every vector points into one narrow cone.
    Invariant to rotations and to positive rescaling of the rows, not to translation.

    Ethayarajh, "How Contextual are Contextualized Word Representations?", EMNLP 2019 (§3.2,
    average cosine similarity between uniformly sampled representations).

    Parameters
    ----------
    x : array ``[n, d]``
        ``n >= 2`` vectors.
    n_pairs : int, optional
        Instead of the exact mean, estimate it from this many pairs ``(i, j)``, ``i ≠ j``, drawn
        uniformly at random (with replacement), as Ethayarajh does. When it is at least the
        number of pairs ``n (n - 1) / 2`` the exact value is returned.
    seed : int
        Seed of the pair sampling.

    Returns
    -------
    float
        In ``[-1 / (n - 1), 1]`` when exact (``[-1, 1]`` when sampled).
    """
    if n_pairs is not None and (
        isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 1
    ):
        raise InputError(f"n_pairs must be a positive int, got {n_pairs!r}")
    v = _float64(x)
    n = v.shape[0]
    norms = v.norm(dim=1, keepdim=True)
    units = torch.where(norms > 0, v / norms.clamp_min(torch.finfo(v.dtype).tiny), 0.0)
    if n_pairs is not None and n_pairs < n * (n - 1) // 2:
        rng = np.random.default_rng(seed)
        first = rng.integers(0, n, size=n_pairs)
        second = (first + rng.integers(1, n, size=n_pairs)) % n  # never equal to first
        pairs = (units[torch.from_numpy(first)] * units[torch.from_numpy(second)]).sum(dim=1)
        return float(pairs.mean())
    total = units.sum(dim=0)
    off_diagonal = float(total @ total) - float((units * units).sum())
    return min(1.0, off_diagonal / (n * (n - 1)))


def partition_isotropy(x: Any, *, log: bool = False) -> float:
    """Mu & Viswanath's isotropy: the partition function's min/max ratio over eigen-directions.

    ``I(X) = min_c Z(c) / max_c Z(c)``, ``Z(c) = Σ_i exp(cᵀx_i)``, with ``c`` ranging over the
    unit eigenvectors of ``XᵀX`` (their approximation of the min/max over all unit vectors).
    Eigenvectors are taken with both signs, ``±c``, so the value does not depend on the sign an
    eigen-solver happens to return; the data are not centred (a common offset is exactly the
    anisotropy the measure detects). 1 for isotropic data, → 0 for anisotropic data.

    Computed stably: with ``X = U S Wᵀ`` the eigenvectors of ``XᵀX`` are the ``w_j``, and
    ``Xw_j = s_j u_j``, so the projections come from the eigen-decomposition of ``XXᵀ``
    (``n x n``) when ``n <= d``, or of ``XᵀX`` when ``n > d``; ``log Z`` is a log-sum-exp, and
    eigenvectors of the null space of ``X`` (when ``d > n``) have ``Z = n``. Invariant to
    rotations, not to scale: ``Z`` grows with the vectors' norms.

    Mu & Viswanath, "All-but-the-Top: Simple and Effective Postprocessing for Word
    Representations", ICLR 2018 (§2, Eq. for ``I({v(w)})``).

    Parameters
    ----------
    x : array ``[n, d]``
    log : bool
        Return ``log I(X) = min_c log Z(c) - max_c log Z(c)`` (``<= 0``) instead, which keeps
        its resolution where ``I`` underflows to 0 (e.g. hidden states with norms in the
        hundreds).

    Returns
    -------
    float
        ``I(X)`` in ``[0, 1]``, or its logarithm.
    """
    v = _float64(x)
    n, d = v.shape
    eigenvalues, vectors = torch.linalg.eigh(_gram(v))
    # n <= d: the vectors are the u_j, and column j of u * s holds w_jᵀx_i; else they are the w_j
    projections = vectors * eigenvalues.clamp_min(0.0).sqrt() if n <= d else v @ vectors
    log_z = torch.logsumexp(torch.cat([projections, -projections], dim=1), dim=0)
    if n < d:  # null-space eigenvectors: cᵀx_i = 0 for all i
        log_z = torch.cat([log_z, log_z.new_tensor([math.log(n)])])
    log_ratio = float(log_z.min() - log_z.max())
    return log_ratio if log else math.exp(log_ratio)


def isoscore(x: Any) -> float:
    """IsoScore: how uniformly the variance is spread over all ``d`` dimensions.

    Following Rudman et al.'s algorithm, with ``n`` the number of **dimensions**: rotate the
    centred points to their principal axes (PCA) and take the variance vector ``Σ`` (the
    covariance eigenvalues, zeros included); normalise it to ``Σ̂ = √n Σ / |Σ|``; then

    ``δ = |Σ̂ - 1| / √(2 (n - √n))``, ``φ = (n - δ² (n - √n))² / n²``,
    ``IsoScore = (n φ - 1) / (n - 1)``.

    ``φ`` is the fraction of dimensions used isotropically, so IsoScore is 1 for isotropic data
    (all variances equal) and 0 for data on a line. Equivalently
    ``IsoScore = ((|Σ|₁ / |Σ|₂)² - 1) / (n - 1)``: the participation ratio of the spectrum,
    rescaled. With ``m <= d`` samples at most ``m - 1`` variances are non-zero, which caps the
    score at ``(m - 2) / (d - 1)``. Invariant to rotation, global scaling and translation.

    Rudman, Gillman, Rayne and Eickhoff, "IsoScore: Measuring the Uniformity of Embedding Space
    Utilization", Findings of ACL 2022 (§4, Algorithm 1).

    Returns
    -------
    float
        In ``[0, 1]``.

    Raises
    ------
    InputError
        Also when ``d < 2`` or every row is identical (zero variance).
    """
    v = _float64(x)
    n = v.shape[1]
    if n < 2:
        raise InputError(f"x: IsoScore needs at least 2 dimensions, got {n}")
    variances = _variances(v, name="x")
    normalised = math.sqrt(n) * variances / np.linalg.norm(variances)
    root = math.sqrt(n)
    delta = np.linalg.norm(normalised - 1.0) / math.sqrt(2.0 * (n - root))
    phi = (n - delta**2 * (n - root)) ** 2 / n**2
    return float(np.clip((n * phi - 1.0) / (n - 1.0), 0.0, 1.0))


def top_pc_variance(x: Any, k: int = 1) -> float:
    """Fraction of the total variance explained by the top ``k`` principal components.

    ``Σ_{j<=k} λ_j / Σ_j λ_j`` over the covariance eigenvalues ``λ_1 >= λ_2 >= ...`` of the
    centred rows. ``k / d`` for isotropic data, → 1 when a few directions dominate (the
    "rogue dimensions" of anisotropic spaces). Mu & Viswanath (ICLR 2018) remove these top
    components to make embeddings isotropic. Invariant to rotation, scale and translation.

    Parameters
    ----------
    x : array ``[n, d]``
    k : int
        Components, ``>= 1``; ``k`` at or above the rank gives 1.

    Raises
    ------
    InputError
        Also when every row is identical (zero variance) or ``k < 1``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    variances = _variances(_float64(x), name="x")
    return float(min(1.0, variances[:k].sum() / variances.sum()))


def isotropy_measures(x: Any) -> dict[str, float]:
    """Every measure of this module on ``x``, keyed as in :data:`MEASURES`.

    ``average_cosine`` is exact; ``log_partition_isotropy`` is :func:`partition_isotropy` with
    ``log=True``; ``top1_variance`` and ``top10_variance`` are :func:`top_pc_variance` with
    ``k = 1`` and ``k = 10``. Measures undefined on ``x`` (``isoscore`` and the variance fractions
    when all rows are identical) are ``nan``.

    Raises
    ------
    InputError
        On NaN/Inf, fewer than 2 rows or a non-matrix input.
    """
    v = _float64(x)

    def defined(measure: Any, *args: Any) -> float:
        try:
            return measure(v, *args)
        except InputError:  # zero variance, or d < 2 for IsoScore
            return math.nan

    log_partition = partition_isotropy(v, log=True)
    return {
        "average_cosine": average_cosine(v),
        "partition_isotropy": math.exp(log_partition),
        "log_partition_isotropy": log_partition,
        "isoscore": defined(isoscore),
        "top1_variance": defined(top_pc_variance, 1),
        "top10_variance": defined(top_pc_variance, 10),
    }
