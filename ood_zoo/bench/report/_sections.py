"""The report's sections: one per result set (benchmark suite or isotropy study), the headline
overview and the machine and versions."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import metrics
from ..plots import slug
from ..tables import POSITIVE
from ._blocks import (
    DASH,
    Block,
    Bullets,
    Cell,
    Details,
    Figure,
    Heading,
    Para,
    Table,
    best_flags,
    column_label,
    format_value,
    generic_blocks,
    is_number,
    kv_table,
    metric_direction,
    records_table,
    value_cell,
)
from ._results import BENCH_FORMAT, ResultSet, result_figures

_METRICS = ("auroc", "fpr95", "aupr_in")
#: Per-row bookkeeping of an aggregated table, and the setting's own description (shown in the
#: set-up): never a column of the metric tables.
_BOOKKEEPING = frozenset({"detector", "n_seeds", "n_errors", "error", "kind", "id", "ood"})
_BENCH_KNOWN = frozenset({"format", "format_version", "table", "rows", "layer_sweep", "summary",
                          "settings", "versions", "machine", "timing_s", "plots", "convention"})
_ISOTROPY_KNOWN = frozenset({"format", "format_version", "config", "rows", "correlations",
                             "versions", "machine", "plots", "convention"})


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
            means.setdefault(r["detector"], []).extend([value] if is_number(value) else [])
        sign = metric_direction(lead or "") or 1
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
        return [value_cell(v) for v in key] + [_measure_cell(first, a) for a in self.attributes]

    def key_headers(self) -> list[str]:
        return [column_label(k) for k in (*self.groups, *self.attributes)]


def _row_key(row: Mapping[str, Any], keys: Sequence[str]) -> tuple[Any, ...]:
    """The values of ``keys`` in ``row``, lists and objects as their text (hashable)."""
    return tuple(format_value(v) if isinstance(v, dict | list) else v for v in map(row.get, keys))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _measure_cell(row: Mapping[str, Any], measure: str, *, best: bool = False) -> Cell:
    """``mean`` with ``± std`` below it; the ``_pm`` text when only that is stored."""
    value, std = row.get(measure), row.get(f"{measure}_std")
    if is_number(value):
        return Cell(format_value(float(value)), f"± {std:.3f}" if is_number(std) else "", best,
                    True)
    if row.get(f"{measure}_pm") not in (None, "-"):
        return Cell(str(row[f"{measure}_pm"]), best=best, num=True)
    return Cell(DASH, title=str(row.get("error") or ""), num=True)


def _metric_table(shape: _Shape, table: Sequence[Mapping[str, Any]], metric: str) -> Table:
    rows = []
    for key, by_detector in shape.rows(table):
        values = [by_detector.get(d, {}).get(metric) for d in shape.detectors]
        flags = best_flags(values, metric_direction(metric))
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
        flags = best_flags([by_detector[d].get(metric) for d in names],
                           metric_direction(metric) or 1, alone=True)
        out.append((key, by_detector, [d for d, f in zip(names, flags, strict=True) if f]))
    return out


def _headline_table(shape: _Shape, table: Sequence[Mapping[str, Any]]) -> Table:
    lead = shape.metrics[0]
    sign = metric_direction(lead) or 1
    rows = []
    for key, by_detector, best in _winners(shape, table):
        top = by_detector[best[0]] if best else {}
        others = sorted((d for d in by_detector if d not in best
                         and is_number(by_detector[d].get(lead))),
                        key=lambda d: -sign * by_detector[d][lead])
        runner_up = (f"{others[0]} ({format_value(float(by_detector[others[0]][lead]))})"
                     if others else DASH)
        rows.append(shape.key_cells(key, by_detector) + [Cell(", ".join(best) or DASH,
                                                              best=bool(best))]
                    + [_measure_cell(top, m) for m in shape.metrics] + [Cell(runner_up)])
    headers = [*shape.key_headers(), f"best ({column_label(lead)})",
               *(column_label(m) for m in shape.metrics), "runner-up"]
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
                                if is_number(v) and k != "total_s")
        + (f" = {timing['total_s']:.0f} s" if is_number(timing.get("total_s")) else ""),
    }
    facts = {k: v for k, v in facts.items() if v not in (None, "", [])}
    if facts:
        blocks += [Heading(3, "Set-up"), kv_table(facts)]
    if _dict(settings.get("corpora")):
        blocks += [Heading(4, "Corpora"), kv_table(settings["corpora"])]
    return blocks


def _sweep_blocks(data: Mapping[str, Any], figures: list[Figure]) -> list[Block]:
    sweep = [r for r in (data.get("layer_sweep") or {}).get("table") or []
             if isinstance(r, dict) and is_number(r.get("layer"))
             and isinstance(r.get("detector"), str)]
    if not sweep and not figures:
        return []
    blocks: list[Block] = [Heading(3, "Layer sweep")]
    blocks += figures
    shape = _Shape.of(sweep, exclude=("layer",))
    if not shape.metrics:
        return blocks
    metric = shape.metrics[0]
    sign = metric_direction(metric) or 1
    layers = sorted({int(r["layer"]) for r in sweep})
    per_row: dict[tuple[tuple[Any, ...], str], dict[int, float]] = {}
    for r in sweep:
        values = per_row.setdefault((_row_key(r, shape.groups), r["detector"]), {})
        if is_number(r.get(metric)):
            values[int(r["layer"])] = float(r[metric])
    order = {key: i for i, (key, _) in enumerate(shape.rows(sweep))}
    rank = {d: i for i, d in enumerate(shape.detectors)}
    compact, full = [], []
    for (key, detector), valid in sorted(per_row.items(),
                                         key=lambda kv: (order[kv[0][0]], rank[kv[0][1]])):
        best = max(valid, key=lambda k: sign * valid[k]) if valid else None
        last = valid.get(layers[-1])
        head = [*(value_cell(v) for v in key), Cell(detector)]
        gain = DASH if best is None or last is None else f"{valid[best] - last:+.3f}"
        compact.append([*head, value_cell(best), value_cell(None if best is None else valid[best]),
                        value_cell(last), Cell(gain, num=True)])
        full.append([*head, *(Cell(format_value(valid.get(layer)), num=True, best=layer == best,
                                   shade=_shade(valid.get(layer))) for layer in layers)])
    head = [*(column_label(g) for g in shape.groups), "detector"]
    label = column_label(metric)
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
    return min(1.0, max(0.0, (float(value) - 0.5) * 2)) if is_number(value) else None


def _bench_blocks(result: ResultSet) -> list[Block]:
    data = result.data
    table = data["table"]
    settings = _dict(data.get("settings"))
    blocks: list[Block] = [Heading(2, result.name, result.anchor),
                           Para(f"From {result.path}.", note=True), *_description_blocks(settings)]
    figures = result_figures(result)
    sweep_figures = [f for f in figures if f.caption.startswith("layer_sweep")]
    shape = _Shape.of(table)
    if shape.metrics:
        per = " × ".join(column_label(g) for g in shape.groups) or "row"
        blocks += [Heading(3, f"Best detector per {per}"),
                   Para(f"Ranked by mean {column_label(shape.metrics[0])} over seeds; the best of "
                        f"each row is highlighted in the tables below too.", note=True),
                   _headline_table(shape, table)]
    for metric in shape.metrics:
        blocks += [Heading(3, f"{column_label(metric)}: mean ± std over seeds"),
                   _metric_table(shape, table, metric)]
    if shape.metrics:
        seeds = _dict(settings.get("config")).get("seeds")
        blocks.append(Para((f"Seeds: {format_value(seeds)}. " if seeds else "")
                           + f"{metrics.convention(POSITIVE)} Lower FPR95 is better.",
                           note=True))
    if data.get("summary"):
        blocks += [Heading(3, "Summary"), records_table(data["summary"])]
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
    details = generic_blocks(settings)
    extra = {k: v for k, v in data.items() if k not in _BENCH_KNOWN}
    if extra:
        details += [Heading(4, "Other fields"), *generic_blocks(extra)]
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
def _isotropy_blocks(result: ResultSet) -> list[Block]:
    data = result.data
    rows = data["rows"]
    blocks: list[Block] = [Heading(2, result.name, result.anchor),
                           Para(f"Isotropy study, from {result.path}.", note=True)]
    if data.get("config"):
        blocks.append(kv_table(data["config"]))
    if rows:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        aurocs = [c for c in columns if c.startswith("auroc")]
        table_rows = []
        for r in rows:
            flags = dict(zip(aurocs, best_flags([r.get(c) for c in aurocs], 1), strict=True))
            table_rows.append([value_cell(r.get(c), best=flags.get(c, False)) for c in columns])
        blocks += [Heading(3, "Isotropy and detector AUROC per model and layer"),
                   Para("The best AUROC of each row is highlighted.", note=True),
                   Table([column_label(c) for c in columns], table_rows, small=True)]
    if data.get("correlations"):
        blocks += [Heading(3, "Correlations"), records_table(data["correlations"])]
    figures = result_figures(result)
    if figures:
        blocks += [Heading(3, "Plots"), *figures]
    extra = {k: v for k, v in data.items() if k not in _ISOTROPY_KNOWN}
    if extra:
        blocks.append(Details("Other fields", generic_blocks(extra)))
    return blocks


# ---------------------------------------------------------------------------- page
def _overview(results: Sequence[ResultSet]) -> Table:
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
            headline = DASH
            if shape.metrics:
                wins: dict[str, int] = {}
                winners = _winners(shape, table)
                for _, _, best in winners:
                    for name in best:
                        wins[name] = wins.get(name, 0) + 1
                if wins:
                    top = max(wins.values())
                    headline = (f"best {column_label(shape.metrics[0])} in {top} of {len(winners)} "
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
                for c, flag in zip(aurocs, best_flags([r[c] for c in aurocs], 1), strict=True):
                    counts[c] = counts.get(c, 0) + flag
            headline = ("best AUROC per row: " + ", ".join(
                f"{column_label(c)} {n}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1]))
                if counts else DASH)
        rows.append([Cell(result.name), Cell(what), Cell(model or DASH), Cell(size),
                     Cell(headline)])
    return Table(["result set", "what", "model", "size", "headline"], rows)


def _machine_blocks(results: Sequence[ResultSet]) -> list[Block]:
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
            [[Cell(k), *(Cell(format_value(d.get(k))) for _, d in columns)] for k in names],
            small=True)]
    return blocks


def document(root: Path, results: Sequence[ResultSet]) -> tuple[str, list[Block]]:
    """The page's title and blocks: the headline overview, one section per result set, and the
    machine and versions."""
    title = f"ood_zoo results: {root.resolve().name}"
    blocks: list[Block] = [
        Para(f"Built by ood-zoo report from {len(results)} result set(s) in {root}. "
             "Scores follow one convention: higher = more in-distribution. "
             f"{metrics.convention(POSITIVE)}"),
        Heading(2, "Headline", "headline"), _overview(results),
    ]
    for result in results:
        blocks += (_bench_blocks(result) if result.kind == BENCH_FORMAT
                   else _isotropy_blocks(result))
    blocks += _machine_blocks(results)
    return title, blocks
