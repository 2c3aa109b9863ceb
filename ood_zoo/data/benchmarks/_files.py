"""What the benchmark loaders share: where the files are, how missing files are reported, the
readers, and the record of a dataset read from user files."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ...errors import OodZooError
from ...specs import DatasetSpec
from ..textset import TextSet, strip_rows

#: Environment variable naming a directory with one sub-directory per dataset.
DATA_ENV = "OOD_ZOO_DATA"

Splits = dict[str, TextSet]


class DatasetFilesError(OodZooError, FileNotFoundError):
    """The files of a dataset loaded from disk are missing; the message names them."""


def data_root(root: str | os.PathLike[str] | None, subdir: str, title: str, files: str) -> Path:
    """``root``, else ``$OOD_ZOO_DATA/<subdir>``; an error naming ``files`` if neither is set."""
    if root is not None:
        return Path(root).expanduser()
    base = os.environ.get(DATA_ENV)
    if base:
        return Path(base).expanduser() / subdir
    raise DatasetFilesError(
        f"{title}: no root given. Pass root=<directory with {files}> or set {DATA_ENV} to a "
        f"directory holding {subdir}/"
    )


def missing_files(title: str, root: Path, files: str, url: str) -> DatasetFilesError:
    """The error for ``files`` not found under ``root``, with where to get them."""
    return DatasetFilesError(
        f"{title}: expected {files} under {root}, found none. ood_zoo never downloads "
        f"benchmarks; get them from {url} and pass root= (or set {DATA_ENV})."
    )


def first_existing(root: Path, names: Iterable[str]) -> Path | None:
    """The first of ``root / name`` that is a file, or ``None``."""
    for name in names:
        path = root / name
        if path.is_file():
            return path
    return None


def labelled(
    name: str,
    texts: Sequence[str],
    labels: Sequence[int] | None,
    label_names: Sequence[str],
    source: str,
    license: str,
    *,
    dedupe: bool,
    domains: Sequence[int] | None = None,
    domain_names: Sequence[str] = (),
) -> TextSet:
    """A TextSet of the published rows, stripped, empty ones (and repeats if ``dedupe``) dropped."""
    columns = [c for c in (labels, domains) if c is not None]
    kept, cols = strip_rows(texts, *columns, dedupe_texts=dedupe)
    y = cols.pop(0) if labels is not None else None
    d = cols.pop(0) if domains is not None else None
    return TextSet(
        name, kept, y, tuple(label_names) if labels is not None else (), source, license,
        domains=d, domain_names=tuple(domain_names) if domains is not None else (),
    )


def read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """The lines of a text file; undecodable bytes become U+FFFD."""
    with path.open(encoding=encoding, errors="replace", newline="") as handle:
        return handle.read().splitlines()


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    """A GLUE tsv: header and rows, split on tabs only (GLUE text contains quote characters)."""
    lines = read_lines(path)
    if not lines:
        return [], []
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    return header, rows


def column_index(header: list[str], name: str, path: Path) -> int:
    """The position of column ``name`` in a tsv ``header``; a clear error if it is absent."""
    try:
        return header.index(name)
    except ValueError:
        raise DatasetFilesError(f"{path}: no column {name!r} in the header {header}") from None


def numeric_key(path: Path) -> tuple[int, str]:
    """Sort key for files named by number (``123``, ``123_8.txt``): numeric, then by name."""
    head = path.name.split("_")[0].split(".")[0]
    return (int(head), path.name) if head.isdigit() else (-1, path.name)


def file_dataset(
    name: str, load: Callable[..., object], description: str, source: str, license: str,
    files: str, *, seeded: bool = False,
) -> DatasetSpec:
    """The record of a benchmark read from user files (``needs_files=True``)."""
    return DatasetSpec(name, load, description, source, license, needs_files=True, files=files,
                       seeded=seeded)
