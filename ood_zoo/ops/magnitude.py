"""The kernels' safe numeric range, and the exact power-of-two rescaling that brings inputs into it.

Row norms (:func:`row_norms`) and row normalisation (:func:`normalise_rows`, public as
``ood_zoo.ops.normalise_rows``) are exact at any magnitude by the same rescaling (below).

The kernels square their inputs: norms, dot products and the expanded form
``|q|² + |b|² - 2 q·b``. In float32 a row of norm above ~1.8e19 overflows that (Inf, then NaN),
and l2 distances between rows below ~1e-19 underflow to 0. So every op keeps its operands inside
a **safe range** of row norms, per compute dtype:

=========  ======================  ==========================================
dtype      every row: ``|x| <=``   l2 queries, unless exactly zero: ``|x| >=``
=========  ======================  ==========================================
float32    ``2**62``  (≈ 4.6e18)   ``2**-50``  (≈ 8.9e-16)
float64    ``2**510`` (≈ 3.4e153)  ``2**-480`` (≈ 3.2e-145)
=========  ======================  ==========================================

(:func:`~ood_zoo.ops.mahalanobis` applies the same two bounds to ``2 sqrt(r) A C``, a bound on its
whitened rows; see its docstring.) Cosine needs no lower bound: a row below ``NORM_EPS = 1e-12``
is divided by ``1e-12`` by definition, and smaller rows lose nothing that the result can show.

Inside it every squared norm, dot product and expanded-form sum is finite, and any underflow is
below the fp32 (fp64) rounding of the result. Inputs outside it are not refused: the ops multiply
them by powers of two, which is exact in binary floating point (results are unchanged wherever
nothing over- or underflows), and scale the results back. Normal inputs never take that path, so
their results are bit-identical to an unscaled computation. The one refusal: a call computes in
float32 unless its queries are float64 (faiss: always float32), and an operand value beyond that
dtype's range (float32: ~3.4e38, e.g. in a float64 bank) is an :class:`InputError`
(:func:`check_representable`).

Rows are measured by their peak ``max_j |x_j|`` (:class:`~ood_zoo.ops.arrays.RowPeaks`, from the
finiteness pass every input gets), and ``|x| <= sqrt(d) peak`` bounds the norm.
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from .arrays import RowPeaks

#: Largest row norm the kernels take as they are, per compute dtype (see the module docstring).
MAX_NORM = {torch.float32: 2.0**62, torch.float64: 2.0**510}
#: Smallest nonzero row norm of l2 queries taken as they are (and Mahalanobis's bound).
MIN_NORM = {torch.float32: 2.0**-50, torch.float64: 2.0**-480}
#: Smallest norm treated as non-zero when normalising rows (torch's ``normalize`` default).
NORM_EPS = 1e-12
#: Largest power-of-two step of :func:`times_pow2`: ``2**±step`` is a normal number of the dtype.
_POW2_STEP = {torch.float32: 126, torch.float64: 1022}
#: Exponent and mantissa widths of the IEEE formats, to build powers of two bit by bit.
_IEEE = {torch.float32: (127, 23, torch.int32), torch.float64: (1023, 52, torch.int64)}


def norm_exponent(peak: float, dim: int) -> int:
    """An integer ``e`` with ``sqrt(dim) * peak < 2**e``: a bound on the norm of a row of ``dim``
    values whose largest ``|value|`` is ``peak`` (``peak = m 2**f``, ``0.5 <= m < 1``), computed
    without overflow."""
    return math.frexp(peak)[1] + math.ceil(math.log2(max(dim, 1)) / 2)


def in_range(peaks: RowPeaks, dim: int, dtype: torch.dtype, *, lower: bool) -> bool:
    """Whether rows with these peaks are inside the safe range of ``dtype`` (the lower end only
    if ``lower``). Exactly zero rows are always inside."""
    if peaks.high > 0 and norm_exponent(peaks.high, dim) > math.log2(MAX_NORM[dtype]):
        return False
    return not lower or peaks.low >= MIN_NORM[dtype]


def target_exponent(dtype: torch.dtype) -> int:
    """The norm bound, as a power of two, that rescaled operands are given: one binade below
    :data:`MAX_NORM`, so that the range keeps as much room below as possible."""
    return round(math.log2(MAX_NORM[dtype])) - 1


def pow2(exponent: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``2.0 ** exponent`` in ``dtype``, exactly (built from the bits); the exponent must give a
    normal number (``|exponent|`` up to :data:`_POW2_STEP` is always fine)."""
    bias, mantissa, bits = _IEEE[dtype]
    return ((exponent.to(torch.int64) + bias) << mantissa).to(bits).view(dtype)


