"""Batched exact kNN and Mahalanobis ops, with interchangeable kernel backends.

Both ops stream over their large operand in bounded-memory chunks, so the ``[Q, N]`` similarity
matrix is never materialised and a bank may be a numpy memmap or a list of shards. Inputs are
numpy arrays or torch tensors (CPU or CUDA, fp16/bf16/fp32/fp64); outputs are of the queries'
kind. Half-precision inputs are accumulated in fp32; fp64 inputs are computed in fp64.

Backends (``OOD_ZOO_BACKEND``, see :func:`backend`):

``ext``
    The compiled ``ood_zoo._C`` (and ``_C_cuda``) kernels: per bank tile a GEMM fused with a
    running per-query top-k. The default when the extension is built.
``torch``
    The pure-torch reference: chunked matmul + ``topk``. The default otherwise.
``faiss``
    kNN through ``faiss.IndexFlatIP`` / ``IndexFlatL2`` per chunk, always in fp32;
    :func:`mahalanobis` uses ``torch``.

kNN precision (``knn(..., precision=...)``, default from ``OOD_ZOO_KNN_PRECISION``, see
:func:`knn_precision`):

``exact`` (the default)
    Every GEMM in fp32 (fp64 for fp64 queries). On the CPU the ``ext`` kernels' fp32 tile GEMMs
    go through one provider (ATen/MKL, oneDNN or a vendored OpenBLAS) picked by a one-off
    measurement per process; ``OOD_ZOO_GEMM`` forces one, :func:`cpu_gemm_info` reports it.
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
import functools
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch

from . import _ext
from ._arrays import ArrayKind, ArrayLike, as_tensor, check_finite, check_matrix, compute_dtype
from .errors import BackendUnavailableError, InputError

Metric = Literal["cosine", "l2"]
Bank = ArrayLike | Sequence[ArrayLike]
#: ``search(chunk, k) -> (values, chunk-local indices)``: one chunk's top-k, best first.
_ChunkSearch = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]

#: Bytes of scratch one chunk of a streaming op may use (its similarity block plus its upcast).
CHUNK_BYTES = 256 * 2**20
#: Smallest norm treated as non-zero when normalising for cosine similarity.
_NORM_EPS = 1e-12

BACKENDS = ("torch", "ext", "faiss")
PRECISIONS = ("exact", "bf16")
#: Exact re-scores one query may need in ``precision="bf16"`` (at least ``32 k``) before it is
#: recomputed in fp32 instead (adversarial near-ties, or data on which bf16 cannot separate).
BF16_MAX_RESCORE = 4096


def knn_precision() -> str:
    """The default kNN precision: ``OOD_ZOO_KNN_PRECISION`` (``exact`` or ``bf16``), else exact.

    Raises
    ------
    ValueError
        If ``OOD_ZOO_KNN_PRECISION`` names no precision in :data:`PRECISIONS`.
    """
    name = os.environ.get("OOD_ZOO_KNN_PRECISION", "").strip().lower() or "exact"
    if name not in PRECISIONS:
        raise ValueError(f"OOD_ZOO_KNN_PRECISION={name!r} is not one of {list(PRECISIONS)}")
    return name


@functools.cache
def bf16_gemm_native() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16), per /proc/cpuinfo.

    Without it (e.g. AVX2-only CPUs) torch's bf16 matmul is emulated and slower than fp32, so
    ``precision="bf16"`` runs the exact fp32 kernel instead.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def _requested_backend() -> str | None:
    name = os.environ.get("OOD_ZOO_BACKEND", "").strip().lower()
    if not name:
        return None
    if name not in BACKENDS:
        raise ValueError(f"OOD_ZOO_BACKEND={name!r} is not one of {list(BACKENDS)}")
    return name


def _resolve_backend(*, warn: bool) -> str:
    name = _requested_backend()
    if name is None:
        if _ext.available():
            return "ext"
        if warn:
            _ext.warn_unavailable(stacklevel=4)
        return "torch"
    if name == "ext" and not _ext.available():
        raise BackendUnavailableError(
            f"OOD_ZOO_BACKEND=ext, but the C++ extension is unavailable ({_ext.load_error()}). "
            f"Build it with: {_ext.BUILD_HINT}"
        )
    return name


def backend() -> str:
    """The kernel backend in use: ``OOD_ZOO_BACKEND`` if set, else ``ext`` if built, else ``torch``.

    Falling back to ``torch`` because the extension is missing emits one
    :class:`~ood_zoo._ext.ExtensionUnavailableWarning` per process.

    Raises
    ------
    ValueError
        If ``OOD_ZOO_BACKEND`` names no backend in :data:`BACKENDS`.
    BackendUnavailableError
        If ``OOD_ZOO_BACKEND=ext`` but the extension could not be loaded.
    """
    return _resolve_backend(warn=True)


def _backend_for(device: torch.device) -> str:
    """The backend for inputs on ``device``: ``ext`` needs ``_C_cuda`` for CUDA inputs."""
    name = backend()
    if name == "ext" and device.type != "cpu":
        if device.type == "cuda" and _ext.cuda_available():
            return name
        if _requested_backend() == "ext":
            raise BackendUnavailableError(
                f"OOD_ZOO_BACKEND=ext, but ood_zoo has no compiled kernels for {device} inputs "
                f"(ood_zoo._C_cuda: {_ext.cuda_load_error() or 'not built'}). Build it on a "
                f"CUDA machine with: {_ext.BUILD_HINT}"
            )
        return "torch"
    return name


def describe_backend() -> dict[str, Any]:
    """What the ops run on, for ``ood-zoo doctor``: backend, extension status, thread counts."""
    try:
        name, error = _resolve_backend(warn=False), None
    except (ValueError, BackendUnavailableError) as exc:
        name, error = None, str(exc)
    try:
        import faiss

        faiss_threads = int(faiss.omp_get_max_threads())
    except ImportError:
        faiss_threads = None
    return {
        "backend": name,
        "backend_error": error,
        "requested": os.environ.get("OOD_ZOO_BACKEND") or None,
        "backends": list(BACKENDS),
        "extension": _ext.available(),
        "cuda_extension": _ext.cuda_available(),
        "load_error": _ext.load_error(),
        "cuda_load_error": _ext.cuda_load_error(),
        "knn_precision": _describe_precision(),
        "bf16_gemm_native": bf16_gemm_native(),
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss_threads,
        "cpu_gemm": cpu_gemm_info(),
    }


def cpu_gemm_info() -> dict[str, Any] | None:
    """The fp32 tile-GEMM provider of the CPU kernels and its calibration rates (GFLOP/s).

    The first call (or the first kNN/Mahalanobis call) runs the extension's one-off calibration,
    about 0.1-0.5 s; ``OOD_ZOO_GEMM=aten|onednn|openblas`` skips it and forces a provider.
    Returns None without the C++ extension.
    """
    if not _ext.available():
        return None
    return json.loads(torch.ops.ood_zoo.gemm_info())


def _describe_precision() -> str:
    try:
        return knn_precision()
    except ValueError as exc:
        return f"error: {exc}"


def _bank_matrix(shard: ArrayLike, *, check_values: bool) -> torch.Tensor:
    if check_values:
        return check_matrix(shard, name="bank", allow_empty=True)
    tensor = as_tensor(shard, name="bank")
    # every check but finiteness (the kernel reports non-finite rows; see _kernel_finite_check)
    check_matrix(tensor[:0] if tensor.dim() == 2 else tensor, name="bank", allow_empty=True)
    return tensor


def _bank_shards(bank: Bank, *, check_values: bool = True) -> list[torch.Tensor]:
    shards = list(bank) if isinstance(bank, list | tuple) else [bank]
    if not shards:
        raise InputError("bank: no shards given")
    tensors = [_bank_matrix(s, check_values=check_values) for s in shards]
    widths = {t.shape[1] for t in tensors}
    if len(widths) != 1:
        raise InputError(f"bank: shards have different feature dimensions {sorted(widths)}")
    if sum(t.shape[0] for t in tensors) == 0:
        raise InputError("bank: empty input")
    return tensors


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


def _chunks(shards: list[torch.Tensor], rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(global_offset, chunk)`` over the shards, ``rows`` rows at a time."""
    offset = 0
    for shard in shards:
        for start in range(0, shard.shape[0], rows):
            yield offset + start, shard[start : start + rows]
        offset += shard.shape[0]


