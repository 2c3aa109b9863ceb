"""The record a plugin returns from ``ood_zoo_datasets`` to register a dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset known by name.

    Attributes
    ----------
    name : str
        The registry name (``"rotten_tomatoes"``).
    load : callable
        ``load(**options)`` returns the data (a :class:`~ood_zoo.data.TextSet`, or a mapping of
        split name to TextSet); offline only.
    description : str
        One line on what it holds and what it stands in for.
    source, license : str
        Where the texts come from and under which terms.
    needs_files : bool
        True for loaders that read files the user provides (``root=``), e.g. CLINC150.
    files : str
        For ``needs_files`` loaders, the files expected under ``root`` (shown by
        ``ood-zoo datasets``).
    """

    name: str
    load: Callable[..., Any]
    description: str = ""
    source: str = ""
    license: str = ""
    needs_files: bool = False
    files: str = ""
