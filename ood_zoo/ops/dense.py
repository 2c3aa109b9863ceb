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
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch

from ..errors import BackendUnavailableError, InputError
from ._dispatch import PRECISIONS, backend_for, bf16_gemm_native, knn_precision
from .arrays import (
    ArrayKind,
    ArrayLike,
    Bank,
    check_bank,
    check_finite,
    check_matrix,
    compute_dtype,
)
from .streaming import (
    NORM_EPS,
    chunks,
    default_chunk_rows,
    normalise_rows,
    sort_heaps,
    stream_rows,
    stream_topk,
)

Metric = Literal["cosine", "l2"]
#: Exact re-scores one query may need in ``precision="bf16"`` (at least ``32 k``) before it is
#: recomputed in fp32 instead (adversarial near-ties, or data on which bf16 cannot separate).
BF16_MAX_RESCORE = 4096


@contextlib.contextmanager
def _kernel_finite_check(shards: list[torch.Tensor]) -> Iterator[None]:
    """Turn the CPU kernels' "bank row ... is not finite" into the usual :class:`InputError`.

    The CPU kernels compute every bank row's squared norm in double anyway, so they check the
    bank's finiteness for free; a separate ``isfinite`` pass over a multi-GB bank cost about a
    quarter of the search time. Only on failure is the bank scanned here, to name the row.
    """
    try:
        yield
    except RuntimeError as exc:
        if "is not finite" not in str(exc):
            raise
        for shard in shards:
            check_finite(shard, name="bank")
        raise InputError(f"bank: a row's squared norm overflows ({exc})") from exc


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
    A zero vector has cosine similarity 0 to everything. This is the brute-force search behind
    the deep nearest-neighbour OOD score (Sun et al., ICML 2022).

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
        Similarities (cosine) or distances (l2), best first, fp32 (fp64 for fp64 queries).
    indices : array ``[Q, k]`` of int64
        Positions in the bank (across shards, in order).
    """
    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
    q = check_matrix(queries, name="queries")
    name = backend_for(q.device)
    # The CPU kernels check the bank's finiteness themselves, in the same pass.
    kernel_checks = name == "ext" and q.device.type == "cpu"
    shards = check_bank(bank, finite=not kernel_checks)
    n_bank = sum(s.shape[0] for s in shards)
    if shards[0].shape[1] != q.shape[1]:
        raise InputError(
            f"queries have {q.shape[1]} features but the bank has {shards[0].shape[1]}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    if k > n_bank:
        raise InputError(f"k={k} is larger than the bank ({n_bank} rows)")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    if precision is None:
        precision = knn_precision()
    elif precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    rows = chunk_rows or default_chunk_rows(q.shape[0], q.shape[1])
    fast = precision == "bf16" and kernel_checks and q.dtype != torch.float64
    if name == "ext":
        with _kernel_finite_check(shards) if kernel_checks else contextlib.nullcontext():
            if fast and bf16_gemm_native():
                values, indices = _knn_ext_bf16(q, shards, k, metric, rows)
            else:
                values, indices = _knn_ext(q, shards, k, metric, rows)
    elif name == "faiss":
        values, indices = _knn_faiss(q, shards, k, metric, rows)
    else:
        values, indices = _knn_torch(q, shards, k, metric, rows)
    kind = ArrayKind.of(queries)
    return kind.wrap(values), kind.wrap(indices)


def _knn_torch(
    q: torch.Tensor, shards: list[torch.Tensor], k: int, metric: Metric, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = compute_dtype(q.dtype)
    q = q.to(dtype)
    largest = metric == "cosine"
    if largest:
        q = q / q.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
    else:
        q_sq = (q * q).sum(dim=1, keepdim=True)
    best_values = best_indices = None
    for offset, chunk in chunks(shards, rows):
        c = chunk.to(device=q.device, dtype=dtype)
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
    return best_values, best_indices


def _knn_ext(
    q: torch.Tensor, shards: list[torch.Tensor], k: int, metric: Metric, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.ood_zoo.knn`` per chunk (tiles of ``rows`` inside), chunks merged here.

    On CUDA, 16-bit queries against a bank of the same dtype stay 16-bit, so that the CUDA
    kernel multiplies its tiles on tensor cores (fp32 accumulation); all else computes in fp32
    (fp64 for fp64 queries).
    """
    half = q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16)
    if not (half and all(s.dtype == q.dtype for s in shards)):
        q = q.to(compute_dtype(q.dtype))
    q = q.contiguous()

    def search(chunk: torch.Tensor, kc: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = chunk.to(device=q.device, dtype=q.dtype).contiguous()
        return torch.ops.ood_zoo.knn(q, chunk, kc, metric, rows)

    stream = stream_rows(rows, q.shape[1], q.element_size())
    return stream_topk(shards, k, metric == "cosine", stream, search)


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
        exact_values, exact_indices = _knn_ext(qf[overflow], shards, k, metric, rows)
        values[overflow], indices[overflow] = exact_values, exact_indices
    return values, indices


def _knn_faiss(
    q: torch.Tensor, shards: list[torch.Tensor], k: int, metric: Metric, rows: int
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
    xq = q.to(device="cpu", dtype=torch.float32)
    xq = (normalise_rows(xq) if cosine else xq).contiguous().numpy()
    d = q.shape[1]

    def search(chunk: torch.Tensor, kc: int) -> tuple[torch.Tensor, torch.Tensor]:
        xb = chunk.to(device="cpu", dtype=torch.float32)
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
    return values.to(compute_dtype(q.dtype)), indices

