"""The minimum squared Mahalanobis distance to class means, streamed over the queries."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputError
from ._dispatch import backend_for
from .arrays import (
    ArrayKind,
    ArrayLike,
    RowPeaks,
    as_tensor,
    check_finite,
    check_matrix,
    check_positive_int,
    compute_dtype,
)
from .magnitude import (
    MAX_NORM,
    MIN_NORM,
    check_representable,
    target_exponent,
    times_pow2,
)
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

    Magnitudes: with ``A`` the largest ``|value|`` of the queries, means and center, ``C`` the
    largest column sum ``sum_i |W_ij|`` and ``B = 2 sqrt(r) A C`` (a bound on ``|z|`` and
    ``|n_c|``), the kernels run as they are while ``2**-50 <= B <= 2**62`` (float32; float64:
    ``2**-480 .. 2**510``, see :mod:`ood_zoo.ops.magnitude`). Outside it the queries, means and
    center are multiplied by one power of two and ``W`` by another (exact), and the distances
    scaled back, so any finite input gives a finite, non-negative result; a distance above the
    output dtype's largest value (float32: ~3.4e38) is ``inf``, its correctly rounded value.

    Parameters
    ----------
    queries : array ``[Q, d]``
    whitening : array ``[d, r]``
    class_means : array ``[C, d]``
    center : array ``[d]``, optional
    chunk_rows : int, optional
        Queries per tile; by default chosen to bound scratch memory.

    Returns
    -------
    min_d2 : array ``[Q]``
        ``min_c d2_c(x)``, clamped at 0.
    argmin : array ``[Q]`` of int64
        The class index attaining it.

    Raises
    ------
    InputError
        For NaN/Inf, mismatched shapes, or a ``chunk_rows`` that is not a positive int.
    """
    x = check_matrix(queries, name="queries", finite=False)
    w = check_matrix(whitening, name="whitening", finite=False)
    mu = check_matrix(class_means, name="class_means", finite=False)
    d = x.shape[1]
    if w.shape[0] != d or mu.shape[1] != d:
        raise InputError(
            f"queries have {d} features but whitening is {tuple(w.shape)} and "
            f"class_means is {tuple(mu.shape)}"
        )
    dtype = compute_dtype(x.dtype)
    check_representable(check_finite(w, name="whitening"), dtype, name="whitening")
    mu_peaks = check_finite(mu, name="class_means")
    check_representable(mu_peaks, dtype, name="class_means")
    peaks = check_finite(x, name="queries").merge(mu_peaks)
    m = None
    if center is not None:
        m = as_tensor(center, name="center")
        center_peaks = check_finite(m.reshape(1, -1), name="center")
        if m.shape != (d,):
            raise InputError(f"center must have shape ({d},), got {tuple(m.shape)}")
        check_representable(center_peaks, dtype, name="center")
        peaks = peaks.merge(center_peaks)
    if chunk_rows is not None:
        chunk_rows = check_positive_int(chunk_rows, name="chunk_rows")
    rows = chunk_rows or default_chunk_rows(w.shape[1], d)
    scale = MahalanobisRescale.plan(peaks, w, dtype)
    if backend_for(x.device) == "ext":
        min_d2, argmin = _mahalanobis_ext(x, w, mu, m, rows, scale)
    else:
        min_d2, argmin = _mahalanobis_torch(x, w, mu, m, rows, scale)
    kind = ArrayKind.of(queries)
    return kind.wrap(min_d2), kind.wrap(argmin)


