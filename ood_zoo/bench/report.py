"""``ood-zoo report``: one self-contained HTML page, plus a Markdown twin, from benchmark results.

:func:`build_report` looks in a results directory and its immediate sub-directories for

- benchmark suites, ``results.json`` with ``"format": "ood_zoo.bench"`` (``ood-zoo bench``), and
- isotropy studies, ``isotropy.json`` with ``"format": "ood_zoo.isotropy"``,

and writes ``report.html`` (inline CSS, every figure embedded as a ``data:`` URI, no script, no
external reference) and ``report.md`` (the same tables; figures referenced by relative path).
Columns are taken from the files, so grouping keys such as a fine-tuned suite's ``variant`` or
``shots`` appear without being named here.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import InputError
from ..io import atomic_write_bytes
from .plots import slug

__all__ = ["ReportPaths", "add_arguments", "build_report", "run_cli"]

BENCH_FORMAT = "ood_zoo.bench"
ISOTROPY_FORMAT = "ood_zoo.isotropy"
#: The format versions this module reads, per format.
READS = {BENCH_FORMAT: 1, ISOTROPY_FORMAT: 1}
RESULT_FILES = ("results.json", "isotropy.json")

_METRICS = ("auroc", "fpr95", "aupr_in")
#: Per-row bookkeeping of an aggregated table, and the setting's own description (shown in the
#: set-up): never a column of the metric tables.
_BOOKKEEPING = frozenset({"detector", "n_seeds", "n_errors", "error", "kind", "id", "ood"})
_BENCH_KNOWN = frozenset({"format", "format_version", "table", "rows", "layer_sweep", "summary",
                          "settings", "versions", "machine", "timing_s", "plots"})
_ISOTROPY_KNOWN = frozenset({"format", "format_version", "config", "rows", "correlations",
                             "versions", "machine", "plots"})
_LABELS = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DASH = "–"
#: Cells with at most this many characters are not wrapped.
_SHORT = 24


@dataclass(frozen=True)
class ReportPaths:
    """The files :func:`build_report` wrote."""

    html: Path
    md: Path


# ---------------------------------------------------------------------------- document model
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


# ---------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class _ResultSet:
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


def _discover(root: Path) -> list[_ResultSet]:
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
            found.append(_ResultSet(path, name, data))
    if not found:
        raise InputError(
            f"no ood_zoo results in {root}: looked for results.json (format {BENCH_FORMAT}) and "
            f"isotropy.json (format {ISOTROPY_FORMAT}) in it and its sub-directories"
            + (f"; not of those formats: {', '.join(ignored)}" if ignored else "")
        )
    return found


# ---------------------------------------------------------------------------- formatting
_LABEL_TOKENS = re.compile(r"(?:^|(?<=_))(" + "|".join(_LABELS) + r")(?=_|$)")


def _label(key: str) -> str:
    """A column header from a key: ``far_auroc`` → ``far AUROC``, ``aupr_in`` → ``AUPR-In``."""
    return _LABEL_TOKENS.sub(lambda m: _LABELS[m.group(1)], key).replace("_", " ")


def _fmt(value: Any) -> str:
    if value is None:
        return _DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.3g}"
    if isinstance(value, dict | list | tuple) and not value:
        return _DASH
    if isinstance(value, list | tuple) and not any(isinstance(v, dict | list) for v in value):
        texts = [_fmt(v) for v in value]
        return ("; " if any(" " in t for t in texts) else ", ").join(texts)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text.isprintable() else text


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _direction(key: str) -> int:
    """+1 if higher is better (AUROC, AUPR, accuracy), -1 for FPR, 0 when unknown."""
    if "fpr" in key:
        return -1
    return 1 if any(t in key for t in ("auroc", "aupr", "accuracy")) else 0


def _best_flags(values: Sequence[Any], direction: int, *, alone: bool = False) -> list[bool]:
    """Which values are best (ties at the three shown decimals all count); a lone value is
    best only if ``alone``."""
    shown = [round(v, 3) if _is_number(v) else None for v in values]
    valid = [direction * v for v in shown if v is not None]
    if not direction or len(valid) < (1 if alone else 2):
        return [False] * len(values)
    top = max(valid)
    return [v is not None and direction * v == top for v in shown]


def _cell(value: Any, *, best: bool = False) -> Cell:
    return Cell(_fmt(value), best=best, num=_is_number(value))


def _records_table(records: Sequence[Mapping[str, Any]], *, small: bool = False) -> Table:
    """A table of dicts, one column per key (in order of first appearance); the best value of
    each column whose name says its direction (AUROC, FPR...) is marked."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    flags = {c: _best_flags([r.get(c) for r in records], _direction(c)) for c in columns}
    return Table([_label(c) for c in columns],
                 [[_cell(r.get(c), best=flags[c][i]) for c in columns]
                  for i, r in enumerate(records)], small=small)


