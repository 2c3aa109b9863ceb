"""Batched exact kNN and Mahalanobis ops, with interchangeable kernel backends.

Both ops stream over their large operand in bounded-memory chunks, so the ``[Q, N]`` similarity
matrix is never materialised and a bank may be a numpy memmap or a list of shards. Inputs are
numpy arrays or torch tensors (CPU or CUDA, fp16/bf16/fp32/fp64); outputs are of the queries'
kind. Half-precision inputs are accumulated in fp32; fp64 inputs are computed in fp64.

Backends (``OOD_ZOO_BACKEND``, see :func:`backend`):

``ext``
    The compiled ``ood_zoo.ops._C`` (and ``_C_cuda``) kernels: per bank tile a GEMM fused with a
    running per-query top-k. The default when the extension is built.
``torch``
    The pure-torch reference: chunked matmul + ``topk``. The default otherwise.
``faiss``
    kNN through ``faiss.IndexFlatIP`` / ``IndexFlatL2`` per chunk, always in fp32;
    :func:`mahalanobis` uses ``torch``.

Any finite input of any magnitude is computed correctly: inputs beyond the kernels' safe range
(float32 row norms above ``2**62`` ≈ 4.6e18, or l2 queries below ``2**-50``) are rescaled by exact
powers of two on a slower path (:mod:`~ood_zoo.ops.magnitude`), and a result beyond the output
dtype is ``inf``, never NaN. Every valid array is accepted (negative strides, non-native byte
order, tensors that require grad); integer parameters must be ints, else an
:class:`~ood_zoo.errors.InputError` names the parameter.

The modules, one concern each: :mod:`~ood_zoo.ops.arrays` (input validation, shared with the
detectors), :mod:`~ood_zoo.ops.magnitude` (the safe numeric range, exact rescaling, row norms
and normalisation), :mod:`~ood_zoo.ops.extension` (loading the compiled kernels),
:mod:`~ood_zoo.ops.streaming` (chunking a bank, its rows by position), :mod:`~ood_zoo.ops.dense`
(:func:`knn` and its precisions), :mod:`~ood_zoo.ops.index` (:class:`KNNIndex`, and
:class:`SearchIndex`, what any exact index offers the kNN detectors),
:mod:`~ood_zoo.ops.class_distance` (:func:`mahalanobis`). This package imports nothing from the
rest of ood_zoo but its errors.

For detector authors (a plugin's detector follows the same rules as the built-in ones):
:func:`compute_dtype` (the dtype to compute in: float64 stays float64, fp16/bf16/fp32 become
float32) and :func:`normalise_rows` (rows divided by ``max(|x|, NORM_EPS)``, the cosine
convention of :func:`knn`, exact at any magnitude).
"""

from __future__ import annotations

from ._dispatch import (
    BACKENDS,
    PRECISIONS,
    backend,
    bf16_gemm_native,
    cpu_gemm_info,
    cpu_kernels,
    describe_backend,
    knn_precision,
)
from .arrays import Bank, compute_dtype
from .class_distance import mahalanobis
from .dense import BF16_MAX_RESCORE, Metric, knn
from .index import (
    INDEX_MAX_RESIDUAL_ENERGY,
    INDEX_MAX_SURVIVOR_RATE,
    INDEX_MIN_DIM,
    INDEX_MIN_ROWS,
    INDEX_PROBE_QUERIES,
    INDEX_RANK,
    INDEX_RANK_WIDE,
    INDEX_SAMPLE_ROWS,
    INDEX_SEED_FACTOR,
    INDEX_WIDE_DIM,
    KNNIndex,
    SearchIndex,
)
from .magnitude import NORM_EPS, normalise_rows
from .streaming import CHUNK_BYTES, bank_rows, default_chunk_rows

__all__ = [
    "BACKENDS",
    "BF16_MAX_RESCORE",
    "CHUNK_BYTES",
    "INDEX_MAX_RESIDUAL_ENERGY",
    "INDEX_MAX_SURVIVOR_RATE",
    "INDEX_MIN_DIM",
    "INDEX_MIN_ROWS",
    "INDEX_PROBE_QUERIES",
    "INDEX_RANK",
    "INDEX_RANK_WIDE",
    "INDEX_SAMPLE_ROWS",
    "INDEX_SEED_FACTOR",
    "INDEX_WIDE_DIM",
    "NORM_EPS",
    "PRECISIONS",
    "Bank",
    "KNNIndex",
    "Metric",
    "SearchIndex",
    "backend",
    "bank_rows",
    "bf16_gemm_native",
    "compute_dtype",
    "cpu_gemm_info",
    "cpu_kernels",
    "default_chunk_rows",
    "describe_backend",
    "knn",
    "knn_precision",
    "mahalanobis",
    "normalise_rows",
]
