"""The input contract of the ops and the detectors: validation, numpy/torch conversion, dtypes.

Inputs may be numpy arrays (a ``np.memmap`` included) or torch tensors on any device, in
fp16/bf16/fp32/fp64. Every valid array is accepted: numpy views with negative strides and arrays
in non-native byte order are copied (the only inputs that are), tensors that require grad are
detached (the ops are not differentiable); a native, positive-stride memmap stays zero-copy.
Computation happens in float32, or float64 when the input is float64, so half-precision inputs
are always accumulated in fp32 or better. Outputs come back as the kind that went in: a numpy
array for numpy input, a tensor on the input's device for torch input.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError

ArrayLike = np.ndarray | torch.Tensor
#: A bank of rows: one ``[N, d]`` array, or a list of arrays (shards) that together form it.
Bank = ArrayLike | Sequence[ArrayLike]

#: Rows checked at a time for NaN/Inf, so that a memmap bank is never loaded whole.
_FINITE_CHECK_ROWS = 65_536


@dataclass(frozen=True)
class ArrayKind:
    """Where an input came from, so that the output can go back the same way."""

    is_numpy: bool
    device: torch.device

    @classmethod
    def of(cls, array: ArrayLike) -> ArrayKind:
        if isinstance(array, torch.Tensor):
            return cls(is_numpy=False, device=array.device)
        return cls(is_numpy=True, device=torch.device("cpu"))

    def wrap(self, tensor: torch.Tensor) -> ArrayLike:
        """Return ``tensor`` as this kind: numpy on the CPU, or a tensor on the input's device."""
        if self.is_numpy:
            return tensor.detach().cpu().numpy()
        return tensor.to(self.device)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype for an input dtype: float64 stays float64, all else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_tensor(array: Any, *, name: str) -> torch.Tensor:
    """View ``array`` as a torch tensor without copying where possible (numpy memmaps included).

    Numpy arrays with a negative stride or in non-native byte order are copied into native,
    positive-stride ones (torch can view neither); a tensor that requires grad is detached.

    Raises
    ------
    InputError
        If ``array`` is not a numpy array or a strided torch tensor of a real floating or integer
        dtype torch can hold.
    """
    if isinstance(array, torch.Tensor):
        if array.layout != torch.strided:
            raise InputError(f"{name}: expected a dense tensor, got layout {array.layout}")
        return array.detach() if array.requires_grad else array
    if isinstance(array, np.ndarray):
        array = np.asarray(array)
        if array.dtype.kind not in "fiu" or array.dtype.itemsize > 8:
            raise InputError(f"{name}: unsupported numpy dtype {array.dtype}")
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        if any(stride < 0 for stride in array.strides):
            array = array.copy()
        with warnings.catch_warnings():
            # A read-only memmap is fine: ood_zoo never writes into its inputs.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(array)
    raise InputError(
        f"{name}: expected a numpy array or a torch tensor, got {type(array).__name__}"
    )


def check_positive_int(value: Any, *, name: str) -> int:
    """``value`` as an int, if it is a positive integer (a numpy integer too, never a bool).

    Raises
    ------
    InputError
        Naming the parameter, for anything else (``2.5``, ``"3"``, ``True``, ``0``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_search(queries: torch.Tensor, k: Any, *, n_rows: int, dim: int) -> int:
    """``k`` as an int, if checked ``queries`` of a kNN search fit a bank of ``n_rows × dim``.

    Raises
    ------
    InputError
        If the queries have another width than the bank, or ``k`` is not an int in
        ``[1, n_rows]``.
    """
    if queries.shape[1] != dim:
        raise InputError(f"queries have {queries.shape[1]} features but the bank has {dim}")
    k = check_positive_int(k, name="k")
    if k > n_rows:
        raise InputError(f"k={k} is larger than the bank ({n_rows} rows)")
    return k


def check_matrix(
    array: Any,
    *,
    name: str,
    n_features: int | None = None,
    allow_empty: bool = False,
    finite: bool = True,
    layered: bool = False,
) -> torch.Tensor:
    """Validate a 2-D floating feature matrix and return it as a tensor (no copy, no upcast).

    ``finite=False`` leaves the NaN/Inf check to the caller (one that reads every value anyway).
    ``layered=True`` expects per-layer features ``[n_samples, n_layers, n_features]`` instead.

    Checks the rank, the dtype, emptiness, the feature dimension (the last axis) against
    ``n_features`` and that every value is finite. The finiteness check runs in bounded-memory
    row chunks.
    """
    tensor = as_tensor(array, name=name)
    if not tensor.is_floating_point():
        raise InputError(f"{name}: expected floating-point values, got dtype {tensor.dtype}")
    rank, axes = (3, "n_samples, n_layers, n_features") if layered else (2, "n_samples, n_features")
    if tensor.dim() != rank:
        raise InputError(
            f"{name}: expected a {rank}-D array of shape [{axes}], "
            f"got {tensor.dim()}-D with shape {tuple(tensor.shape)}"
        )
    if not allow_empty and 0 in tensor.shape:
        raise InputError(f"{name}: empty input of shape {tuple(tensor.shape)}")
    if n_features is not None and tensor.shape[-1] != n_features:
        raise InputError(
            f"{name}: has {tensor.shape[-1]} features, but the detector was fitted with "
            f"{n_features}"
        )
    if finite:
        check_finite(tensor, name=name)
    return tensor


@dataclass(frozen=True)
class RowPeaks:
    """The range of a matrix's row peaks ``max_j |x_ij|``, zero rows left out of both ends.

    ``low`` is the smallest nonzero peak (``inf`` if every row is zero), ``high`` the largest
    (``0.0`` then). They bound the row norms: ``peak <= |x| <= sqrt(d) peak``.
    """

    low: float = math.inf
    high: float = 0.0

    def merge(self, other: RowPeaks) -> RowPeaks:
        """The range over both matrices' rows."""
        return RowPeaks(min(self.low, other.low), max(self.high, other.high))