def _kv_table(mapping: Mapping[str, Any]) -> Table:
    return Table(["key", "value"], [[Cell(str(k)), Cell(_fmt(v))] for k, v in mapping.items()],
                 small=True)


def _generic_blocks(mapping: Mapping[str, Any]) -> list[Block]:
    """Any mapping: its scalars as one key/value table, each list or mapping of objects as a
    table of its own."""
    blocks: list[Block] = []
    scalars = {}
    for key, value in mapping.items():
        records = _as_records(value)
        if records:
            blocks += [Heading(4, _label(str(key))), _records_table(records, small=True)]
        elif isinstance(value, dict) and value:
            blocks += [Heading(4, _label(str(key))), _kv_table(value)]
        else:
            scalars[key] = value
    return ([_kv_table(scalars)] if scalars else []) + blocks


def _as_records(value: Any) -> list[dict[str, Any]] | None:
    """A list of dicts, or a dict of dicts (its keys become a ``name`` column); else ``None``."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return [{"name": k, **v} for k, v in value.items()]
    return None


# ---------------------------------------------------------------------------- figures
def _figures(result: _ResultSet) -> list[Figure]:
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


# ---------------------------------------------------------------------------- benchmark suites
@dataclass(frozen=True)
class _Shape:
    """How an aggregated table splits into row keys, per-row attributes and detector metrics."""

    groups: list[str]  # row keys (setting, variant, shots, ...)
    attributes: list[str]  # one value per row key (e.g. a fine-tuned model's ID accuracy)
    metrics: list[str]  # one value per row key and detector: a table each
    detectors: list[str]  # best mean of the first metric first

    @classmethod
    def of(cls, table: Sequence[Mapping[str, Any]], exclude: Iterable[str] = ()) -> _Shape:
        keys = list(dict.fromkeys(k for r in table for k in r if k not in exclude))
        families = [m for m in _METRICS if m in keys]
        for key in keys:
            base = key.removesuffix("_pm").removesuffix("_std")
            if base != key and base not in families:
                families.append(base)
        members = {f"{m}{s}" for m in families for s in ("", "_std", "_pm")}
        rest = [k for k in keys if k not in members and k not in _BOOKKEEPING]
        groups = [k for k in rest if not any(isinstance(r.get(k), float) for r in table)]
        measures = families + [k for k in rest if k not in groups]

        def per_row(measure: str) -> bool:
            seen: dict[tuple[Any, ...], set[str]] = {}
            for r in table:
                seen.setdefault(_row_key(r, groups), set()).add(
                    _measure_cell(r, measure).text)
            return all(len(v) == 1 for v in seen.values())

        attributes = [m for m in measures if m not in _METRICS and per_row(m)]
        metrics = [m for m in measures if m not in attributes]
        lead = metrics[0] if metrics else None
        means: dict[str, list[float]] = {}
        for r in table:
            value = r.get(lead) if lead else None
            means.setdefault(r["detector"], []).extend([value] if _is_number(value) else [])
        sign = _direction(lead or "") or 1
        detectors = sorted(means, key=lambda d: (-sign * _mean(means[d]) if means[d]
                                                 else math.inf, d))
        return cls(groups, attributes, metrics, detectors)

    def rows(self, table: Sequence[Mapping[str, Any]]
             ) -> list[tuple[tuple[Any, ...], dict[str, Mapping[str, Any]]]]:
        """Row key → {detector: aggregated row}, in the table's order."""
        out: dict[tuple[Any, ...], dict[str, Mapping[str, Any]]] = {}
        for r in table:
            out.setdefault(_row_key(r, self.groups), {})[r["detector"]] = r
        return list(out.items())

    def key_cells(self, key: tuple[Any, ...], by_detector: Mapping[str, Mapping[str, Any]]
                  ) -> list[Cell]:
        first = next(iter(by_detector.values()))
        return [_cell(v) for v in key] + [_measure_cell(first, a) for a in self.attributes]

    def key_headers(self) -> list[str]:
        return [_label(k) for k in (*self.groups, *self.attributes)]


