"""One home for result tables: seed aggregation, Markdown, CSV and JSON-safe values.

Every suite (zero-grad, fine-tuned, isotropy) and the demo write their tables with these, so a
results file reads the same whichever suite wrote it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics
from ..io import atomic_write_bytes

__all__ = ["METRICS", "POSITIVE", "TABLE_HEADERS", "aggregate", "convention_record", "csv_bytes",
           "json_bytes", "jsonable", "layer_sweep_wide", "markdown_table", "summary_by_kind",
           "write_files"]

#: The metrics of the result tables (mean and std over seeds).
METRICS = ("auroc", "fpr95", "aupr_in")
#: The positive class of every suite's metrics (``metrics.evaluate``'s default); each CSV carries
#: it in its ``positive`` column.
POSITIVE = "id"
#: Column headers of the aggregated metrics (:func:`aggregate`'s ``<metric>_pm``) in tables.
TABLE_HEADERS = {"auroc_pm": "AUROC", "fpr95_pm": "FPR95", "aupr_in_pm": "AUPR-In",
                 "n_seeds": "seeds"}


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, tuples as lists and non-finite floats as
    ``None``, so that ``json.dumps(..., allow_nan=False)`` accepts it."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def convention_record() -> dict[str, str]:
    """The ``convention`` entry of every results JSON: the positive class and its note
    (:func:`ood_zoo.metrics.convention`), which the tables and reports print in their header."""
    return {"positive": POSITIVE, "note": metrics.convention(POSITIVE)}


def aggregate(
    rows: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str] = ("setting", "detector"),
    metric_names: Sequence[str] = METRICS,
    order: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of each metric, per group of ``keys``.

    Parameters
    ----------
    rows : sequence of mapping
        Per-seed rows with the ``keys``, ``seed`` and the metrics. Rows with an ``error`` (or a
        missing metric) are left out of the statistics and counted in ``n_errors``.
    keys : sequence of str
        The grouping columns.
    metric_names : sequence of str
        Metrics to summarise.
    order : sequence of str, optional
        Order of the ``setting`` values; groups are sorted by it, then by mean AUROC (best
        first), then by the remaining keys.

    Returns
    -------
    list of dict
        Per group: the keys, ``kind``/``id``/``ood`` when present, ``n_seeds``, ``n_errors``,
        ``<metric>`` (mean), ``<metric>_std`` (sample std, ``ddof=1``; 0 for one seed) and
        ``<metric>_pm`` (``"0.853 ± 0.012"``); means are ``None`` when every seed failed.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        ok = [r for r in members if not r.get("error")]
        entry: dict[str, Any] = dict(zip(keys, key, strict=True))
        for extra in ("kind", "id", "ood"):
            if extra in members[0] and extra not in entry:
                entry[extra] = members[0][extra]
        entry["n_seeds"] = len(ok)
        entry["n_errors"] = len(members) - len(ok)
        for name in metric_names:
            values = np.array([r[name] for r in ok if r.get(name) is not None], dtype=np.float64)
            if values.size:
                mean = float(values.mean())
                std = float(values.std(ddof=1)) if values.size > 1 else 0.0
                entry[name], entry[f"{name}_std"] = mean, std
                entry[f"{name}_pm"] = f"{mean:.3f} ± {std:.3f}"
            else:
                entry[name] = entry[f"{name}_std"] = None
                entry[f"{name}_pm"] = "-"
        errors = [r["error"] for r in members if r.get("error")]
        entry["error"] = errors[0] if errors else None
        out.append(entry)
    settings = list(order) if order is not None else []

    def sort_key(entry: dict[str, Any]) -> tuple[Any, ...]:
        setting = entry.get("setting")
        position = settings.index(setting) if setting in settings else len(settings)
        rest = tuple(str(entry[k]) if k != "layer" else int(entry[k]) for k in keys
                     if k not in ("setting", "detector"))
        return (position, rest, entry.get("auroc") is None, -(entry.get("auroc") or 0.0),
                str(entry.get("detector")))

    return sorted(out, key=sort_key)


def summary_by_kind(table: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean AUROC and FPR95 of each detector over the far-OOD and the near-OOD settings of an
    :func:`aggregate` table (best far-OOD AUROC first)."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in table:
        if row.get("auroc") is None:
            continue
        acc[row["detector"]][f"{row['kind']}_auroc"].append(row["auroc"])
        acc[row["detector"]][f"{row['kind']}_fpr95"].append(row["fpr95"])
    out = []
    for det, values in acc.items():
        entry: dict[str, Any] = {"detector": det}
        for name in ("far_auroc", "far_fpr95", "near_auroc", "near_fpr95"):
            entry[name] = float(np.mean(values[name])) if values.get(name) else None
        out.append(entry)
    return sorted(out, key=lambda e: -(e["far_auroc"] or 0.0))


def layer_sweep_wide(
    sweep_table: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[str]]:
    """A layer-sweep table wide: one row per (setting, detector), one AUROC column ``L<i>`` per
    layer, plus ``best_layer``, ``best_auroc`` and ``last_auroc``; and the layer columns."""
    wide: dict[tuple[str, str], dict[str, Any]] = {}
    layers: list[int] = sorted({int(r["layer"]) for r in sweep_table})
    for r in sweep_table:
        entry = wide.setdefault((r["setting"], r["detector"]),
                                {"setting": r["setting"], "detector": r["detector"]})
        entry[f"L{r['layer']}"] = r["auroc"]
    for entry in wide.values():
        values = {layer: entry.get(f"L{layer}") for layer in layers}
        valid = {k: v for k, v in values.items() if v is not None}
        if valid:
            best = max(valid, key=lambda k: valid[k])
            entry["best_layer"], entry["best_auroc"] = best, valid[best]
            entry["last_auroc"] = values.get(layers[-1])
    return list(wide.values()), [f"L{layer}" for layer in layers]


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                   headers: Mapping[str, str] | None = None) -> str:
    """``rows`` as a Markdown table of ``columns`` (``headers`` renames columns; ``None`` is
    ``-``, floats have three decimals)."""
    headers = headers or {}

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value).replace("|", "\\|")

    head = "| " + " | ".join(headers.get(c, c) for c in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def csv_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    """``rows`` as CSV with the header ``columns`` (missing or ``None`` values are empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue().encode("utf-8")


def json_bytes(payload: Any) -> bytes:
    """``payload`` as indented, strict JSON (:func:`jsonable` first), UTF-8, newline-terminated."""
    return (json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_files(directory: str | os.PathLike[str], outputs: Mapping[str, bytes]) -> list[str]:
    """Write each ``{name: data}`` into ``directory`` atomically; return the paths written."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in outputs.items():
        atomic_write_bytes(target / name, data)
        written.append(str(target / name))
    return written
