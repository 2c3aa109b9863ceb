"""Helpers shared by the built-in detectors: bounded-memory row chunks and dtype handling.

Inputs reach a detector as validated tensors in their original dtype and storage (possibly a
numpy memmap), so nothing here copies or upcasts a whole matrix: work is done a chunk of rows
at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from ..errors import InputError
from ..ops.arrays import compute_dtype

#: Bytes one upcast chunk of rows may take.
SCRATCH_BYTES = 128 * 2**20
#: Never more than this many rows per chunk.
MAX_CHUNK_ROWS = 16_384


def rows_per_chunk(width: int, *, itemsize: int = 8) -> int:
    """Rows per chunk so that a ``[rows, width]`` block of ``itemsize``-byte values fits."""
    return max(1, min(MAX_CHUNK_ROWS, SCRATCH_BYTES // (itemsize * max(width, 1))))


def row_chunks(x: torch.Tensor, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, x[start:start + rows])`` over the rows of ``x`` (views, no copies)."""
    for start in range(0, x.shape[0], rows):
        yield start, x[start : start + rows]


def map_rows(
    x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], *, width: int | None = None,
) -> torch.Tensor:
    """Concatenate ``fn(chunk)`` over row chunks of ``x`` upcast to its compute dtype.

    ``width`` is the per-row scratch width ``fn`` needs (default: ``x``'s width); it sets the
    chunk size.
    """
    dtype = compute_dtype(x.dtype)
    rows = rows_per_chunk(width or x.shape[1], itemsize=torch.finfo(dtype).bits // 8)
    return torch.cat([fn(chunk.to(dtype)) for _, chunk in row_chunks(x, rows)])


def to_numpy64(x: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy of ``x``, filled chunk by chunk (for scikit-learn estimators)."""
    out = np.empty(tuple(x.shape), dtype=np.float64)
    for start, chunk in row_chunks(x, rows_per_chunk(x.shape[1])):
        out[start : start + chunk.shape[0]] = chunk.detach().to("cpu", torch.float64).numpy()
    return out


def check_state_shapes(owner: str, **shapes: tuple[torch.Tensor, tuple[int | None, ...]]) -> None:
    """Raise ``ValueError`` unless each named tensor has the expected shape (``None`` = any)."""
    for name, (tensor, expected) in shapes.items():
        ok = tensor.dim() == len(expected) and all(
            e is None or s == e for s, e in zip(tensor.shape, expected, strict=True)
        )
        if not ok:
            raise ValueError(
                f"{owner}: state tensor {name!r} has shape {tuple(tensor.shape)}, expected "
                f"{tuple('*' if e is None else e for e in expected)}"
            )


def map_feature_logit_rows(
    features: torch.Tensor, logits: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, width: int | None = None,
) -> torch.Tensor:
    """Concatenate ``fn(feature_chunk, logit_chunk)`` over matching row chunks of both inputs,
    each upcast to its compute dtype; ``width`` as for :func:`map_rows` (default: both widths)."""
    dtype = compute_dtype(features.dtype)
    width = width or features.shape[1] + logits.shape[1]
    rows = rows_per_chunk(width, itemsize=torch.finfo(dtype).bits // 8)
    return torch.cat([
        fn(chunk.to(dtype), logits[start : start + chunk.shape[0]].to(compute_dtype(logits.dtype)))
        for start, chunk in row_chunks(features, rows)
    ])


def check_scores_representable(
    owner: str, scores: torch.Tensor, dtype: torch.dtype,
) -> torch.Tensor:
    """``scores`` cast to ``dtype``; an :class:`InputError` if one is beyond that dtype's range
    (a product of two large inputs, such as energy times guidance, with inputs far outside the
    safe range)."""
    out = scores.to(dtype)
    if not bool(torch.isfinite(out).all()):
        raise InputError(
            f"{owner}: scores overflow {dtype}: the inputs' magnitudes are far beyond the safe "
            f"range; rescale them"
        )
    return out
