"""Datasets: readers for the offline corpora and seeded, disjoint splits.

>>> from ood_zoo.data import rotten_tomatoes, split
>>> reviews = rotten_tomatoes()                                  # doctest: +SKIP
>>> bank, test = split(reviews, [1000, 500], seed=0, stratify=True)  # doctest: +SKIP
"""

from __future__ import annotations

from .corpora import (
    BUILTIN_DATASETS,
    TextSet,
    bbc_news,
    chitchat,
    load_dataset,
    rotten_tomatoes,
    split,
    split_indices,
    subsample,
)
from .packages import MissingPackageError, package_dir, package_file, package_version
from .spec import DatasetSpec

__all__ = [
    "BUILTIN_DATASETS",
    "DatasetSpec",
    "MissingPackageError",
    "TextSet",
    "bbc_news",
    "chitchat",
    "load_dataset",
    "package_dir",
    "package_file",
    "package_version",
    "rotten_tomatoes",
    "split",
    "split_indices",
    "subsample",
]
