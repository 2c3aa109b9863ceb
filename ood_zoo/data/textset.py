"""The container every dataset reader returns: texts, optional labels and optional domains."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["TextSet"]


def _check_codes(name: str, what: str, codes: np.ndarray, n: int, names: tuple[str, ...]) -> None:
    if codes.ndim != 1 or len(codes) != n:
        raise ValueError(f"{name}: {n} texts but {what} of shape {codes.shape}")
    if len(codes) and (codes.min() < 0 or codes.max() >= len(names)):
        raise ValueError(f"{name}: {what} outside 0..{len(names) - 1}")


@dataclass(frozen=True, eq=False)
class TextSet:
    """A list of texts with optional integer class labels and optional domains.

    Attributes
    ----------
    name : str
        A short identifier, e.g. ``"rotten_tomatoes"``.
    texts : list of str
        The texts. The offline corpora are deduplicated on exact text; the loaders of published
        benchmarks keep the published rows (their ``dedupe=True`` option drops exact repeats).
    labels : numpy.ndarray or None
        ``int64`` class indices into ``label_names``, one per text, or ``None`` if unlabelled.
    label_names : tuple of str
        The class names; empty for unlabelled sets.
    source : str
        Where the texts come from (package, file and original corpus).
    license : str
        The terms of the package and of the texts.
    domains : numpy.ndarray or None
        ``int64`` indices into ``domain_names``, one per text, or ``None``. A domain is a second
        grouping next to the class label, e.g. the topic of a sentiment tweet; near-OOD splits
        can hold out domains instead of classes
        (:func:`ood_zoo.data.holdout_classes` with ``by="domain"``).
    domain_names : tuple of str
        The domain names; empty when ``domains`` is ``None``.
    """

    name: str
    texts: list[str]
    labels: np.ndarray | None = None
    label_names: tuple[str, ...] = ()
    source: str = ""
    license: str = ""
    domains: np.ndarray | None = None
    domain_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.labels is not None:
            _check_codes(self.name, "labels", self.labels, len(self.texts), self.label_names)
        if self.domains is not None:
            _check_codes(self.name, "domains", self.domains, len(self.texts), self.domain_names)

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices: Sequence[int] | np.ndarray, *, name: str | None = None) -> TextSet:
        """The subset at ``indices`` (in that order) or boolean mask, with the same metadata."""
        idx = np.asarray(indices)
        if idx.dtype == np.bool_:
            if idx.shape != (len(self.texts),):
                raise ValueError(f"{self.name}: a mask of shape {idx.shape} for {len(self)} texts")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False)
        return TextSet(
            name=self.name if name is None else name,
            texts=[self.texts[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            label_names=self.label_names,
            source=self.source,
            license=self.license,
            domains=None if self.domains is None else self.domains[idx],
            domain_names=self.domain_names,
        )

    def counts(self) -> dict[str, int]:
        """The number of texts per class name (empty for unlabelled sets)."""
        return _count(self.labels, self.label_names)

    def domain_counts(self) -> dict[str, int]:
        """The number of texts per domain name (empty when there are no domains)."""
        return _count(self.domains, self.domain_names)


def _count(codes: np.ndarray | None, names: tuple[str, ...]) -> dict[str, int]:
    if codes is None:
        return {}
    bins = np.bincount(codes, minlength=len(names))
    return {n: int(c) for n, c in zip(names, bins, strict=True)}


def dedupe(
    texts: Sequence[str], *columns: Sequence[int]
) -> tuple[list[str], list[np.ndarray]]:
    """Strip texts, drop empty ones and keep the first occurrence of each exact text.

    Parameters
    ----------
    texts : sequence of str
        The raw texts.
    *columns : sequence of int
        Per-text integer columns (labels, domains) filtered alongside.

    Returns
    -------
    texts : list of str
    columns : list of numpy.ndarray
        ``int64``, one per input column.
    """
    seen: set[str] = set()
    out_texts: list[str] = []
    keep: list[int] = []
    for i, raw in enumerate(texts):
        text = raw.strip()
        if not text or text in seen:
            continue
        seen.add(text)
        out_texts.append(text)
        keep.append(i)
    return out_texts, [np.asarray(col, dtype=np.int64)[keep] for col in columns]


def strip_rows(
    texts: Sequence[str], *columns: Sequence[int], dedupe_texts: bool = False
) -> tuple[list[str], list[np.ndarray]]:
    """Strip texts and drop empty ones; with ``dedupe_texts`` also drop exact repeats."""
    if dedupe_texts:
        return dedupe(texts, *columns)
    keep = [i for i, t in enumerate(texts) if t.strip()]
    return (
        [texts[i].strip() for i in keep],
        [np.asarray(col, dtype=np.int64)[keep] for col in columns],
    )
