"""Distributed fitting of the covariance detectors: per-shard statistics as Ray tasks.

The engine-free recipe is :mod:`ood_zoo.detectors.statistics`; here its first step runs as one
Ray task per shard, the merge as a tree of Ray tasks, and the driver only fits from the merged
statistics and the few hundred rows that place the default threshold. A shard given as a
``.npy`` path is memory-mapped inside its task and never sent to the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ood_zoo import create, ops
from ood_zoo.detectors.statistics import (
    ClassStatistics,
    StatisticsDetector,
    threshold_rows_per_shard,
)
from ood_zoo.errors import InputError, OodZooError
from ood_zoo.ops.arrays import as_tensor

from .cluster import ensure_ray

#: A shard of the bank (or of its labels): a ``.npy`` path, or an array.
Shard = str | Path | np.ndarray | torch.Tensor


def fit(
    detector: str | StatisticsDetector, shards: Sequence[Shard],
    labels: Sequence[Shard] | None = None, *, progress: bool = True, **params: Any,
) -> StatisticsDetector:
    """Fit a covariance detector on the bank formed by ``shards`` (in order), on Ray.

    Each shard's :class:`~ood_zoo.detectors.statistics.ClassStatistics` and its rows among
    :func:`~ood_zoo.detectors.statistics.threshold_rows_per_shard` come from one Ray task; the
    statistics merge pairwise in Ray tasks (a balanced tree); the driver calls
    ``fit_statistics``. The result equals ``detector.fit(whole bank, labels)`` to float64
    rounding, its threshold included.

    Parameters
    ----------
    detector : str or StatisticsDetector
        An unfitted detector that fits from statistics (``mahalanobis``,
        ``relative_mahalanobis``, ``residual``), or its registry name, created with ``params``.
    shards : sequence of path or array
        ``.npy`` files (memory-mapped in the tasks) or ``[n_s, d]`` arrays (put in the object
        store), in bank order.
    labels : sequence of path or array, optional
        One label array (or ``.npy`` file) per shard, for the detectors that fit with labels.
    progress : bool
        Show a tqdm bar over the shards.

    Raises
    ------
    InputError
        Naming the shard: one that cannot be read as a 2-D ``.npy`` array, a label count that
        differs from its row count, a feature width that differs from the first shard's; or
        a detector that does not fit from statistics.
    """
    detector = _statistics_detector(detector, params)
    if not shards:
        raise InputError(f"{detector.name}: no shards given")
    if labels is not None and len(labels) != len(shards):
        raise InputError(f"{detector.name}: {len(labels)} label arrays for {len(shards)} shards")
    ray = ensure_ray()
    shard_task = ray.remote(num_cpus=1)(_shard_shape)
    statistics_task = ray.remote(num_cpus=1, num_returns=3)(shard_statistics)
    merge_task = ray.remote(num_cpus=1)(ClassStatistics.merge)
    inputs = [_to_ray(ray, s) for s in shards]
    label_inputs = [None] * len(shards) if labels is None else [_to_ray(ray, s) for s in labels]
    names = [_describe(s, i) for i, s in enumerate(shards)]
    shapes = _get(ray, [shard_task.remote(s, lab, name)
                        for s, lab, name in zip(inputs, label_inputs, names, strict=True)])
    widths = {width for _, width in shapes}
    if len(widths) != 1:
        first = shapes[0][1]
        odd = next(i for i, (_, width) in enumerate(shapes) if width != first)
        raise InputError(
            f"{names[odd]}: has {shapes[odd][1]} features, but {names[0]} has {first}"
        )
    wanted = threshold_rows_per_shard([n for n, _ in shapes], detector.target_tpr)
    pairs = [statistics_task.remote(detector, s, lab, rows, name)
             for s, lab, rows, name in zip(inputs, label_inputs, wanted, names, strict=True)]
    statistics, samples = [p[0] for p in pairs], [p[1] for p in pairs]
    remaining = [p[2] for p in pairs]  # each task's row count: fetched for progress and errors
    with tqdm(total=len(remaining), desc=f"{detector.name}: shard statistics", unit="shard",
              disable=not progress) as bar:
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            _get(ray, done)  # a failed shard raises now, by name; its statistics stay remote
            bar.update(1)
    level = statistics
    while len(level) > 1:
        merged = [merge_task.remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = merged + level[len(level) - len(level) % 2 :]
    (total,) = _get(ray, level)
    sample = torch.cat([torch.from_numpy(np.array(rows)) for rows in _get(ray, samples)])
    return detector.fit_statistics(total, sample)


def _statistics_detector(detector: str | StatisticsDetector, params: dict) -> StatisticsDetector:
    if isinstance(detector, str):
        detector = create(detector, **params)
    elif params:
        raise TypeError(f"fit: parameters {sorted(params)} go with a detector name, not an "
                        "instance")
    if not isinstance(detector, StatisticsDetector):
        raise InputError(
            f"{detector.name}: does not fit from sharded statistics; the ones that do are "
            "mahalanobis, relative_mahalanobis and residual"
        )
    return detector


def _describe(shard: Shard, index: int) -> str:
    return f"shard {index} ({shard})" if isinstance(shard, str | Path) else f"shard {index}"


def _to_ray(ray: Any, shard: Shard | None) -> Any:
    """A path stays a path (opened in the task); an array goes to the object store once."""
    if shard is None or isinstance(shard, str | Path):
        return shard
    if isinstance(shard, torch.Tensor):
        shard = shard.detach().cpu().numpy()
    return ray.put(shard)


def _open(shard: Any, name: str, what: str) -> np.ndarray:
    """A path as a read-only memmap (an ``InputError`` naming the shard if it is unreadable)."""
    if not isinstance(shard, str | Path):
        return shard
    try:
        return np.load(shard, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{name}: cannot read its {what} as a .npy array: {exc}") from exc


def _shard_shape(shard: Any, labels: Any, name: str) -> tuple[int, int]:
    """``(rows, width)`` of a shard, checked against its labels' length."""
    features = _open(shard, name, "features")
    if features.ndim != 2:
        raise InputError(f"{name}: expected a 2-D [rows, features] array, got shape "
                         f"{tuple(features.shape)}")
    if labels is not None:
        n_labels = len(_open(labels, name, "labels"))
        if n_labels != features.shape[0]:
            raise InputError(f"{name}: has {features.shape[0]} rows but {n_labels} labels")
    return int(features.shape[0]), int(features.shape[1])


def shard_statistics(
    detector: StatisticsDetector, shard: Any, labels: Any, rows: torch.Tensor, name: str,
) -> tuple[ClassStatistics, np.ndarray, int]:
    """A shard's statistics, its threshold rows (in its own dtype) and its row count, with one
    torch thread (the task's one Ray CPU; a reused worker may have started with more)."""
    torch.set_num_threads(1)
    features = _open(shard, name, "features")
    shard_labels = None if labels is None else np.asarray(_open(labels, name, "labels"))
    try:
        statistics = detector.partial_statistics(features, shard_labels)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc
    sample = ops.bank_rows([as_tensor(features, name=name)], rows)
    return statistics, sample.numpy(), int(features.shape[0])


def _get(ray: Any, refs: list) -> list:
    """``ray.get``, re-raising an ood_zoo error from a task as itself (not wrapped)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, OodZooError):
            raise exc.cause from None
        raise