def _row_key(row: Mapping[str, Any], keys: Sequence[str]) -> tuple[Any, ...]:
    """The values of ``keys`` in ``row``, lists and objects as their text (hashable)."""
    return tuple(_fmt(v) if isinstance(v, dict | list) else v for v in map(row.get, keys))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _measure_cell(row: Mapping[str, Any], measure: str, *, best: bool = False) -> Cell:
    """``mean`` with ``± std`` below it; the ``_pm`` text when only that is stored."""
    value, std = row.get(measure), row.get(f"{measure}_std")
    if _is_number(value):
        return Cell(_fmt(float(value)), f"± {std:.3f}" if _is_number(std) else "", best, True)
    if row.get(f"{measure}_pm") not in (None, "-"):
        return Cell(str(row[f"{measure}_pm"]), best=best, num=True)
    return Cell(_DASH, title=str(row.get("error") or ""), num=True)


def _metric_table(shape: _Shape, table: Sequence[Mapping[str, Any]], metric: str) -> Table:
    rows = []
    for key, by_detector in shape.rows(table):
        values = [by_detector.get(d, {}).get(metric) for d in shape.detectors]
        flags = _best_flags(values, _direction(metric))
        rows.append(shape.key_cells(key, by_detector) + [
            _measure_cell(by_detector[d], metric, best=flag) if d in by_detector else Cell("")
            for d, flag in zip(shape.detectors, flags, strict=True)])
    return Table(shape.key_headers() + shape.detectors, rows)


def _winners(shape: _Shape, table: Sequence[Mapping[str, Any]]
             ) -> list[tuple[tuple[Any, ...], dict[str, Mapping[str, Any]], list[str]]]:
    """Per row key: the detectors best on the first metric (ties at three decimals)."""
    metric = shape.metrics[0]
    out = []
    for key, by_detector in shape.rows(table):
        names = [d for d in shape.detectors if d in by_detector]
        flags = _best_flags([by_detector[d].get(metric) for d in names], _direction(metric) or 1,
                            alone=True)
        out.append((key, by_detector, [d for d, f in zip(names, flags, strict=True) if f]))
    return out