def default_chunk_rows(n_queries: int, dim: int) -> int:
    """Bank rows per chunk: a chunk's ``[Q, rows]`` block plus its upcast fit CHUNK_BYTES."""
    return max(256, CHUNK_BYTES // (4 * (n_queries + dim)))


def _stream_rows(tile_rows: int, dim: int, itemsize: int) -> int:
    """Bank rows converted at once by the ext/faiss backends: whole tiles, about CHUNK_BYTES."""
    tiles = CHUNK_BYTES // max(1, dim * itemsize * tile_rows)
    return tile_rows * max(1, tiles)


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
        How the GEMMs run; both give exact results (see the module docstring). By default
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
    name = _backend_for(q.device)
    # The CPU kernels check the bank's finiteness themselves, in the same pass.
    kernel_checks = name == "ext" and q.device.type == "cpu"
    shards = _bank_shards(bank, check_values=not kernel_checks)
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
        q = q / q.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)
    else:
        q_sq = (q * q).sum(dim=1, keepdim=True)
    best_values = best_indices = None
    for offset, chunk in _chunks(shards, rows):
        c = chunk.to(device=q.device, dtype=dtype)
        block = q @ c.T
        if largest:
            block /= c.norm(dim=1).clamp_min(_NORM_EPS)
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
    order = best_values.argsort(dim=1, descending=largest, stable=True)
    best_values, best_indices = best_values.gather(1, order), best_indices.gather(1, order)
    if not largest:
        best_values = best_values.sqrt()
    return best_values, best_indices


