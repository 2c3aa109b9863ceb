"""The built-in dataset records and the listing behind ``ood-zoo datasets``."""

from __future__ import annotations

from typing import Any

from .benchmarks import BENCHMARK_DATASETS
from .corpora import OFFLINE_DATASETS
from .spec import DatasetSpec

__all__ = ["BUILTIN_DATASETS", "list_datasets"]

#: Everything :mod:`ood_zoo.builtin` registers through ``ood_zoo_datasets``: the offline corpora
#: (:mod:`ood_zoo.data.corpora`) and the loaders of the paper's benchmarks
#: (:mod:`ood_zoo.data.benchmarks`, ``needs_files=True``).
BUILTIN_DATASETS: tuple[DatasetSpec, ...] = OFFLINE_DATASETS + BENCHMARK_DATASETS

#: The columns of :func:`list_datasets`, in display order.
LISTING_COLUMNS = ("name", "description", "needs_files", "files", "source", "license", "plugin")


def list_datasets() -> list[dict[str, Any]]:
    """Every registered dataset, from any plugin, as one row each (sorted by name).

    Returns
    -------
    list of dict
        Keys :data:`LISTING_COLUMNS`: ``name``, ``description``, ``needs_files`` (``True`` when
        ``load`` needs ``root=`` pointing at files the user has), ``files`` (what it expects
        there), ``source``, ``license`` and ``plugin`` (the plugin that registered it).
    """
    from ..registry import get_registry

    rows = []
    for name, record in get_registry().datasets.items():
        spec = record.spec
        rows.append({
            "name": name,
            "description": spec.description,
            "needs_files": bool(spec.needs_files),
            "files": getattr(spec, "files", ""),
            "source": spec.source,
            "license": spec.license,
            "plugin": record.plugin,
        })
    return rows