@dataclass(frozen=True)
class MahalanobisRescale:
    """Queries, means and center times ``2**-shift``, ``W`` times ``2**-w_shift``; so the
    distances come out times ``2**-(2 shift + 2 w_shift)`` and are scaled back."""

    shift: int = 0
    w_shift: int = 0

    @classmethod
    def plan(cls, peaks: RowPeaks, w: torch.Tensor, dtype: torch.dtype) -> MahalanobisRescale:
        """Nothing if ``B`` (see :func:`mahalanobis`) is inside the safe range of ``dtype``,
        else the shifts that bring ``A`` below 1 and ``B`` one binade below its top."""
        column_sum = float(w.abs().sum(dim=0, dtype=torch.float64).max())
        if peaks.high == 0 or column_sum == 0:
            return cls()  # every distance is exactly 0
        shift = math.frexp(peaks.high)[1]
        width = math.ceil(math.log2(w.shape[1]) / 2)
        bound = 1 + shift + math.frexp(column_sum)[1] + width  # B < 2**bound
        # also 2 A, the largest |x - m|, must stay finite
        headroom = math.frexp(torch.finfo(dtype).max)[1] - 2
        if math.log2(MIN_NORM[dtype]) < bound <= math.log2(MAX_NORM[dtype]) \
                and shift <= headroom:
            return cls()
        return cls(shift, bound - shift - target_exponent(dtype))

    def operand(self, t: torch.Tensor, exponent: int, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
        """``t`` on ``device`` in ``dtype``, times ``2**exponent``."""
        if not exponent:
            return t.to(device=device, dtype=dtype)
        return times_pow2(t.to(device=device, dtype=dtype), exponent)

    def operands(
        self, w: torch.Tensor, mu: torch.Tensor, m: torch.Tensor | None, dtype: torch.dtype,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``W``, the means and the center (by default the means' mean), rescaled."""
        w = self.operand(w, -self.w_shift, dtype, device)
        mu = self.operand(mu, -self.shift, dtype, device)
        m = mu.mean(dim=0) if m is None else self.operand(m, -self.shift, dtype, device)
        return w, mu, m

    @property
    def identity(self) -> bool:
        return not (self.shift or self.w_shift)

    def values(self, d2: torch.Tensor) -> torch.Tensor:
        return times_pow2(d2, 2 * (self.shift + self.w_shift)) if not self.identity else d2


def _mahalanobis_torch(
    x: torch.Tensor, w: torch.Tensor, mu: torch.Tensor, m: torch.Tensor | None, rows: int,
    scale: MahalanobisRescale,
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = compute_dtype(x.dtype)
    w, mu, m = scale.operands(w, mu, m, dtype, x.device)
    means_white = (mu - m) @ w
    means_sq = (means_white * means_white).sum(dim=1)
    out_d2, out_arg = [], []
    for start in range(0, x.shape[0], rows):
        z = (scale.operand(x[start : start + rows], -scale.shift, dtype, x.device) - m) @ w
        d2 = (z * z).sum(dim=1, keepdim=True) + means_sq - 2 * (z @ means_white.T)
        best = d2.min(dim=1)
        out_d2.append(best.values.clamp_min(0))
        out_arg.append(best.indices)
    return scale.values(torch.cat(out_d2)), torch.cat(out_arg)


def _mahalanobis_ext(
    x: torch.Tensor, w: torch.Tensor, mu: torch.Tensor, m: torch.Tensor | None, rows: int,
    scale: MahalanobisRescale,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.ood_zoo.mahalanobis``; the op converts the queries tile by tile (a rescaled
    call converts and rescales them here, ``rows`` at a time)."""
    dtype = compute_dtype(x.dtype)
    w, mu, m = (t.contiguous() for t in scale.operands(w, mu, m, dtype, x.device))
    if scale.identity:
        return torch.ops.ood_zoo.mahalanobis(x, w, mu, m, rows)
    parts = [
        torch.ops.ood_zoo.mahalanobis(
            scale.operand(x[start : start + rows], -scale.shift, dtype, x.device).contiguous(),
            w, mu, m, rows,
        )
        for start in range(0, x.shape[0], rows)
    ]
    return scale.values(torch.cat([p[0] for p in parts])), torch.cat([p[1] for p in parts])