def _stream_topk(
    shards: list[torch.Tensor], k: int, largest: bool, rows: int, search: _ChunkSearch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the per-chunk top-k of ``search`` over the bank into a global top-k, best first."""
    best_values = best_indices = None
    for offset, chunk in _chunks(shards, rows):
        values, indices = search(chunk, min(k, chunk.shape[0]))
        indices = indices + offset
        if best_values is not None:
            values = torch.cat([best_values, values], dim=1)
            indices = torch.cat([best_indices, indices], dim=1)
            picked = values.topk(min(k, values.shape[1]), dim=1, largest=largest, sorted=False)
            values, indices = picked.values, indices.gather(1, picked.indices)
        best_values, best_indices = values, indices
    order = best_values.argsort(dim=1, descending=largest, stable=True)
    return best_values.gather(1, order), best_indices.gather(1, order)


def _knn_ext(
    q: torch.Tensor, shards: list[torch.Tensor], k: int, metric: Metric, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.ood_zoo.knn`` per chunk (tiles of ``rows`` inside), chunks merged here."""
    q = q.to(compute_dtype(q.dtype)).contiguous()

    def search(chunk: torch.Tensor, kc: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = chunk.to(device=q.device, dtype=q.dtype).contiguous()
        return torch.ops.ood_zoo.knn(q, chunk, kc, metric, rows)

    stream = _stream_rows(rows, q.shape[1], q.element_size())
    return _stream_topk(shards, k, metric == "cosine", stream, search)


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
    for offset, chunk in _chunks(shards, _stream_rows(rows, q.shape[1], 4)):
        if chunk.shape[0]:
            torch.ops.ood_zoo.knn_bf16_update(
                qf, chunk.contiguous(), offset, values, indices, counts, metric, rows, cap
            )
    # best first; equal values by the lower index
    by_index = indices.argsort(dim=1)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    order = values.argsort(dim=1, descending=cosine, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    if not cosine:
        values = values.sqrt()
    values = values.to(torch.float32)
    overflow = (counts < 0).nonzero().squeeze(1)
    if overflow.numel():
        exact_values, exact_indices = _knn_ext(qf[overflow], shards, k, metric, rows)
        values[overflow], indices[overflow] = exact_values, exact_indices
    return values, indices


def _normalise_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)


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
    xq = (_normalise_rows(xq) if cosine else xq).contiguous().numpy()
    d = q.shape[1]

    def search(chunk: torch.Tensor, kc: int) -> tuple[torch.Tensor, torch.Tensor]:
        xb = chunk.to(device="cpu", dtype=torch.float32)
        xb = (_normalise_rows(xb) if cosine else xb).contiguous().numpy()
        index = faiss.IndexFlatIP(d) if cosine else faiss.IndexFlatL2(d)
        index.add(xb)
        values, indices = index.search(xq, kc)
        values = torch.from_numpy(values)
        if not cosine:
            values = values.clamp_min_(0).sqrt_()  # IndexFlatL2 returns squared distances
        return values, torch.from_numpy(indices)

    stream = _stream_rows(rows, d, 4)
    values, indices = _stream_topk(shards, k, cosine, stream, search)
    return values.to(compute_dtype(q.dtype)), indices


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
    if _backend_for(x.device) == "ext":
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
