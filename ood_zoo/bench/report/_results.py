"""Finding and reading the results files a report is built from, and their figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InputError
from ..plots import slug
from ._blocks import Figure

BENCH_FORMAT = "ood_zoo.bench"
ISOTROPY_FORMAT = "ood_zoo.isotropy"
#: The format versions this module reads, per format.
READS = {BENCH_FORMAT: 1, ISOTROPY_FORMAT: 1}
RESULT_FILES = ("results.json", "isotropy.json")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ResultSet:
    """One results file: where it is, its name in the report and its parsed content."""

    path: Path
    name: str
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.data["format"]

    @property
    def anchor(self) -> str:
        return "r-" + slug(self.name)


def _read(path: Path) -> dict[str, Any] | None:
    """The parsed file when it holds a format this module reads, ``None`` for other JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path} is malformed: expected a JSON object")
    fmt = data.get("format")
    if fmt not in READS:
        return None
    if data.get("format_version") != READS[fmt]:
        raise InputError(f"{path} has {fmt} format version {data.get('format_version')!r}; "
                         f"this ood_zoo reads version {READS[fmt]}")
    table_key = "table" if fmt == BENCH_FORMAT else "rows"
    rows = data.get(table_key)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"{path} is malformed: {table_key!r} must be a list of objects")
    if fmt == BENCH_FORMAT:
        if not all(isinstance(r.get("detector"), str) for r in rows):
            raise InputError(f"{path} is malformed: a 'table' row has no 'detector' name")
        sweep = data.get("layer_sweep") or {}
        if not isinstance(sweep, dict) or not isinstance(sweep.get("table", []), list):
            raise InputError(f"{path} is malformed: 'layer_sweep' must hold a 'table' list")
    for key in ("summary", "correlations"):
        if not isinstance(data.get(key) or [], list):
            raise InputError(f"{path} is malformed: {key!r} must be a list")
    for key in ("settings", "config", "versions", "machine", "timing_s", "plots"):
        if not isinstance(data.get(key) or {}, dict):
            raise InputError(f"{path} is malformed: {key!r} must be an object")
    return data


def discover(root: Path) -> list[ResultSet]:
    """The result sets in ``root`` and in its immediate sub-directories (sorted by name).

    Raises
    ------
    InputError
        ``root`` is not a directory or holds none; a results file is unreadable or malformed.
    """
    if not root.is_dir():
        raise InputError(f"results directory {root} does not exist (or is not a directory)")
    found, ignored = [], []
    for directory in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        for file_name in RESULT_FILES:
            path = directory / file_name
            if not path.is_file():
                continue
            data = _read(path)
            if data is None:
                ignored.append(str(path))
                continue
            name = root.resolve().name if directory == root else directory.name
            found.append(ResultSet(path, name, data))
    if not found:
        raise InputError(
            f"no ood_zoo results in {root}: looked for results.json (format {BENCH_FORMAT}) and "
            f"isotropy.json (format {ISOTROPY_FORMAT}) in it and its sub-directories"
            + (f"; not of those formats: {', '.join(ignored)}" if ignored else "")
        )
    return found


def result_figures(result: ResultSet) -> list[Figure]:
    """The figures of ``plots.files``, found next to the results file, else at their path."""
    plots = result.data.get("plots") or {}
    if plots.get("skipped"):
        return [Figure("plots", None, f"plots were not drawn: {plots['skipped']}")]
    base = result.path.parent
    figures = []
    for entry in plots.get("files") or []:
        listed = Path(str(entry))
        parts = [p for p in listed.parts if p != listed.anchor]
        candidates = [base.joinpath(*parts[i:]) for i in range(len(parts)) if ".." not in parts[i:]]
        candidates.append(listed)
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            figures.append(Figure(listed.name, None, f"plot file {entry} is missing"))
        elif not _is_png(path):
            figures.append(Figure(listed.name, None, f"plot file {path} is not a PNG image"))
        else:
            figures.append(Figure(listed.name, path))
    return figures


def _is_png(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(_PNG_SIGNATURE)) == _PNG_SIGNATURE
