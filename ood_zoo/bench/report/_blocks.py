"""The report's document model (headings, paragraphs, tables of cells, figures, details) and
the formatting of values and tables shared by every section."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LABELS = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
#: The text of a missing value.
DASH = "–"


@dataclass(frozen=True)
class Cell:
    """One table cell: ``text`` with an optional smaller ``sub`` line (e.g. ``± 0.012``)."""

    text: str
    sub: str = ""
    best: bool = False
    num: bool = False
    title: str = ""
    shade: float | None = None  # 0..1, a heat-map background (HTML only)


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass(frozen=True)
class Para:
    text: str
    note: bool = False


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    small: bool = False


@dataclass(frozen=True)
class Figure:
    caption: str
    path: Path | None
    problem: str = ""  # why the figure cannot be shown (missing file, not a PNG)


@dataclass(frozen=True)
class Details:
    summary: str
    blocks: list[Block]


Block = Heading | Para | Bullets | Table | Figure | Details


# ---------------------------------------------------------------------------- formatting
_LABEL_TOKENS = re.compile(r"(?:^|(?<=_))(" + "|".join(_LABELS) + r")(?=_|$)")


def column_label(key: str) -> str:
    """A column header from a key: ``far_auroc`` → ``far AUROC``, ``aupr_in`` → ``AUPR-In``."""
    return _LABEL_TOKENS.sub(lambda m: _LABELS[m.group(1)], key).replace("_", " ")


def format_value(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.3g}"
    if isinstance(value, dict | list | tuple) and not value:
        return DASH
    if isinstance(value, list | tuple) and not any(isinstance(v, dict | list) for v in value):
        texts = [format_value(v) for v in value]
        return ("; " if any(" " in t for t in texts) else ", ").join(texts)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text.isprintable() else text


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def metric_direction(key: str) -> int:
    """+1 if higher is better (AUROC, AUPR, accuracy), -1 for FPR, 0 when unknown."""
    if "fpr" in key:
        return -1
    return 1 if any(t in key for t in ("auroc", "aupr", "accuracy")) else 0


def best_flags(values: Sequence[Any], direction: int, *, alone: bool = False) -> list[bool]:
    """Which values are best (ties at the three shown decimals all count); a lone value is
    best only if ``alone``."""
    shown = [round(v, 3) if is_number(v) else None for v in values]
    valid = [direction * v for v in shown if v is not None]
    if not direction or len(valid) < (1 if alone else 2):
        return [False] * len(values)
    top = max(valid)
    return [v is not None and direction * v == top for v in shown]


def value_cell(value: Any, *, best: bool = False) -> Cell:
    return Cell(format_value(value), best=best, num=is_number(value))


def records_table(records: Sequence[Mapping[str, Any]], *, small: bool = False) -> Table:
    """A table of dicts, one column per key (in order of first appearance); the best value of
    each column whose name says its direction (AUROC, FPR...) is marked."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    flags = {c: best_flags([r.get(c) for r in records], metric_direction(c)) for c in columns}
    return Table([column_label(c) for c in columns],
                 [[value_cell(r.get(c), best=flags[c][i]) for c in columns]
                  for i, r in enumerate(records)], small=small)


def kv_table(mapping: Mapping[str, Any]) -> Table:
    return Table(["key", "value"],
                 [[Cell(str(k)), Cell(format_value(v))] for k, v in mapping.items()], small=True)


def generic_blocks(mapping: Mapping[str, Any]) -> list[Block]:
    """Any mapping: its scalars as one key/value table, each list or mapping of objects as a
    table of its own."""
    blocks: list[Block] = []
    scalars = {}
    for key, value in mapping.items():
        records = _as_records(value)
        if records:
            blocks += [Heading(4, column_label(str(key))), records_table(records, small=True)]
        elif isinstance(value, dict) and value:
            blocks += [Heading(4, column_label(str(key))), kv_table(value)]
        else:
            scalars[key] = value
    return ([kv_table(scalars)] if scalars else []) + blocks


def _as_records(value: Any) -> list[dict[str, Any]] | None:
    """A list of dicts, or a dict of dicts (its keys become a ``name`` column); else ``None``."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return [{"name": k, **v} for k, v in value.items()]
    return None
