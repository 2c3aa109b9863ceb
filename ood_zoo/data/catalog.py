"""The built-in dataset records, and datasets looked up by name among every plugin's.

This is the one place in :mod:`ood_zoo.data` that asks the registry: :func:`dataset_spec`
finds a name, :func:`load_dataset` loads it and :func:`list_datasets` lists them all.
"""

from __future__ import annotations

from typing import Any

from ..registry import get_registry
from ..specs import DatasetSpec
from .benchmarks import BENCHMARK_DATASETS
from .corpora import OFFLINE_DATASETS
from .textset import TextSet

__all__ = ["BUILTIN_DATASETS", "dataset_spec", "list_datasets", "load_dataset"]

#: Everything :mod:`ood_zoo.builtin` registers through ``ood_zoo_datasets``: the offline corpora
#: (:mod:`ood_zoo.data.corpora`) and the loaders of the paper's benchmarks
#: (:mod:`ood_zoo.data.benchmarks`, ``needs_files=True``).
BUILTIN_DATASETS: tuple[DatasetSpec, ...] = OFFLINE_DATASETS + BENCHMARK_DATASETS

#: The columns of :func:`list_datasets`, in display order.
LISTING_COLUMNS = ("name", "description", "needs_files", "files", "source", "license", "plugin")


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`~ood_zoo.specs.DatasetSpec` registered as ``name`` by any plugin.

    Raises
    ------
    ood_zoo.UnknownNameError
        If no plugin registers ``name`` (the message lists those that do).
    """
    return get_registry().lookup("datasets", name).spec


def load_dataset(name: str, **options: object) -> TextSet | dict[str, TextSet]:
    """Load dataset ``name`` registered by any plugin (``ood-zoo datasets`` lists them).

    Offline corpora return a :class:`TextSet`; loaders of published benchmarks return a mapping
    of split name (``"train"``, ``"validation"``, ``"test"``, ...) to TextSet and need
    ``root=`` (see :mod:`ood_zoo.data.benchmarks`).
    """
    return dataset_spec(name).load(**options)


def list_datasets() -> list[dict[str, Any]]:
    """Every registered dataset, from any plugin, as one row each (sorted by name).

    Returns
    -------
    list of dict
        Keys :data:`LISTING_COLUMNS`: ``name``, ``description``, ``needs_files`` (``True`` when
        ``load`` needs ``root=`` pointing at files the user has), ``files`` (what it expects
        there), ``source``, ``license`` and ``plugin`` (the plugin that registered it).
    """
    rows = []
    for name, record in get_registry().datasets.items():
        spec = record.spec
        rows.append({
            "name": name,
            "description": spec.description,
            "needs_files": bool(spec.needs_files),
            "files": spec.files,
            "source": spec.source,
            "license": spec.license,
            "plugin": record.plugin,
        })
    return rows
