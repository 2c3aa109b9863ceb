"""Which kernel backend and kNN precision the ops use, and what ``ood-zoo doctor`` reports."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import torch

from ..errors import BackendUnavailableError
from . import extension

#: The kernel backends ``OOD_ZOO_BACKEND`` may name (see :mod:`ood_zoo.ops`).
BACKENDS = ("torch", "ext", "faiss")
#: The kNN precisions ``OOD_ZOO_KNN_PRECISION`` may name (see :mod:`ood_zoo.ops.dense`).
PRECISIONS = ("exact", "bf16")


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


def requested_backend() -> str | None:
    """The backend ``OOD_ZOO_BACKEND`` asks for, or None if it is unset.

    Raises
    ------
    ValueError
        If ``OOD_ZOO_BACKEND`` names no backend in :data:`BACKENDS`.
    """
    name = os.environ.get("OOD_ZOO_BACKEND", "").strip().lower()
    if not name:
        return None
    if name not in BACKENDS:
        raise ValueError(f"OOD_ZOO_BACKEND={name!r} is not one of {list(BACKENDS)}")
    return name


def resolve_backend(*, warn: bool) -> str:
    """:func:`backend`, warning about a missing extension only if ``warn``."""
    name = requested_backend()
    if name is None:
        if extension.available():
            return "ext"
        if warn:
            extension.warn_unavailable(stacklevel=4)
        return "torch"
    if name == "ext" and not extension.available():
        raise BackendUnavailableError(
            "OOD_ZOO_BACKEND=ext, but the C++ extension is unavailable "
            f"({extension.load_error()}). Build it with: {extension.BUILD_HINT}"
        )
    return name


def backend() -> str:
    """The kernel backend in use: ``OOD_ZOO_BACKEND`` if set, else ``ext`` if built, else ``torch``.

    Falling back to ``torch`` because the extension is missing emits one
    :class:`~ood_zoo.ops.extension.ExtensionUnavailableWarning` per process.

    Raises
    ------
    ValueError
        If ``OOD_ZOO_BACKEND`` names no backend in :data:`BACKENDS`.
    BackendUnavailableError
        If ``OOD_ZOO_BACKEND=ext`` but the extension could not be loaded.
    """
    return resolve_backend(warn=True)


def backend_for(device: torch.device) -> str:
    """The backend for inputs on ``device``: ``ext`` needs ``_C_cuda`` for CUDA inputs."""
    name = backend()
    if name == "ext" and device.type != "cpu":
        if device.type == "cuda" and extension.cuda_available():
            return name
        if requested_backend() == "ext":
            raise BackendUnavailableError(
                f"OOD_ZOO_BACKEND=ext, but ood_zoo has no compiled kernels for {device} inputs "
                f"(ood_zoo.ops._C_cuda: {extension.cuda_load_error() or 'not built'}). Build it "
                f"on a CUDA machine with: {extension.BUILD_HINT}"
            )
        return "torch"
    return name


def describe_backend() -> dict[str, Any]:
    """What the ops run on, for ``ood-zoo doctor``: backend, extension status, thread counts."""
    try:
        name, error = resolve_backend(warn=False), None
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
        "extension": extension.available(),
        "cuda_extension": extension.cuda_available(),
        "load_error": extension.load_error(),
        "cuda_load_error": extension.cuda_load_error(),
        "knn_precision": _describe_precision(),
        "bf16_gemm_native": bf16_gemm_native(),
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss_threads,
        "cpu_gemm": cpu_gemm_info(),
        "cpu_kernels": cpu_kernels(),
    }


def cpu_gemm_info() -> dict[str, Any] | None:
    """The fp32 tile-GEMM provider of the CPU kernels and its calibration rates (GFLOP/s).

    The first call (or the first kNN/Mahalanobis call) runs the extension's one-off calibration,
    about 0.1-0.5 s; ``OOD_ZOO_GEMM=aten|onednn|openblas`` skips it and forces a provider.
    Returns None without the C++ extension.
    """
    if not extension.available():
        return None
    return json.loads(torch.ops.ood_zoo.gemm_info())


def cpu_kernels() -> str | None:
    """The register blocking of :class:`~ood_zoo.ops.KNNIndex`'s CPU micro-kernels.

    ``"avx512"`` (16-float vectors, 32 registers) on CPUs with x86-64-v4, ``"avx2"`` (8-float
    vectors, 16 registers) on AVX2/FMA CPUs or with ``OOD_ZOO_CPU_KERNELS=avx2``, ``"generic"``
    otherwise. Both blockings sum every dot product in the same order, so results do not depend
    on it; ``OOD_ZOO_CPU_KERNELS=avx2`` exists to measure and test the AVX2 kernels on an
    AVX-512 machine. Read once per process; any other value than ``auto`` or ``avx2`` is an
    error (a ``RuntimeError`` here or at the first pruned search). None without the C++
    extension.
    """
    if not extension.available():
        return None
    return str(torch.ops.ood_zoo.cpu_kernels())


def _describe_precision() -> str:
    try:
        return knn_precision()
    except ValueError as exc:
        return f"error: {exc}"

