"""Loader of the compiled kernels ``ood_zoo.ops._C`` (CPU) and ``ood_zoo.ops._C_cuda`` (CUDA).

Importing an extension registers the ops ``torch.ops.ood_zoo.knn`` and
``torch.ops.ood_zoo.mahalanobis`` with torch's dispatcher. Loading is lazy (the first call to
:func:`available`) and never raises: a missing or broken build is recorded in :func:`load_error`,
and :mod:`ood_zoo.ops` then falls back to its pure-torch reference, after one
:class:`ExtensionUnavailableWarning` per process (:func:`warn_unavailable`).
"""

from __future__ import annotations

import importlib
import threading
import warnings

import torch

BUILD_HINT = "pip install --no-build-isolation -e . (with torch already installed)"

_lock = threading.Lock()
_loaded = False
_cpu_ok = False
_cuda_ok = False
_error: str | None = None
_cuda_error: str | None = None
_warned = False


class ExtensionUnavailableWarning(RuntimeWarning):
    """The C++ extension could not be loaded; the slower pure-torch reference is used."""


def _import(name: str) -> str | None:
    """Import ``ood_zoo.ops.<name>``; return None on success, else why it failed."""
    module = f"{__package__}.{name}"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return f"{module} is not built"
        return f"{type(exc).__name__}: {exc}"
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    except OSError as exc:  # a shared library that is present but cannot be loaded
        return f"{type(exc).__name__}: {exc}"
    return None


def _load() -> None:
    global _loaded, _cpu_ok, _cuda_ok, _error, _cuda_error
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        _error = _import("_C")
        _cpu_ok = _error is None
        if _cpu_ok:
            # _C defines the op schemas, so the CUDA kernels are registered after it. A missing
            # _C_cuda is the normal state of a CPU build and is not an error.
            _cuda_error = _import("_C_cuda")
            _cuda_ok = _cuda_error is None
            _register_fake_kernels()
        _loaded = True


def _register_fake_kernels() -> None:
    """Shape-only kernels, so that the ops work under FakeTensor, ``torch.compile`` and opcheck."""

    def _out_dtype(t: torch.Tensor) -> torch.dtype:
        return torch.float64 if t.dtype == torch.float64 else torch.float32

    @torch.library.register_fake("ood_zoo::knn")
    def _knn_fake(queries, bank, k, metric, tile_rows):
        shape = (queries.shape[0], k)
        return (
            queries.new_empty(shape, dtype=_out_dtype(queries)),
            queries.new_empty(shape, dtype=torch.int64),
        )

    @torch.library.register_fake("ood_zoo::mahalanobis")
    def _mahalanobis_fake(queries, whitening, class_means, center, tile_rows):
        shape = (queries.shape[0],)
        return (
            queries.new_empty(shape, dtype=_out_dtype(queries)),
            queries.new_empty(shape, dtype=torch.int64),
        )


def available() -> bool:
    """Whether the CPU extension ``ood_zoo.ops._C`` is loaded (loading it on first call)."""
    _load()
    return _cpu_ok


def cuda_available() -> bool:
    """Whether the CUDA extension ``ood_zoo.ops._C_cuda`` is loaded as well."""
    _load()
    return _cuda_ok


def load_error() -> str | None:
    """Why ``ood_zoo.ops._C`` could not be loaded, or None if it was."""
    _load()
    return _error


def cuda_load_error() -> str | None:
    """Why ``ood_zoo.ops._C_cuda`` could not be loaded (None if loaded; a CPU build lacks it)."""
    _load()
    return _cuda_error


def warn_unavailable(stacklevel: int = 3) -> None:
    """Emit the "extension unavailable" warning, at most once per process."""
    global _warned
    if _warned or available():
        return
    _warned = True
    warnings.warn(
        f"ood_zoo's C++ extension is unavailable ({_error}); using the pure-torch reference "
        f"kernels instead. Build it with: {BUILD_HINT}. Set OOD_ZOO_BACKEND=torch to silence "
        "this warning.",
        ExtensionUnavailableWarning,
        stacklevel=stacklevel,
    )
