"""``ood-zoo report``: one self-contained HTML page, plus a Markdown twin, from benchmark results.

:func:`build_report` looks in a results directory and its immediate sub-directories for

- benchmark suites, ``results.json`` with ``"format": "ood_zoo.bench"`` (``ood-zoo bench``), and
- isotropy studies, ``isotropy.json`` with ``"format": "ood_zoo.isotropy"``,

and writes ``report.html`` (inline CSS, every figure embedded as a ``data:`` URI, no script, no
external reference) and ``report.md`` (the same tables; figures referenced by relative path).
Columns are taken from the files, so grouping keys such as a fine-tuned suite's ``variant`` or
``shots`` appear without being named here.

The page is built in three steps: :mod:`._results` finds and checks the results files,
:mod:`._sections` turns each into blocks of the document model of :mod:`._blocks`, and
:mod:`._render` writes the blocks as HTML and as Markdown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ...io import atomic_write_bytes
from ._render import render_html, render_markdown
from ._results import discover
from ._sections import document

__all__ = ["ReportPaths", "build_report"]


@dataclass(frozen=True)
class ReportPaths:
    """The files :func:`build_report` wrote."""

    html: Path
    md: Path


def build_report(results_dir: str | os.PathLike[str],
                 out_dir: str | os.PathLike[str] | None = None) -> ReportPaths:
    """Write ``report.html`` and ``report.md`` for every result set in ``results_dir``.

    Parameters
    ----------
    results_dir : path
        One suite's output directory, or a parent holding several (searched one level deep)
        for ``results.json`` (``ood_zoo.bench``) and ``isotropy.json`` (``ood_zoo.isotropy``).
    out_dir : path, optional
        Where the two files go (created if needed); default ``results_dir``.

    Returns
    -------
    ReportPaths
        The paths written (atomically).

    Raises
    ------
    InputError
        ``results_dir`` is missing, holds no recognised results, or a results file is not
        valid JSON, is malformed, or has an unknown format version (the file is named).
    """
    root = Path(results_dir)
    results = discover(root)
    target = Path(out_dir) if out_dir is not None else root
    target.mkdir(parents=True, exist_ok=True)
    title, blocks = document(root, results)
    paths = ReportPaths(target / "report.html", target / "report.md")
    atomic_write_bytes(paths.html, render_html(title, blocks).encode("utf-8"))
    atomic_write_bytes(paths.md, render_markdown(title, blocks, target).encode("utf-8"))
    return paths