def _headline_table(shape: _Shape, table: Sequence[Mapping[str, Any]]) -> Table:
    lead = shape.metrics[0]
    sign = _direction(lead) or 1
    rows = []
    for key, by_detector, best in _winners(shape, table):
        top = by_detector[best[0]] if best else {}
        others = sorted((d for d in by_detector if d not in best
                         and _is_number(by_detector[d].get(lead))),
                        key=lambda d: -sign * by_detector[d][lead])
        runner_up = (f"{others[0]} ({_fmt(float(by_detector[others[0]][lead]))})"
                     if others else _DASH)
        rows.append(shape.key_cells(key, by_detector) + [Cell(", ".join(best) or _DASH,
                                                              best=bool(best))]
                    + [_measure_cell(top, m) for m in shape.metrics] + [Cell(runner_up)])
    headers = [*shape.key_headers(), f"best ({_label(lead)})",
               *(_label(m) for m in shape.metrics), "runner-up"]
    return Table(headers, rows)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _description_blocks(settings: Mapping[str, Any]) -> list[Block]:
    suite = _dict(settings.get("suite"))
    blocks: list[Block] = []
    if suite.get("description"):
        blocks.append(Para(str(suite["description"])))
    if isinstance(suite.get("notes"), list) and suite["notes"]:
        blocks.append(Bullets([str(n) for n in suite["notes"]]))
    return blocks


def _setup_blocks(data: Mapping[str, Any]) -> list[Block]:
    settings = _dict(data.get("settings"))
    config, extraction = _dict(settings.get("config")), _dict(settings.get("extraction"))
    blocks: list[Block] = []
    per_split = "all (full corpora)" if config.get("full") else config.get("max_per_split")
    timing = _dict(data.get("timing_s"))
    facts = {
        "suite": config.get("suite") or _dict(settings.get("suite")).get("name"),
        "model": extraction.get("model") or config.get("model"),
        "model class": extraction.get("model_class"),
        "pooling": extraction.get("pooling") or config.get("pooling"),
        "template": extraction.get("template"),
        "layer (main tables)": settings.get("main_layer"),
        "hidden states": settings.get("n_states"),
        "bank (ID split fitted on)": settings.get("bank"),
        "seeds": config.get("seeds"),
        "texts per split": per_split,
        "texts embedded": settings.get("n_texts"),
        "logits": extraction.get("logits"),
        "wall time": " + ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in timing.items()
                                if _is_number(v) and k != "total_s")
        + (f" = {timing['total_s']:.0f} s" if _is_number(timing.get("total_s")) else ""),
    }
    facts = {k: v for k, v in facts.items() if v not in (None, "", [])}
    if facts:
        blocks += [Heading(3, "Set-up"), _kv_table(facts)]
    if _dict(settings.get("corpora")):
        blocks += [Heading(4, "Corpora"), _kv_table(settings["corpora"])]
    return blocks


def _sweep_blocks(data: Mapping[str, Any], figures: list[Figure]) -> list[Block]:
    sweep = [r for r in (data.get("layer_sweep") or {}).get("table") or []
             if isinstance(r, dict) and _is_number(r.get("layer"))
             and isinstance(r.get("detector"), str)]
    if not sweep and not figures:
        return []
    blocks: list[Block] = [Heading(3, "Layer sweep")]
    blocks += figures
    shape = _Shape.of(sweep, exclude=("layer",))
    if not shape.metrics:
        return blocks
    metric = shape.metrics[0]
    sign = _direction(metric) or 1
    layers = sorted({int(r["layer"]) for r in sweep})
    per_row: dict[tuple[tuple[Any, ...], str], dict[int, float]] = {}
    for r in sweep:
        values = per_row.setdefault((_row_key(r, shape.groups), r["detector"]), {})
        if _is_number(r.get(metric)):
            values[int(r["layer"])] = float(r[metric])
    order = {key: i for i, (key, _) in enumerate(shape.rows(sweep))}
    rank = {d: i for i, d in enumerate(shape.detectors)}
    compact, full = [], []
    for (key, detector), valid in sorted(per_row.items(),
                                         key=lambda kv: (order[kv[0][0]], rank[kv[0][1]])):
        best = max(valid, key=lambda k: sign * valid[k]) if valid else None
        last = valid.get(layers[-1])
        head = [*(_cell(v) for v in key), Cell(detector)]
        gain = _DASH if best is None or last is None else f"{valid[best] - last:+.3f}"
        compact.append([*head, _cell(best), _cell(None if best is None else valid[best]),
                        _cell(last), Cell(gain, num=True)])
        full.append([*head, *(Cell(_fmt(valid.get(layer)), num=True, best=layer == best,
                                   shade=_shade(valid.get(layer))) for layer in layers)])
    head = [*(_label(g) for g in shape.groups), "detector"]
    label = _label(metric)
    blocks += [
        Para(f"{label} (mean over seeds) at every hidden state (0 = embeddings); the best layer "
             f"of each row against the last one."),
        Table([*head, "best layer", f"best {label}", f"last-layer {label}", "best − last"],
              compact),
        Details(f"{label} per layer", [Table([*head, *(f"L{layer}" for layer in layers)], full,
                                             small=True)]),
    ]
    return blocks


