"""The minimum squared Mahalanobis distance to class means, streamed over the queries."""

from __future__ import annotations

import torch

from ..errors import InputError
from ._dispatch import backend_for
from .arrays import ArrayKind, ArrayLike, as_tensor, check_finite, check_matrix, compute_dtype
from .streaming import default_chunk_rows


def mahalanobis(
    queries: ArrayLike,
    whitening: ArrayLike,
    class_means: ArrayLike,
    *,
    center: ArrayLike | None = None,
    chunk_rows: int | None = None,
) -> tuple[ArrayLike, ArrayLike]:
    """Minimum squared Mahalanobis distance to the class means, and its class.

    With a precision matrix factored as ``P = W Wᵀ`` (``W`` is ``whitening``, ``[d, r]``),

    ``d2_c(x) = (x - μ_c)ᵀ P (x - μ_c) = |z|² + |n_c|² - 2 z·n_c``,
    ``z = (x - m) W``, ``n_c = (μ_c - m) W``,

    evaluated as one whitening GEMM and one class GEMM per query chunk, where ``m`` is ``center``
    (by default the mean of the class means; centring keeps the expanded form accurate in fp32).
    Lee et al., "A Simple Unified Framework for Detecting OOD Samples", NeurIPS 2018.

    Returns
    -------
    min_d2 : array ``[Q]``
        ``min_c d2_c(x)``, clamped at 0.
    argmin : array ``[Q]`` of int64
        The class index attaining it.
    """
    x = check_matrix(queries, name="queries")
    w = check_matrix(whitening, name="whitening")
    mu = check_matrix(class_means, name="class_means")
    d = x.shape[1]
    if w.shape[0] != d or mu.shape[1] != d:
        raise InputError(
            f"queries have {d} features but whitening is {tuple(w.shape)} and "
            f"class_means is {tuple(mu.shape)}"
        )
    m = None
    if center is not None:
        m = as_tensor(center, name="center")
        check_finite(m.reshape(1, -1), name="center")
        if m.shape != (d,):
            raise InputError(f"center must have shape ({d},), got {tuple(m.shape)}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    rows = chunk_rows or default_chunk_rows(w.shape[1], d)
    if backend_for(x.device) == "ext":
        min_d2, argmin = _mahalanobis_ext(x, w, mu, m, rows)
    else:
        min_d2, argmin = _mahalanobis_torch(x, w, mu, m, rows)
    kind = ArrayKind.of(queries)
    return kind.wrap(min_d2), kind.wrap(argmin)


def _mahalanobis_torch(
    x: torch.Tensor, w: torch.Tensor, mu: torch.Tensor, m: torch.Tensor | None, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = compute_dtype(x.dtype)
    device = x.device
    w = w.to(device=device, dtype=dtype)
    mu = mu.to(device=device, dtype=dtype)
    m = mu.mean(dim=0) if m is None else m.to(device=device, dtype=dtype)
    means_white = (mu - m) @ w
    means_sq = (means_white * means_white).sum(dim=1)
    out_d2, out_arg = [], []
    for start in range(0, x.shape[0], rows):
        z = (x[start : start + rows].to(dtype) - m) @ w
        d2 = (z * z).sum(dim=1, keepdim=True) + means_sq - 2 * (z @ means_white.T)
        best = d2.min(dim=1)
        out_d2.append(best.values.clamp_min(0))
        out_arg.append(best.indices)
    return torch.cat(out_d2), torch.cat(out_arg)


def _mahalanobis_ext(
    x: torch.Tensor, w: torch.Tensor, mu: torch.Tensor, m: torch.Tensor | None, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.ood_zoo.mahalanobis``; the op converts the queries tile by tile."""
    dtype = compute_dtype(x.dtype)
    w = w.to(device=x.device, dtype=dtype).contiguous()
    mu = mu.to(device=x.device, dtype=dtype).contiguous()
    m = mu.mean(dim=0) if m is None else m.to(device=x.device, dtype=dtype).contiguous()
    return torch.ops.ood_zoo.mahalanobis(x, w, mu, m, rows)
