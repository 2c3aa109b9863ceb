"""ShardedIndex: exact kNN over a bank in shards, one ``ood_zoo.ops.KNNIndex`` per Ray actor.

A kNN top-k shards exactly: the k best of the whole bank are among the union of each shard's k
best. Each actor holds a contiguous run of shards (``.npy`` files memmapped in the actor, or
arrays put once in Ray's object store, read there without a copy), builds a
:class:`ood_zoo.ops.KNNIndex` over them and answers ``search`` with its local top-k; the driver
merges them. The result is that of :func:`ood_zoo.ops.knn` over the concatenated bank.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from ood_zoo import ops
from ood_zoo.errors import InputError
from ood_zoo.ops.arrays import ArrayKind, check_matrix, check_positive_int, check_search

from .cluster import ensure_ray, torch_threads

#: How often a dead actor is restarted, and a search it was running retried, by default.
MAX_RESTARTS = 3


class ShardSearcher:
    """One actor's part of a :class:`ShardedIndex`: a ``KNNIndex`` over its shards, in order.

    The index is built on first use (:meth:`build`), so an actor that Ray restarts after a
    failure rebuilds it at the first search it retries.
    """

    def __init__(self, names: list[str], sources: list[Any], metric: str,
                 options: dict[str, Any], threads: int) -> None:
        torch.set_num_threads(threads)
        self.names, self.metric, self.options, self.sources = names, metric, options, sources
        self.index: ops.KNNIndex | None = None

    def build(self) -> dict[str, Any]:
        """Build the index if not yet built; its :meth:`~ood_zoo.ops.KNNIndex.stats`.

        Raises
        ------
        InputError
            Naming this actor's shards, if the index refuses them (NaN/Inf rows, say).
        """
        if self.index is None:
            ray = ensure_ray()
            # a path is memmapped here; an object-store array is read in place (no copy)
            shards = [np.load(s, mmap_mode="r") if isinstance(s, str) else ray.get(s)
                      for s in self.sources]
            with self._naming_shards():
                self.index = ops.KNNIndex(shards, self.metric, **self.options)
        return {**self.index.stats(), "pid": os.getpid()}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """The local top-``min(k, rows)`` (indices local to this actor's shards) and the
        seconds the search took here."""
        self.build()
        start = time.perf_counter()
        with self._naming_shards():
            values, indices = self.index.search(queries, min(k, self.index.n_rows))
        return values, indices, time.perf_counter() - start

    @contextlib.contextmanager
    def _naming_shards(self) -> Iterator[None]:
        """Re-raise an InputError with this actor's shards named (row numbers are local)."""
        try:
            yield
        except InputError as exc:
            raise InputError(f"{', '.join(self.names)}: {exc}") from None


class ShardedIndex:
    """Exact k-nearest-neighbour search over a bank in shards, held by Ray actors.

    ``search(q, k)`` returns what :func:`ood_zoo.ops.knn` over the concatenated shards returns:
    values within float rounding (cosine similarities descending, l2 distances ascending; fp32,
    fp64 for fp64 queries), the same neighbours except at exact ties, which go to the lower
    global row, as there. Global row ids follow the shard order. Each actor searches its shards
    with an exact :class:`ood_zoo.ops.KNNIndex` (pruned where the bank is anisotropic) and returns
    its top ``min(k, rows)``; the driver merges the ``[Q, sum]`` candidates with one stable sort.
    It is an :class:`ood_zoo.ops.SearchIndex`: ``create("cosine").fit_index(index)`` fits a kNN
    detector on it.

    Parameters
    ----------
    shards : list of paths to ``.npy`` files, or of arrays ``[n_s, d]``
        A file is memmapped in its actor (``np.load(mmap_mode="r")``), never copied or sent; its
        header is checked here. An array (numpy, or a torch tensor on any device) is put in the
        object store once and read there. All shards share ``d`` and a floating dtype; empty
        shards are allowed, as long as some rows remain.
    metric : {"cosine", "l2"}
    shards_per_actor, num_actors : int, optional
        Consecutive shards per actor (default 1), or the number of actors (the shards split into
        that many consecutive runs of nearly equal count); not both.
    num_cpus_per_actor : float
        Ray CPUs each actor reserves; its torch threads are ``max(1, int(num_cpus_per_actor))``.
    mode : {"auto", "pruned", "dense"}
        The ``KNNIndex`` mode in every actor; ``index_options`` go to it too (``rank``, ...).
    max_restarts : int
        How often Ray restarts a dead actor; a search it was running is retried as often
        (``max_task_retries``), on the restarted actor, with the same answer.

    Raises
    ------
    InputError
        For an empty shard list, a shard that cannot be read (missing file, not a ``.npy``
        array, not 2-D, not floating), one whose width or dtype differs from the first shard's
        (each named), all shards empty, or bad ``shards_per_actor``/``num_actors``.
    """

    def __init__(
        self,
        shards: Sequence[str | os.PathLike[str] | np.ndarray | torch.Tensor],
        metric: str = "cosine",
        *,
        shards_per_actor: int | None = None,
        num_actors: int | None = None,
        num_cpus_per_actor: float = 1,
        mode: str = "auto",
        max_restarts: int = MAX_RESTARTS,
        **index_options: Any,
    ) -> None:
        if metric not in ("cosine", "l2"):
            raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
        if mode not in ("auto", "pruned", "dense"):
            raise ValueError(f"mode must be 'auto', 'pruned' or 'dense', got {mode!r}")
        if isinstance(shards, str | os.PathLike | np.ndarray | torch.Tensor) or not shards:
            raise InputError("ShardedIndex: shards must be a non-empty list of .npy paths or "
                             "arrays")
        self.metric = metric
        self._names, views, sources = [], [], []
        for position, shard in enumerate(shards):
            name, view, source = _open_shard(position, shard)
            self._names.append(name)
            views.append(view)
            sources.append(source)
        first = views[0]
        for name, view in zip(self._names, views, strict=True):
            if view.shape[1] != first.shape[1] or view.dtype != first.dtype:
                raise InputError(f"ShardedIndex: {name} is {view.dtype} [{view.shape[0]}, "
                                 f"{view.shape[1]}] but {self._names[0]} is {first.dtype} "
                                 f"[..., {first.shape[1]}]; shards must share width and dtype")
        #: the shards as tensors on the driver (memmaps: nothing read), for :meth:`rows`
        self._views = views
        self.n_rows = sum(int(v.shape[0]) for v in self._views)
        self.dim = int(first.shape[1])
        offsets = np.cumsum([0] + [int(v.shape[0]) for v in self._views])
        groups = _consecutive_groups([i for i, v in enumerate(self._views) if v.shape[0]],
                                     shards_per_actor, num_actors)
        #: per actor: (first global row, rows, shard positions)
        self.layout = [(int(offsets[g[0]]), int(offsets[g[-1] + 1] - offsets[g[0]]), g)
                       for g in groups]
        self._ray = ray = ensure_ray()
        # paths as they are, arrays put in the object store once (empty shards: no actor)
        self._refs = {i: sources[i] if isinstance(sources[i], str) else ray.put(sources[i])
                      for group in groups for i in group}
        threads = torch_threads(num_cpus_per_actor)
        options = {"mode": mode, **index_options}
        actor = ray.remote(ShardSearcher).options(
            num_cpus=num_cpus_per_actor, max_restarts=max_restarts,
            max_task_retries=max_restarts,
        )
        # the object refs go inside a list: an actor resolves them when it (re)builds, and
        # this index keeps them alive for restarts
        self.actors = [actor.remote([self._names[i] for i in group],
                                    [self._refs[i] for i in group], metric, options, threads)
                       for _, _, group in self.layout]
        self._last_search: dict[str, Any] = {}
        try:
            self._gather([a.build.remote() for a in self.actors])
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int) -> tuple[Any, Any]:
        """The k nearest bank rows of each query, as :func:`ood_zoo.ops.knn` returns them.

        Returns
        -------
        values : array ``[Q, k]``
            Cosine similarities (descending) or Euclidean distances (ascending), fp32 (fp64 for
            fp64 queries), of the queries' kind (numpy, or a tensor on their device).
        indices : array ``[Q, k]`` of int64
            Global bank rows.

        Raises
        ------
        InputError
            For bad queries (not 2-D, empty, non-finite, another width) or ``k`` outside
            ``[1, N]``.
        """
        q = check_matrix(queries, name="queries")
        k = check_search(q, k, n_rows=self.n_rows, dim=self.dim)
        start = time.perf_counter()
        q = q.detach().cpu()
        if q.dtype not in (torch.float32, torch.float64):
            q = q.to(torch.float32)  # exact; KNNIndex computes in fp32 for these anyway
        ref = self._ray.put(q.numpy())
        parts = self._gather([a.search.remote(ref, k) for a in self.actors])
        gathered = time.perf_counter()
        # results from the object store are read-only views: concatenate in numpy (a copy)
        values = torch.from_numpy(np.concatenate([v for v, _, _ in parts], axis=1))
        indices = torch.from_numpy(np.concatenate(
            [i + offset for (_, i, _), (offset, _, _) in zip(parts, self.layout, strict=True)],
            axis=1))
        # per-actor results are best first, ties by lower row, actors in row order: a stable
        # sort keeps that order at ties, as ops.knn breaks them
        order = values.argsort(dim=1, descending=self.metric == "cosine", stable=True)[:, :k]
        values, indices = values.gather(1, order), indices.gather(1, order)
        end = time.perf_counter()
        self._last_search = {"queries": q.shape[0], "k": k, "seconds": end - start,
                             "actor_seconds": [s for _, _, s in parts],
                             "merge_seconds": end - gathered}
        kind = ArrayKind.of(queries)
        return kind.wrap(values), kind.wrap(indices)

    def rows(self, indices: Any) -> torch.Tensor:
        """The bank rows at global positions ``indices`` (1-D integers), read on the driver
        (from the memmaps or the arrays given), in the shards' dtype.

        Raises
        ------
        InputError
            If ``indices`` is not 1-D integers in ``[0, N)``.
        """
        return ops.bank_rows(self._views, indices)

    def stats(self) -> dict[str, Any]:
        """The index per actor (its shards, rows, process, ``KNNIndex.stats()``: path taken,
        build seconds, the last search's survivor rate) and the last search's time split."""
        built = self._gather([a.build.remote() for a in self.actors])
        return {
            "metric": self.metric, "rows": self.n_rows, "dim": self.dim,
            "actors": [{"shards": [self._names[i] for i in group], "first_row": offset,
                        **stats, "rows": rows}
                       for (offset, rows, group), stats in zip(self.layout, built, strict=True)],
            "last_search": dict(self._last_search),
            "ray": self._ray.__version__,
        }

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Kill the actors (no restart); the index cannot search afterwards. Nothing to do once
        Ray is shut down (its actors went with it)."""
        if self._ray.is_initialized():
            for actor in self.actors:
                self._ray.kill(actor, no_restart=True)
        self.actors = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ShardedIndex({len(self._names)} shards, {self.n_rows} x {self.dim}, "
                f"metric={self.metric!r}, {len(self.actors)} actors)")

    def _gather(self, refs: list[Any]) -> list[Any]:
        """``ray.get(refs)``; an InputError raised in an actor is re-raised here as it is."""
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, InputError):
                raise InputError(f"ShardedIndex: {exc.cause}") from None
            raise


def _open_shard(position: int, shard: Any) -> tuple[str, torch.Tensor, Any]:
    """``(name, driver-side tensor view, what the actor gets)`` of one shard, validated cheaply:
    a path's ``.npy`` header (memmapped, nothing read), an array's shape and dtype."""
    if isinstance(shard, str | os.PathLike):
        path = Path(shard)
        name = f"shard {position} ({path})"
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"ShardedIndex: {name} cannot be read as a .npy array: "
                             f"{exc}") from exc
        if not isinstance(array, np.ndarray):
            raise InputError(f"ShardedIndex: {name} is not a .npy array "
                             f"({type(array).__name__})")
        source: Any = str(path.resolve())
    elif isinstance(shard, np.ndarray | torch.Tensor):
        name = f"shard {position} (in memory)"
        array = shard.detach().cpu() if isinstance(shard, torch.Tensor) else shard
        source = array
    else:
        raise InputError(f"ShardedIndex: shard {position} must be a .npy path or an array, got "
                         f"{type(shard).__name__}")
    view = check_matrix(array, name=f"ShardedIndex: {name}", allow_empty=True, finite=False)
    if isinstance(source, torch.Tensor) and source.dtype != torch.bfloat16:
        source = source.numpy()  # read from the object store without a copy
    return name, view, source


def _consecutive_groups(
    positions: list[int], shards_per_actor: int | None, num_actors: int | None
) -> list[list[int]]:
    """``positions`` cut into consecutive runs: ``shards_per_actor`` each, or ``num_actors``
    runs of nearly equal count (at most one per shard)."""
    if not positions:
        raise InputError("ShardedIndex: every shard is empty")
    if shards_per_actor is not None and num_actors is not None:
        raise InputError("ShardedIndex: give shards_per_actor or num_actors, not both")
    if num_actors is None:
        per = check_positive_int(1 if shards_per_actor is None else shards_per_actor,
                                 name="shards_per_actor")
        return [positions[i : i + per] for i in range(0, len(positions), per)]
    count = min(check_positive_int(num_actors, name="num_actors"), len(positions))
    cuts = [len(positions) * j // count for j in range(count + 1)]
    return [positions[a:b] for a, b in itertools.pairwise(cuts)]