def _shade(value: Any) -> float | None:
    """Heat-map intensity of an AUROC-like value: 0 at chance (0.5) or below, 1 at 1.0."""
    return min(1.0, max(0.0, (float(value) - 0.5) * 2)) if _is_number(value) else None


def _bench_blocks(result: _ResultSet) -> list[Block]:
    data = result.data
    table = data["table"]
    settings = _dict(data.get("settings"))
    blocks: list[Block] = [Heading(2, result.name, result.anchor),
                           Para(f"From {result.path}.", note=True), *_description_blocks(settings)]
    figures = _figures(result)
    sweep_figures = [f for f in figures if f.caption.startswith("layer_sweep")]
    shape = _Shape.of(table)
    if shape.metrics:
        per = " × ".join(_label(g) for g in shape.groups) or "row"
        blocks += [Heading(3, f"Best detector per {per}"),
                   Para(f"Ranked by mean {_label(shape.metrics[0])} over seeds; the best of each "
                        f"row is highlighted in the tables below too.", note=True),
                   _headline_table(shape, table)]
    for metric in shape.metrics:
        blocks += [Heading(3, f"{_label(metric)}: mean ± std over seeds"),
                   _metric_table(shape, table, metric)]
    if shape.metrics:
        seeds = _dict(settings.get("config")).get("seeds")
        blocks.append(Para((f"Seeds: {_fmt(seeds)}. " if seeds else "")
                           + "Higher score = more in-distribution; ID is the positive class; "
                           "FPR95 is the fraction of OOD accepted at 95% ID recall (lower is "
                           "better).", note=True))
    if data.get("summary"):
        blocks += [Heading(3, "Summary"), _records_table(data["summary"])]
    blocks += _setup_blocks(data)
    other_figures = [f for f in figures if f not in sweep_figures]
    if other_figures:
        blocks += [Heading(3, "ROC curves and score histograms"),
                   *_caption_by_setting(other_figures, table)]
    blocks += _sweep_blocks(data, sweep_figures)
    n_rows = len(data.get("rows") or [])
    if n_rows:
        blocks.append(Para(f"{n_rows} per-seed rows are in {result.path.name} (and "
                           f"results.csv next to it).", note=True))
    details = _generic_blocks(settings)
    extra = {k: v for k, v in data.items() if k not in _BENCH_KNOWN}
    if extra:
        details += [Heading(4, "Other fields"), *_generic_blocks(extra)]
    if details:
        blocks.append(Details("All settings of this run", details))
    return blocks


def _caption_by_setting(figures: list[Figure], table: Sequence[Mapping[str, Any]]
                        ) -> list[Figure]:
    """Captions from the setting a figure is named after, in the table's setting order."""
    settings = list(dict.fromkeys(str(r["setting"]) for r in table if "setting" in r))
    by_slug = {slug(s): i for i, s in enumerate(settings)}

    def position(figure: Figure) -> int:
        return by_slug.get(Path(figure.caption).stem, len(settings))

    return [Figure(settings[position(f)] if position(f) < len(settings) else f.caption,
                   f.path, f.problem) for f in sorted(figures, key=position)]