def check_finite(tensor: torch.Tensor, *, name: str, first_row: int = 0) -> RowPeaks:
    """Raise :class:`InputError` naming the first row that holds NaN or Inf (numbered from
    ``first_row``, the position of a shard's first row in its bank); return the row peaks.

    One bounded-memory pass (``aminmax`` per row chunk, which propagates NaN) both checks the
    values and measures their range, so the peaks cost nothing over the check. A 1-D tensor counts
    as one row; a 3-D tensor is checked by its first axis (its peaks are then per row and column).
    """
    rows = tensor.reshape(1, -1) if tensor.dim() == 1 else tensor
    peaks = RowPeaks()
    if rows.numel() == 0:
        return peaks
    for start in range(0, rows.shape[0], _FINITE_CHECK_ROWS):
        low, high = torch.aminmax(rows[start : start + _FINITE_CHECK_ROWS], dim=1)
        peak = torch.maximum(high, -low)
        bad = ~torch.isfinite(peak)
        if bad.any():
            row = first_row + start + int(bad.nonzero()[0, 0])
            kind = "NaN" if torch.isnan(peak).any() else "Inf"
            raise InputError(f"{name}: contains {kind} (first bad row {row})")
        nonzero = peak[peak > 0]
        if nonzero.numel():
            low_high = torch.aminmax(nonzero.to(torch.float64))
            peaks = peaks.merge(RowPeaks(float(low_high.min), float(low_high.max)))
    return peaks


def bank_peaks(shards: list[torch.Tensor]) -> RowPeaks:
    """:func:`check_finite` over every shard of a bank: one pass, the peaks of all its rows (a bad
    row is named by its position in the whole bank)."""
    peaks, offset = RowPeaks(), 0
    for shard in shards:
        peaks = peaks.merge(check_finite(shard, name="bank", first_row=offset))
        offset += shard.shape[0]
    return peaks


def check_bank(bank: Bank, *, finite: bool = True) -> list[torch.Tensor]:
    """Validate a bank (one matrix or a list of shards) and return its shards as tensors.

    Shards may be empty, but not all of them; they must share their feature dimension.
    ``finite=False`` leaves the NaN/Inf check to the caller (a kernel that reads every row).
    """
    shards = list(bank) if isinstance(bank, list | tuple) else [bank]
    if not shards:
        raise InputError("bank: no shards given")
    tensors = [check_matrix(s, name="bank", allow_empty=True, finite=False) for s in shards]
    widths = {t.shape[1] for t in tensors}
    if len(widths) != 1:
        raise InputError(f"bank: shards have different feature dimensions {sorted(widths)}")
    if sum(t.shape[0] for t in tensors) == 0:
        raise InputError("bank: empty input")
    if finite:
        bank_peaks(tensors)
    return tensors


def check_labels(labels: Any, *, n_samples: int, name: str = "labels") -> torch.Tensor:
    """Validate class labels: 1-D integers of length ``n_samples``. Returns an int64 CPU tensor."""
    tensor = as_tensor(labels, name=name)
    if tensor.dim() != 1:
        raise InputError(f"{name}: expected a 1-D array, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] != n_samples:
        raise InputError(
            f"{name}: has {tensor.shape[0]} entries but there are {n_samples} samples"
        )
    if tensor.is_floating_point():
        if not torch.all(tensor == tensor.round()):
            raise InputError(f"{name}: expected integer class labels, got non-integer floats")
    elif tensor.dtype == torch.bool or tensor.is_complex():
        raise InputError(f"{name}: expected integer class labels, got dtype {tensor.dtype}")
    return tensor.to(device="cpu", dtype=torch.int64)
