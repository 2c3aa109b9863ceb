"""The isotropy study's outputs: the Markdown and text tables, ``isotropy.csv``,
``isotropy.json`` (format ``ood_zoo.isotropy``) and the plots."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ... import metrics
from ..tables import (
    POSITIVE,
    convention_record,
    csv_bytes,
    json_bytes,
    jsonable,
    markdown_table,
    write_files,
)
from .figures import write_plots
from .study import ROW_COLUMNS, SHORT_NAMES, StudyResult

__all__ = ["final_rows", "render_tables", "write_outputs"]

#: Columns of the final-layer table.
_TABLE = ("model", "layer", "average_cosine", "partition_isotropy", "log_partition_isotropy",
          "isoscore", "top1_variance", "top10_variance", "auroc_cosine", "auroc_euclidean",
          "auroc_mahalanobis", "gap_cos_euclid", "gap_cos_maha")


def final_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The last layer's row of each model, in model order."""
    last: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        if row["model"] not in last or row["layer"] > last[row["model"]]["layer"]:
            last[row["model"]] = row
    return list(last.values())


def _short_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    def value(v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else v

    out = []
    for row in rows:
        entry = {SHORT_NAMES.get(c, c): value(row.get(c)) for c in columns}
        if "partition_isotropy" in columns and isinstance(row.get("partition_isotropy"), float):
            entry[SHORT_NAMES["partition_isotropy"]] = f"{row['partition_isotropy']:.3g}"
        out.append(entry)
    return out


def render_tables(result: StudyResult) -> tuple[str, str]:
    """The report as Markdown (final layers, every layer, correlations) and as plain text."""
    data = result.meta.get("data", {})
    title = (f"Isotropy vs detection: ID {data.get('id')} ({data.get('n_bank')} bank / "
             f"{data.get('n_test')} test) vs OOD {data.get('ood')} ({data.get('n_ood')})")
    models = ", ".join(f"{m['name']} ({m['pooling']} pooling, "
                       f"{'paper template' if m['template'] else 'raw text'}, {m['dim']}-d, "
                       f"{m['n_states']} hidden states)" for m in result.meta.get("models", []))
    notes = [
        f"models: {models}.",
        "Isotropy is measured on the ID bank. More isotropic = lower avg_cos / top1_var / "
        "top10_var, higher I(V) / log I / IsoScore.",
        f"AUROC: {metrics.convention(POSITIVE)} (AUROC itself is the same with OOD positive.) "
        "cos = cosine 1-NN, L2 = Euclidean 1-NN on raw vectors, maha = class-conditional "
        "Mahalanobis; gaps are cosine minus the other.",
        "IsoScore is capped at (n - 2) / (d - 1) when the bank (n vectors) is smaller than the "
        "dimension d.",
    ]
    final = _short_rows(final_rows(result.rows), _TABLE)
    layers = _short_rows(result.rows, ("model", "layer", "depth", *_TABLE[2:]))
    corr = [{"scope": c["scope"], "measure": SHORT_NAMES.get(c["measure"], c["measure"]),
             "gap": SHORT_NAMES.get(c["gap"], c["gap"]), "n": c["n"], "rho": c["rho"],
             "p": c["p_value"]} for c in result.correlations]
    corr_all = [c for c in corr if c["scope"] == "all"]
    columns = list(final[0]) if final else []
    md = [f"# {title}", "", *[f"- {n}" for n in notes], "", "## Final layer", "",
          markdown_table(final, columns, {}), "",
          "## Spearman correlation of isotropy with the AUROC gaps", "",
          markdown_table(corr, list(corr[0]) if corr else [], {}), "",
          "## Every layer", "", markdown_table(layers, list(layers[0]) if layers else [], {}), ""]
    txt = [title, *notes, "", "final layer:", metrics.format_table(final, columns), "",
           "Spearman rho across all models and layers:",
           metrics.format_table(corr_all, ["measure", "gap", "n", "rho", "p"]), ""]
    return "\n".join(md), "\n".join(txt)




def write_outputs(result: StudyResult, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``isotropy.json``, ``isotropy.md``, ``isotropy.csv`` and ``plots/*.png`` atomically.

    Returns
    -------
    dict
        ``{"files": [...], "plots": {...}}``: the paths written and the plot status (files
        relative to ``out_dir``, or the reason plots were skipped).
    """
    directory = Path(out_dir)
    if result.meta.get("config", {}).get("plots", True):
        status = write_plots(result, directory / "plots")
    else:
        status = {"skipped": "disabled"}
    if "files" in status:
        status = {"files": [str(Path(f).relative_to(directory)) for f in status["files"]]}
    payload = {
        "format": "ood_zoo.isotropy", "format_version": 1,
        "config": result.meta.get("config", {}),
        "rows": [{k: r.get(k) for k in ROW_COLUMNS} for r in result.rows],
        "correlations": result.correlations, "convention": convention_record(),
        **{k: v for k, v in result.meta.items() if k != "config"},
        "plots": status,
    }
    md, _ = render_tables(result)
    files = write_files(directory, {
        "isotropy.json": json_bytes(payload),
        "isotropy.md": (md + "\n").encode("utf-8"),
        # NaN and infinite values are left empty
        "isotropy.csv": csv_bytes([jsonable(row) for row in result.rows], ROW_COLUMNS),
    })
    return {"files": files + [str(directory / f) for f in status.get("files", [])],
            "plots": status}
