"""Exact k nearest neighbours streamed over a bank, on the torch, ext or faiss backend.

kNN precision (``knn(..., precision=...)``, default from ``OOD_ZOO_KNN_PRECISION``, see
:func:`~ood_zoo.ops.knn_precision`):

``exact`` (the default)
    Every GEMM in fp32 (fp64 for fp64 queries). On the CPU the ``ext`` kernels' fp32 tile GEMMs
    go through one provider (ATen/MKL, oneDNN or a vendored OpenBLAS) picked by a one-off
    measurement per process; ``OOD_ZOO_GEMM`` forces one, :func:`~ood_zoo.ops.cpu_gemm_info`
    reports it.
``bf16``
    Still an exact result, faster where the CPU multiplies bf16 natively (AVX512-BF16 or AMX):
    the ``ext`` backend runs each bank tile's GEMM in bf16 with fp32 accumulation, bounds the
    error of every approximate score rigorously (per query and per bank row, from the actual
    bf16 rounding residuals), and re-scores exactly (double accumulation, from the bank rows as
    stored) every row whose bound could still place it in the top-k. A query that would need
    more than :data:`BF16_MAX_RESCORE` (or ``32 k``) re-scores is recomputed in fp32. The
    result is the top-k of the exactly computed scores, the same as ``exact`` up to fp32
    rounding of near-ties. A bank stored in bf16 (a bf16 tensor, or a uint16 ``.npy`` of bf16
    bits viewed as bf16) is used without conversion. Everywhere else (no native bf16 GEMM, the
    ``torch``/``faiss`` backends, CUDA or fp64 queries) ``bf16`` computes as ``exact``. The
    bound assumes the bf16 matmul accumulates in fp32 (as oneDNN's does).

Magnitudes (:mod:`ood_zoo.ops.magnitude`): any finite input gets the accuracy it would get at unit
scale (for l2, as always, relative to the squared norms involved): nothing overflows to NaN and no
representable distance underflows to 0, unless one call spans more than ``2**111`` between its
largest and smallest row norms (the l2 pairs at the bottom then lose accuracy). Inside the safe
range (float32: row norms up to ``2**62`` ≈ 4.6e18, and l2 queries, unless zero, not below
``2**-50`` ≈ 8.9e-16) the kernels run as they are. Outside it a call takes a slower path: the bank
is scanned once for its largest value; then, chunk by chunk, for ``cosine`` every row of the
offending operand whose largest ``|value|`` exceeds 1 is divided by the power of two that brings
that value into ``[0.5, 1)``, and for ``l2`` all queries and bank rows are multiplied by one power
of two ``2**-e``, the distances by ``2**e``. Powers of two are exact in binary floating point. On
the ``ext`` CPU kernels the bank's range costs nothing: the kernel checks it in the squared-norm
pass it makes anyway, and only a bank row outside the range sends the call down the slower path.
Values beyond the range of the dtype the call computes in (float32: ~3.4e38, e.g. in a float64
bank searched with float32 queries) are refused with an :class:`~ood_zoo.errors.InputError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch

from ..errors import BackendUnavailableError
from ._dispatch import PRECISIONS, backend_for, bf16_gemm_native, knn_precision
from .arrays import (
    ArrayKind,
    ArrayLike,
    Bank,
    RowPeaks,
    bank_peaks,
    check_bank,
    check_finite,
    check_matrix,
    check_positive_int,
    check_search,
    compute_dtype,
)
from .magnitude import (
    NORM_EPS,
    check_representable,
    in_range,
    norm_exponent,
    normalise_rows,
    shrink_rows,
    target_exponent,
    times_pow2,
)
from .streaming import (
    chunks,
    default_chunk_rows,
    sort_heaps,
    stream_rows,
    stream_topk,
)

Metric = Literal["cosine", "l2"]
#: Exact re-scores one query may need in ``precision="bf16"`` (at least ``32 k``) before it is
#: recomputed in fp32 instead (adversarial near-ties, or data on which bf16 cannot separate).
BF16_MAX_RESCORE = 4096


Result = TypeVar("Result")


@dataclass(frozen=True)
class KnnRescale:
    """How one kNN call brings its operands into the safe range (nothing, for normal inputs).

    ``cosine``: the rows of the queries and/or the bank whose largest ``|value|`` exceeds 1 are
    divided by a power of two (:func:`~ood_zoo.ops.magnitude.shrink_rows`), which changes no
    similarity. ``l2``: every row is multiplied by ``2**-exponent``, the distances by
    ``2**exponent``.
    """

    shrink_queries: bool = False
    shrink_bank: bool = False
    exponent: int = 0

    @property
    def identity(self) -> bool:
        """Whether the call runs on its inputs as they are."""
        return not (self.shrink_queries or self.shrink_bank or self.exponent)

    def queries(self, q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The queries in ``dtype``, brought into the safe range."""
        return self._rows(q.to(dtype), shrink=self.shrink_queries)

    def bank(self, chunk: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A bank chunk in ``dtype``, brought into the safe range (a copy only if rescaled)."""
        return self._rows(chunk.to(dtype), shrink=self.shrink_bank)

    def values(self, values: torch.Tensor) -> torch.Tensor:
        """Similarities as they are; distances scaled back (Inf where they exceed the dtype)."""
        return times_pow2(values, self.exponent) if self.exponent else values

    def _rows(self, x: torch.Tensor, *, shrink: bool) -> torch.Tensor:
        if shrink:
            return shrink_rows(x)
        return times_pow2(x, -self.exponent) if self.exponent else x


def plan_rescale(
    metric: Metric, dim: int, dtype: torch.dtype, queries: RowPeaks, bank: RowPeaks | None
) -> KnnRescale | None:
    """The :class:`KnnRescale` that puts a call computing in ``dtype`` inside the safe range.

    ``bank=None`` means the bank's range is unknown (a CPU kernel checks it): the plan then takes
    the bank as it is, or is None if ``l2`` queries alone already need a common scale.
    """
    if metric == "cosine":
        return KnnRescale(
            shrink_queries=not in_range(queries, dim, dtype, lower=False),
            shrink_bank=bank is not None and not in_range(bank, dim, dtype, lower=False),
        )
    queries_fit = in_range(queries, dim, dtype, lower=True)
    if queries_fit and (bank is None or in_range(bank, dim, dtype, lower=False)):
        return KnnRescale()
    if bank is None:
        return None
    return KnnRescale(exponent=norm_exponent(max(queries.high, bank.high), dim)
                   - target_exponent(dtype))


def _run_cpu_kernel(
    shards: list[torch.Tensor], dtype: torch.dtype, run: Callable[[], Result]
) -> Result | None:
    """Run a CPU kernel (computing in ``dtype``) that checks the bank as it reads it; None if a
    bank row is outside the safe range: the caller rescales.

    The CPU kernels compute every bank row's squared norm in double anyway, so they check the
    bank's finiteness and range for free; a separate pass over a multi-GB bank cost about a
    quarter of the search time. Only on failure is the bank scanned here, to name a bad row.
    """
    try:
        return run()
    except RuntimeError as exc:
        message = str(exc)
        if "outside the safe range" in message:
            return None
        if "is not finite" not in message:
            raise
        # names a row that holds NaN or Inf, or a finite value that overflowed the conversion
        check_representable(bank_peaks(shards), dtype, name="bank")
        raise


def knn(
    queries: ArrayLike,
    bank: Bank,
    k: int,
    metric: Metric = "cosine",
    *,
    chunk_rows: int | None = None,
    precision: str | None = None,
) -> tuple[ArrayLike, ArrayLike]:
    """Exact k nearest neighbours of each query in a bank, streamed over the bank.

    For ``metric="cosine"`` the values are cosine similarities ``<q, b> / (|q| |b|)`` in
    descending order; for ``"l2"`` they are Euclidean distances ``|q - b|`` in ascending order.
    A zero vector has cosine similarity 0 to everything (a row of norm below ``NORM_EPS = 1e-12``
    is divided by ``1e-12`` instead of its norm). This is the brute-force search behind the deep
    nearest-neighbour OOD score (Sun et al., ICML 2022).

    Parameters
    ----------
    queries : array ``[Q, d]``
    bank : array ``[N, d]``, or a list of arrays (shards) that together form the bank
        A numpy memmap works: it is read a chunk at a time.
    k : int
        Neighbours per query, ``1 <= k <= N``.
    metric : {"cosine", "l2"}
    chunk_rows : int, optional
        Bank rows per tile (one ``[Q, chunk_rows]`` similarity block); by default chosen to
        bound scratch memory.
    precision : {"exact", "bf16"}, optional
        How the GEMMs run; both give exact results (see :mod:`ood_zoo.ops.dense`). By default
        ``OOD_ZOO_KNN_PRECISION``, else ``"exact"``.

    Returns
    -------
    values : array ``[Q, k]``
        Similarities (cosine) or distances (l2), best first, fp32 (fp64 for fp64 queries). Any
        finite input gives finite values (see "Magnitudes" in :mod:`ood_zoo.ops.dense`), except
        that a distance above the output dtype's largest value (float32: ~3.4e38) is ``inf``, its
        correctly rounded value.
    indices : array ``[Q, k]`` of int64
        Positions in the bank (across shards, in order).

    Raises
    ------
    InputError
        For NaN/Inf, bad shapes, or ``k``/``chunk_rows`` that are not positive ints.
    """
    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
    q = check_matrix(queries, name="queries", finite=False)
    query_peaks = check_finite(q, name="queries")
    name = backend_for(q.device)
    # The CPU kernels check the bank's finiteness and range themselves, in the same pass.
    kernel_checks = name == "ext" and q.device.type == "cpu"
    shards = check_bank(bank, finite=False)
    n_bank = sum(s.shape[0] for s in shards)
    k = check_search(q, k, n_rows=n_bank, dim=shards[0].shape[1])
    if chunk_rows is not None:
        chunk_rows = check_positive_int(chunk_rows, name="chunk_rows")
    if precision is None:
        precision = knn_precision()
    elif precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    rows = chunk_rows or default_chunk_rows(q.shape[0], q.shape[1])
    # faiss computes in fp32 whatever the input
    dtype = torch.float32 if name == "faiss" else compute_dtype(q.dtype)
    dim = q.shape[1]
    check_representable(query_peaks, dtype, name="queries")

    def scan_bank() -> RowPeaks:
        peaks = bank_peaks(shards)
        check_representable(peaks, dtype, name="bank")
        return peaks

    plan = plan_rescale(metric, dim, dtype, query_peaks, None if kernel_checks else scan_bank())
    if plan is None:  # l2 queries outside the range: one scale for all, from the bank's range
        plan = plan_rescale(metric, dim, dtype, query_peaks, scan_bank())

    def search(plan: KnnRescale) -> tuple[torch.Tensor, torch.Tensor] | None:
        if name == "faiss":
            return _knn_faiss(q, shards, k, metric, rows, plan)
        if name == "torch":
            return _knn_torch(q, shards, k, metric, rows, plan)
        if not kernel_checks:
            return _knn_ext(q, shards, k, metric, rows, plan)
        if precision == "bf16" and plan.identity and q.dtype != torch.float64 \
                and bf16_gemm_native():
            return _run_cpu_kernel(shards, dtype,
                                   lambda: _knn_ext_bf16(q, shards, k, metric, rows))
        return _run_cpu_kernel(shards, dtype,
                               lambda: _knn_ext(q, shards, k, metric, rows, plan))

    result = search(plan)
    if result is None:  # a CPU kernel met a bank row outside the safe range
        result = search(plan_rescale(metric, dim, dtype, query_peaks, scan_bank()))
    values, indices = result
    kind = ArrayKind.of(queries)
    return kind.wrap(values), kind.wrap(indices)


def _knn_torch(
    q: torch.Tensor, shards: list[torch.Tensor], k: int, metric: Metric, rows: int,
    plan: KnnRescale,
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = compute_dtype(q.dtype)
    q = plan.queries(q, dtype)
    largest = metric == "cosine"
    if largest:
        q = normalise_rows(q)
    else:
        q_sq = (q * q).sum(dim=1, keepdim=True)
    best_values = best_indices = None
    for offset, chunk in chunks(shards, rows):
        c = plan.bank(chunk.to(q.device), dtype)
        block = q @ c.T
        if largest:
            block /= c.norm(dim=1).clamp_min(NORM_EPS)
        else:
            block = (q_sq + (c * c).sum(dim=1) - 2 * block).clamp_min_(0)
        top = block.topk(min(k, c.shape[0]), dim=1, largest=largest, sorted=False)
        top_indices = top.indices + offset
        if best_values is not None:
            merged = torch.cat([best_values, top.values], dim=1)
            picked = merged.topk(min(k, merged.shape[1]), dim=1, largest=largest, sorted=False)
            top_indices = torch.cat([best_indices, top_indices], dim=1).gather(1, picked.indices)
            best_values = picked.values
        else:
            best_values = top.values
        best_indices = top_indices
    best_values, best_indices = sort_heaps(best_values, best_indices, largest=largest)
    if not largest:
        best_values = best_values.sqrt()
    return plan.values(best_values), best_indices


def _knn_ext(
    q: torch.Tensor, shards: list[torch.Tensor], k: int, metric: Metric, rows: int,
    plan: KnnRescale,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.ood_zoo.knn`` per chunk (tiles of ``rows`` inside), chunks merged here.

    On CUDA, 16-bit queries against a bank of the same dtype stay 16-bit, so that the CUDA
    kernel multiplies its tiles on tensor cores (fp32 accumulation); all else computes in fp32
    (fp64 for fp64 queries), as do rescaled calls.
    """
    half = q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16)
    dtype = q.dtype if half and plan.identity and all(s.dtype == q.dtype for s in shards) \
        else compute_dtype(q.dtype)
    q = plan.queries(q, dtype).contiguous()

    def search(chunk: torch.Tensor, kc: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = plan.bank(chunk.to(q.device), dtype).contiguous()
        return torch.ops.ood_zoo.knn(q, chunk, kc, metric, rows)

    stream = stream_rows(rows, q.shape[1], q.element_size())
    values, indices = stream_topk(shards, k, metric == "cosine", stream, search)
    return plan.values(values), indices


def _knn_ext_bf16(
    q: torch.Tensor, shards: list[torch.Tensor], k: int, metric: Metric, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.ood_zoo.knn_bf16_update`` per chunk: bf16 GEMM tiles, exact re-rank.

    The op keeps one exact top-k heap per query across chunks (float64 values, worst first;
    sentinels of index int64-max lose every tie). Overflowed queries are recomputed in fp32.
    """
    cosine = metric == "cosine"
    qf = q.to(torch.float32).contiguous()
    n_q = qf.shape[0]
    values = torch.full((n_q, k), -math.inf if cosine else math.inf, dtype=torch.float64)
    indices = torch.full((n_q, k), torch.iinfo(torch.int64).max, dtype=torch.int64)
    counts = torch.zeros(n_q, dtype=torch.int64)
    cap = max(BF16_MAX_RESCORE, 32 * k)
    for offset, chunk in chunks(shards, stream_rows(rows, q.shape[1], 4)):
        if chunk.shape[0]:
            torch.ops.ood_zoo.knn_bf16_update(
                qf, chunk.contiguous(), offset, values, indices, counts, metric, rows, cap
            )
    values, indices = sort_heaps(values, indices, largest=cosine)
    if not cosine:
        values = values.sqrt()
    values = values.to(torch.float32)
    overflow = (counts < 0).nonzero().squeeze(1)
    if overflow.numel():
        exact_values, exact_indices = _knn_ext(qf[overflow], shards, k, metric, rows, KnnRescale())
        values[overflow], indices[overflow] = exact_values, exact_indices
    return values, indices


def _knn_faiss(
    q: torch.Tensor, shards: list[torch.Tensor], k: int, metric: Metric, rows: int,
    plan: KnnRescale,
) -> tuple[torch.Tensor, torch.Tensor]:
    """faiss flat indexes, one per chunk: inner product of normalised fp32 rows, or L2 + sqrt."""
    try:
        import faiss
    except ImportError as exc:
        raise BackendUnavailableError(
            f"OOD_ZOO_BACKEND=faiss needs faiss ({exc}); pip install faiss-cpu"
        ) from exc
    faiss.omp_set_num_threads(torch.get_num_threads())
    cosine = metric == "cosine"
    xq = plan.queries(q.cpu(), torch.float32)
    xq = (normalise_rows(xq) if cosine else xq).contiguous().numpy()
    d = q.shape[1]

    def search(chunk: torch.Tensor, kc: int) -> tuple[torch.Tensor, torch.Tensor]:
        xb = plan.bank(chunk.cpu(), torch.float32)
        xb = (normalise_rows(xb) if cosine else xb).contiguous().numpy()
        index = faiss.IndexFlatIP(d) if cosine else faiss.IndexFlatL2(d)
        index.add(xb)
        values, indices = index.search(xq, kc)
        values = torch.from_numpy(values)
        if not cosine:
            values = values.clamp_min_(0).sqrt_()  # IndexFlatL2 returns squared distances
        return values, torch.from_numpy(indices)

    stream = stream_rows(rows, d, 4)
    values, indices = stream_topk(shards, k, cosine, stream, search)
    return plan.values(values.to(compute_dtype(q.dtype))), indices