def times_pow2(x: torch.Tensor, exponent: int | torch.Tensor) -> torch.Tensor:
    """``x * 2**exponent`` (a per-row ``[n, 1]`` exponent broadcasts), exact unless the result
    itself over- or underflows: applied in steps that are each a normal power of two."""
    remaining = torch.as_tensor(exponent, dtype=torch.int64, device=x.device)
    limit = _POW2_STEP[x.dtype]
    while True:
        step = remaining.clamp(-limit, limit)
        x = x * pow2(step, x.dtype)
        remaining = remaining - step
        if not bool(remaining.any()):
            return x


def shrink_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every row whose largest ``|value|`` exceeds 1 divided by the power of two that
    brings it into ``[0.5, 1)`` (exact), other rows as they are: one pass to measure, one to
    scale. Cosine similarities do not change, and the rows' norms are at most ``sqrt(d)``."""
    low, high = torch.aminmax(x, dim=1, keepdim=True)
    return times_pow2(x, -torch.frexp(torch.maximum(high, -low)).exponent.clamp_min(0))


def normalise_rows(x: torch.Tensor) -> torch.Tensor:
    """``x / max(|x|, NORM_EPS)`` row by row (fp32 or fp64; zero rows stay zero), at any magnitude.

    The row normalisation of cosine similarity, as :func:`~ood_zoo.ops.knn` applies it; a plugin
    detector casts to :func:`~ood_zoo.ops.compute_dtype` first. A row whose norm leaves the safe
    range (:data:`MAX_NORM`; its sum of squares may have overflowed) is first scaled by a power of
    two that brings its largest value into ``[0.5, 1)`` (:func:`shrink_rows`, exact), so every
    finite row comes out right. Other rows take the plain expression, so their result is
    unchanged.
    """
    norms = x.norm(dim=1, keepdim=True)
    out = x / norms.clamp_min(NORM_EPS)
    huge = (norms > MAX_NORM[x.dtype]).squeeze(1)
    if bool(huge.any()):
        rows = huge.nonzero().squeeze(1)
        scaled = shrink_rows(x[rows])
        out[rows] = scaled / scaled.norm(dim=1, keepdim=True)
    return out


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """The Euclidean norm of each row of ``x`` (float32/float64), with no overflow or underflow
    in its squares: each row is scaled by the power of two that brings its largest ``|value|``
    into ``[0.5, 1)`` (exact), normed, and scaled back, as LAPACK's ``nrm2`` guards its sum.
    Rows of ordinary magnitude give ``x.norm(dim=1)``; a norm beyond the dtype is ``inf``."""
    low, high = torch.aminmax(x, dim=1, keepdim=True)
    exponent = torch.frexp(torch.maximum(high, -low)).exponent
    return times_pow2(times_pow2(x, -exponent).norm(dim=1), exponent[:, 0])


def check_representable(peaks: RowPeaks, dtype: torch.dtype, *, name: str) -> None:
    """Refuse values that overflow ``dtype``, the dtype the call computes in.

    Raises
    ------
    InputError
        If the largest ``|value|`` exceeds ``dtype``'s largest finite value.
    """
    largest = torch.finfo(dtype).max
    if peaks.high > largest:
        raise InputError(
            f"{name}: a value of magnitude {peaks.high:.3g} overflows {dtype} (largest "
            f"{largest:.3g}), the dtype this call computes in (float32 unless the queries are "
            "float64)"
        )