# ---------------------------------------------------------------------------- isotropy studies
def _isotropy_blocks(result: _ResultSet) -> list[Block]:
    data = result.data
    rows = data["rows"]
    blocks: list[Block] = [Heading(2, result.name, result.anchor),
                           Para(f"Isotropy study, from {result.path}.", note=True)]
    if data.get("config"):
        blocks.append(_kv_table(data["config"]))
    if rows:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        aurocs = [c for c in columns if c.startswith("auroc")]
        table_rows = []
        for r in rows:
            flags = dict(zip(aurocs, _best_flags([r.get(c) for c in aurocs], 1), strict=True))
            table_rows.append([_cell(r.get(c), best=flags.get(c, False)) for c in columns])
        blocks += [Heading(3, "Isotropy and detector AUROC per model and layer"),
                   Para("The best AUROC of each row is highlighted.", note=True),
                   Table([_label(c) for c in columns], table_rows, small=True)]
    if data.get("correlations"):
        blocks += [Heading(3, "Correlations"), _records_table(data["correlations"])]
    figures = _figures(result)
    if figures:
        blocks += [Heading(3, "Plots"), *figures]
    extra = {k: v for k, v in data.items() if k not in _ISOTROPY_KNOWN}
    if extra:
        blocks.append(Details("Other fields", _generic_blocks(extra)))
    return blocks


