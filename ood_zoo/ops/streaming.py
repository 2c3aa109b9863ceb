"""Bounded-memory streaming over a bank: chunk sizes, chunks, merging per-chunk top-k, rows.

The streaming ops never materialise their ``[Q, N]`` score matrix: the bank (a tensor, a numpy
memmap or a list of shards) is read a chunk at a time, each chunk's top-k merged into a running
one. :data:`CHUNK_BYTES` bounds the scratch memory of one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..errors import InputError

#: Bytes of scratch one chunk of a streaming op may use (its similarity block plus its upcast).
CHUNK_BYTES = 256 * 2**20
#: ``search(chunk, k) -> (values, chunk-local indices)``: one chunk's top-k, best first.
ChunkSearch = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def chunks(shards: list[torch.Tensor], rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(global_offset, chunk)`` over the shards, ``rows`` rows at a time."""
    offset = 0
    for shard in shards:
        for start in range(0, shard.shape[0], rows):
            yield offset + start, shard[start : start + rows]
        offset += shard.shape[0]


def bank_rows(shards: list[torch.Tensor], indices: Any) -> torch.Tensor:
    """The rows at global positions ``indices`` (1-D integers, any order) of a bank in shards,
    as a new ``[len, d]`` tensor in the bank's dtype on its device; only those rows are read
    from a memmap. Shard ``s`` holds the rows after those of shards ``0 .. s-1``.

    Raises
    ------
    InputError
        If ``indices`` is not a 1-D integer array, or one lies outside ``[0, N)``.
    """
    rows = torch.as_tensor(indices).cpu()
    if rows.dim() != 1 or rows.is_floating_point() or rows.is_complex() \
            or rows.dtype == torch.bool:
        raise InputError(f"row indices must be a 1-D integer array, got {rows.dtype} "
                         f"of shape {tuple(rows.shape)}")
    rows = rows.to(torch.int64)
    n_rows = sum(shard.shape[0] for shard in shards)
    if rows.numel() and not (int(rows.min()) >= 0 and int(rows.max()) < n_rows):
        raise InputError(f"row indices must lie in [0, {n_rows}), got "
                         f"[{int(rows.min())}, {int(rows.max())}]")
    device = shards[0].device
    out = torch.empty((rows.numel(), shards[0].shape[1]), dtype=shards[0].dtype, device=device)
    offset = 0
    for shard in shards:
        n = shard.shape[0]
        inside = ((rows >= offset) & (rows < offset + n)).nonzero().squeeze(1)
        if inside.numel():
            out[inside.to(device)] = shard[(rows[inside] - offset).to(shard.device)].to(out.dtype)
        offset += n
    return out


def default_chunk_rows(n_queries: int, dim: int) -> int:
    """Bank rows per chunk: a chunk's ``[Q, rows]`` block plus its upcast fit CHUNK_BYTES."""
    return max(256, CHUNK_BYTES // (4 * (n_queries + dim)))


def stream_rows(tile_rows: int, dim: int, itemsize: int) -> int:
    """Bank rows converted at once by the ext/faiss backends: whole tiles, about CHUNK_BYTES."""
    tiles = CHUNK_BYTES // max(1, dim * itemsize * tile_rows)
    return tile_rows * max(1, tiles)


def stream_topk(
    shards: list[torch.Tensor], k: int, largest: bool, rows: int, search: ChunkSearch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the per-chunk top-k of ``search`` over the bank into a global top-k, best first."""
    best_values = best_indices = None
    for offset, chunk in chunks(shards, rows):
        values, indices = search(chunk, min(k, chunk.shape[0]))
        indices = indices + offset
        if best_values is not None:
            values = torch.cat([best_values, values], dim=1)
            indices = torch.cat([best_indices, indices], dim=1)
            picked = values.topk(min(k, values.shape[1]), dim=1, largest=largest, sorted=False)
            values, indices = picked.values, indices.gather(1, picked.indices)
        best_values, best_indices = values, indices
    return sort_heaps(best_values, best_indices, largest=largest)


def sort_heaps(
    values: torch.Tensor, indices: torch.Tensor, *, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Order top-k heaps best first, equal values by the lower index."""
    by_index = indices.argsort(dim=1)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    order = values.argsort(dim=1, descending=largest, stable=True)
    return values.gather(1, order), indices.gather(1, order)
