"""The zero-grad run's outputs: tables (Markdown, text), CSV, JSON and plots, written atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ... import metrics
from ..plots import write_plots
from ..runner import MSP_VOCAB
from ..selection import configurations_table
from ..tables import (
    POSITIVE,
    TABLE_HEADERS,
    convention_record,
    csv_bytes,
    json_bytes,
    layer_sweep_wide,
    markdown_table,
    summary_by_kind,
    write_files,
)
from .run import BenchResult

__all__ = ["CSV_COLUMNS", "TABLE_COLUMNS", "render_tables", "write_outputs"]


TABLE_COLUMNS = ("setting", "detector", "auroc_pm", "fpr95_pm", "aupr_in_pm", "n_seeds")
CSV_COLUMNS = (
    "row_type", "setting", "kind", "id", "ood", "detector", "layer", "seed", "n_bank", "n_id",
    "n_ood", "id_classes", "ood_classes", "auroc", "auroc_std", "fpr95", "fpr95_std", "aupr_in",
    "aupr_in_std", "aupr_out", "n_seeds", "n_errors", "fit_s", "score_s", "error", "positive",
)


def render_tables(result: BenchResult) -> tuple[str, str]:
    """The report as Markdown and as plain text: main table, summary, layer sweep."""
    s = result.meta["settings"]
    config = s["config"]
    ext = s["extraction"]  # empty for a run on given features (run_bench(extractor=...))
    title = (f"{config['suite']} benchmark: model {ext.get('model', config['model'])}, "
             f"{ext.get('pooling', config['pooling'] or '?')} pooling, "
             f"layer {s['main_layer']}, bank = ID {s['bank']} split, seeds {config['seeds']}")
    notes = [
        metrics.convention(POSITIVE),
        "AUROC / FPR95 / AUPR-In: mean ± sample std over seeds.",
        f"msp: {s['msp_variants']['msp']}; {MSP_VOCAB}: {s['msp_variants'][MSP_VOCAB]}.",
    ]
    if s["skipped_corpora"]:
        notes.append("skipped corpora: " + "; ".join(
            f"{k} ({v})" for k, v in s["skipped_corpora"].items()))
    summary = summary_by_kind(result.table)
    sum_cols = ("detector", "far_auroc", "far_fpr95", "near_auroc", "near_fpr95")
    sweep, layer_cols = layer_sweep_wide(result.sweep_table)
    sweep_cols = ["setting", "detector", "best_layer", "best_auroc", "last_auroc", *layer_cols]

    md = [f"# {title}", "", *[f"- {n}" for n in notes], "",
          markdown_table(result.table, TABLE_COLUMNS, TABLE_HEADERS), "",
          "## Mean over settings", "", markdown_table(summary, sum_cols, {}), ""]
    txt = [title, *notes, "", metrics.format_table(
        [{TABLE_HEADERS.get(k, k): r.get(k) for k in TABLE_COLUMNS} for r in result.table]),
        "", "mean over settings:", metrics.format_table(summary, sum_cols), ""]
    if config["selection"] == "auto":
        compared = configurations_table(result.table, s["oracle"])
        columns = ("setting", "paper", "auto", "auto_cv", "oracle", "oracle_layer")
        picks = sorted({f"{c['id']}: {c['auto_cv']}" for c in s["selection"]})
        md += ["## Configurations: the paper's, chosen from ID data, oracle (AUROC)", "",
               "- paper: cosine, last layer, last token; auto: layers (cosine on every block "
               "output, Fisher–Brown); auto_cv: class-held-out CV on the bank picks among the "
               "aggregations and the single block layers; oracle: best single layer per "
               "setting, **chosen on the OOD test data** (it peeks).",
               f"- auto_cv picked (per seed and ID task): {', '.join(picks)}.", "",
               markdown_table(compared, columns, {}), ""]
        txt += ["configurations (AUROC):", metrics.format_table(compared, columns), ""]
    if sweep:
        md += ["## Layer sweep (AUROC, mean over seeds)", "",
               markdown_table(sweep, sweep_cols, {}), ""]
        txt += ["layer sweep (AUROC, mean over seeds):",
                metrics.format_table(sweep, sweep_cols[:5]), ""]
    return "\n".join(md), "\n".join(txt)


def write_outputs(result: BenchResult, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``results.json``, ``results.csv``, ``layer_sweep.csv``, ``table.md``, ``table.txt``
    and the plots under ``plots/`` into ``out_dir``, each file atomically.

    Returns
    -------
    dict
        ``{"files": [...], "plots": {...}}``: the paths written and the plot status (a list of
        files, or the reason plots were skipped, e.g. matplotlib missing).
    """
    directory = Path(out_dir)
    settings = result.meta["settings"]
    plot_status = (write_plots(result.scores, directory / "plots", sweep_table=result.sweep_table,
                               n_states=settings["n_states"])
                   if settings["config"]["plots"] else {"skipped": "disabled"})
    md, txt = render_tables(result)
    payload = {
        "format": "ood_zoo.bench", "format_version": 1,
        "table": result.table, "rows": result.rows,
        "layer_sweep": {"table": result.sweep_table, "rows": result.sweep_rows},
        "summary": summary_by_kind(result.table), "convention": convention_record(),
        **result.meta, "plots": plot_status,
    }

    def seeds_and_means(rows: Sequence[Mapping[str, Any]],
                        table: Sequence[Mapping[str, Any]]) -> bytes:
        return csv_bytes([{**r, "row_type": "seed", "positive": POSITIVE} for r in rows]
                         + [{**r, "row_type": "aggregate", "seed": "all", "positive": POSITIVE}
                            for r in table],
                         CSV_COLUMNS)

    files = write_files(directory, {
        "results.json": json_bytes(payload),
        "results.csv": seeds_and_means(result.rows, result.table),
        "layer_sweep.csv": seeds_and_means(result.sweep_rows, result.sweep_table),
        "table.md": (md + "\n").encode("utf-8"),
        "table.txt": (txt + "\n").encode("utf-8"),
    })
    return {"files": files + list(plot_status.get("files", [])), "plots": plot_status}