# ---------------------------------------------------------------------------- page
def _overview(results: Sequence[_ResultSet]) -> Table:
    rows = []
    for result in results:
        data = result.data
        if result.kind == BENCH_FORMAT:
            table = data["table"]
            shape = _Shape.of(table)
            settings = _dict(data.get("settings"))
            config = _dict(settings.get("config"))
            what = f"benchmark suite {config.get('suite') or '?'}"
            model = _dict(settings.get("extraction")).get("model") or config.get("model")
            noun = "settings" if shape.groups == ["setting"] else "rows"
            size = f"{len(shape.rows(table))} {noun} × {len(shape.detectors)} detectors"
            headline = _DASH
            if shape.metrics:
                wins: dict[str, int] = {}
                winners = _winners(shape, table)
                for _, _, best in winners:
                    for name in best:
                        wins[name] = wins.get(name, 0) + 1
                if wins:
                    top = max(wins.values())
                    headline = (f"best {_label(shape.metrics[0])} in {top} of {len(winners)} "
                                f"{noun}: "
                                + ", ".join(d for d in shape.detectors if wins.get(d) == top))
        else:
            rows_ = data["rows"]
            what = "isotropy study"
            model = ", ".join(dict.fromkeys(str(r["model"]) for r in rows_ if "model" in r))
            size = f"{len(rows_)} rows"
            counts: dict[str, int] = {}
            for r in rows_:
                aurocs = [c for c in r if c.startswith("auroc")]
                for c, flag in zip(aurocs, _best_flags([r[c] for c in aurocs], 1), strict=True):
                    counts[c] = counts.get(c, 0) + flag
            headline = ("best AUROC per row: " + ", ".join(
                f"{_label(c)} {n}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1]))
                if counts else _DASH)
        rows.append([Cell(result.name), Cell(what), Cell(model or _DASH), Cell(size),
                     Cell(headline)])
    return Table(["result set", "what", "model", "size", "headline"], rows)


def _machine_blocks(results: Sequence[_ResultSet]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Machine and versions", "machine")]
    for key, title in (("machine", "Machine"), ("versions", "Versions")):
        dicts = [(r.name, r.data.get(key) or {}) for r in results]
        dicts = [(n, d) for n, d in dicts if d]
        if not dicts:
            continue
        names = list(dict.fromkeys(k for _, d in dicts for k in d))
        same = all(d == dicts[0][1] for _, d in dicts)
        columns = [("all result sets" if len(dicts) > 1 else dicts[0][0], dicts[0][1])] \
            if same else dicts
        blocks += [Heading(3, title), Table(
            [key, *(n for n, _ in columns)],
            [[Cell(k), *(Cell(_fmt(d.get(k))) for _, d in columns)] for k in names],
            small=True)]
    return blocks


def _document(root: Path, results: Sequence[_ResultSet]) -> tuple[str, list[Block]]:
    title = f"ood_zoo results: {root.resolve().name}"
    blocks: list[Block] = [
        Para(f"Built by ood-zoo report from {len(results)} result set(s) in {root}. "
             "Scores follow one convention: higher = more in-distribution; ID is the positive "
             "class."),
        Heading(2, "Headline", "headline"), _overview(results),
    ]
    for result in results:
        blocks += (_bench_blocks(result) if result.kind == BENCH_FORMAT
                   else _isotropy_blocks(result))
    blocks += _machine_blocks(results)
    return title, blocks


# ---------------------------------------------------------------------------- HTML
_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #1f2328; background: #fff; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.7em; margin: 0 0 .3em; }
h2 { font-size: 1.35em; margin: 2em 0 .5em; padding-top: .6em; border-top: 2px solid #d0d7de; }
h3 { font-size: 1.1em; margin: 1.6em 0 .4em; }
h4 { font-size: 1em; margin: 1.2em 0 .3em; }
p { margin: .5em 0; }
.note { color: #59636e; font-size: .9em; }
.missing { color: #9a3412; background: #fff7ed; border: 1px solid #fdba74; padding: 6px 10px;
  border-radius: 4px; }
nav ul { columns: 2; margin: .3em 0; }
.scroll { overflow-x: auto; margin: .5em 0 1em; }
table { border-collapse: collapse; font-size: .86em; font-variant-numeric: tabular-nums; }
table.small { font-size: .78em; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; vertical-align: top; }
th { background: #f6f8fa; text-align: left; font-weight: 600; }
tbody tr:nth-child(even) td { background-color: #fafbfc; }
td.num { text-align: right; }
td.num, td.short { white-space: nowrap; }
td .sub { display: block; color: #6e7781; font-size: .82em; }
td.best { background-color: #dafbe1 !important; font-weight: 700; }
td.best .sub { font-weight: 400; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { font-size: .9em; color: #59636e; margin-top: .2em; }
details { margin: 1em 0; }
summary { cursor: pointer; font-weight: 600; }
code { font-size: .92em; }
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _html_cell(cell: Cell) -> str:
    flags = (("num", cell.num), ("best", cell.best), ("short", len(cell.text) <= _SHORT))
    classes = " ".join(c for c, on in flags if on)
    attrs = f' class="{classes}"' if classes else ""
    if cell.title:
        attrs += f' title="{_e(cell.title)}"'
    if cell.shade is not None and not cell.best:
        attrs += f' style="background-color: rgba(9, 105, 218, {0.35 * cell.shade:.2f})"'
    sub = f'<span class="sub">{_e(cell.sub)}</span>' if cell.sub else ""
    return f"<td{attrs}>{_e(cell.text)}{sub}</td>"


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        anchor = f' id="{_e(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{_e(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        return f'<p class="note">{_e(block.text)}</p>' if block.note else f"<p>{_e(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Table):
        # a break opportunity after each underscore keeps long detector names narrow
        head = "".join(f"<th>{_e(h).replace('_', '_<wbr>')}</th>" for h in block.headers)
        body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>"
                       for row in block.rows)
        css = ' class="small"' if block.small else ""
        return (f'<div class="scroll"><table{css}><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>")
    if isinstance(block, Figure):
        if block.path is None:
            return f'<p class="missing">{_e(block.problem)}</p>'
        data = base64.b64encode(block.path.read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(block.caption)}">'
                f"<figcaption>{_e(block.caption)}</figcaption></figure>")
    inner = "\n".join(_html_block(b) for b in block.blocks)
    return f"<details><summary>{_e(block.summary)}</summary>\n{inner}\n</details>"


def _contents(blocks: Sequence[Block]) -> list[tuple[str, str]]:
    return [(b.anchor, b.text) for b in blocks if isinstance(b, Heading) and b.level == 2]


def _render_html(title: str, blocks: Sequence[Block]) -> str:
    """The page: inline CSS, embedded images, no script; a policy blocks any outside fetch."""
    nav = "".join(f'<li><a href="#{_e(a)}">{_e(t)}</a></li>' for a, t in _contents(blocks))
    body = "\n".join(_html_block(b) for b in blocks)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{_e(title)}</h1>\n<nav><strong>Contents</strong><ul>{nav}</ul></nav>\n"
        f"{body}\n</main>\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------- Markdown
def _md_text(text: str, *, block: bool = False) -> str:
    """Markdown-escaped inline text: no accidental emphasis, code, links, HTML or table cells;
    with ``block``, no heading, quote or list either."""
    out = text.replace("\\", "\\\\").replace("\r", " ").replace("\n", " ")
    for char in "`*|<[]&":
        out = out.replace(char, "\\" + char)
    return "\\" + out if block and out[:1] in ("#", ">", "-", "+") else out


def _md_block(block: Block, out_dir: Path) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {_md_text(block.text)}"
    if isinstance(block, Para):
        text = _md_text(block.text, block=True)
        return f"_{text}_" if block.note else text
    if isinstance(block, Bullets):
        return "\n".join(f"- {_md_text(i, block=True)}" for i in block.items)
    if isinstance(block, Table):
        def cell(c: Cell) -> str:
            text = _md_text(f"{c.text} {c.sub}".strip())
            return f"**{text}**" if c.best and text else text

        lines = ["| " + " | ".join(_md_text(h) for h in block.headers) + " |",
                 "|" + "|".join("---" for _ in block.headers) + "|"]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Figure):
        if block.path is None:
            return f"> **Note:** {_md_text(block.problem)}"
        target = quote(Path(os.path.relpath(block.path.resolve(), out_dir.resolve())).as_posix())
        return f"![{_md_text(block.caption)}]({target})"
    inner = "\n\n".join(_md_block(b, out_dir) for b in block.blocks)
    return f"**{_md_text(block.summary)}**\n\n{inner}"


def _render_markdown(title: str, blocks: Sequence[Block], out_dir: Path) -> str:
    """The Markdown twin: the same tables; figures by path relative to ``out_dir``."""
    contents = "\n".join(f"- {_md_text(t)}" for _, t in _contents(blocks))
    body = "\n\n".join(_md_block(b, out_dir) for b in blocks)
    return f"# {_md_text(title)}\n\n**Contents**\n\n{contents}\n\n{body}\n"


# ---------------------------------------------------------------------------- entry points
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
    results = _discover(root)
    target = Path(out_dir) if out_dir is not None else root
    target.mkdir(parents=True, exist_ok=True)
    title, blocks = _document(root, results)
    paths = ReportPaths(target / "report.html", target / "report.md")
    atomic_write_bytes(paths.html, _render_html(title, blocks).encode("utf-8"))
    atomic_write_bytes(paths.md, _render_markdown(title, blocks, target).encode("utf-8"))
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``ood-zoo report``: ``RESULTS_DIR``, ``--out`` and ``--json``."""
    parser.add_argument("results_dir", metavar="RESULTS_DIR",
                        help="output of ood-zoo bench or of an isotropy study, or a parent "
                        "directory of several")
    parser.add_argument("--out", help="directory for report.html and report.md "
                        "(default RESULTS_DIR)")
    parser.add_argument("--json", action="store_true",
                        help="print the written paths as JSON")


def run_cli(args: argparse.Namespace) -> int:
    """``ood-zoo report``: build the report and print the paths written."""
    paths = build_report(args.results_dir, args.out)
    if args.json:
        print(json.dumps({"html": str(paths.html), "md": str(paths.md)}, indent=2))
    else:
        print(f"wrote {paths.html}\nwrote {paths.md}")
    return 0

