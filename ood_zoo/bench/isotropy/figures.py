"""The isotropy study's figures: every measure and the AUROC gaps per layer, and each measure
against the gaps. Drawn on :class:`matplotlib.figure.Figure` objects (no pyplot) and written
atomically as PNG, like :mod:`ood_zoo.bench.plots`."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...analysis import MEASURES
from ..plots import MISSING_MATPLOTLIB, figure_class, save_png
from .study import CORRELATED, GAPS, SHORT_NAMES, StudyResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["write_plots"]


def write_plots(result: StudyResult, directory: Path) -> dict[str, Any]:
    """``isotropy_layers.png`` and ``isotropy_vs_gap.png`` into ``directory``.

    Returns
    -------
    dict
        ``{"files": [paths]}``, or ``{"skipped": reason}`` when matplotlib is missing.
    """
    try:
        figure = figure_class()
    except ImportError:
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        return {"skipped": MISSING_MATPLOTLIB}
    return {"files": [
        _plot_layers(figure, result.rows, directory / "isotropy_layers.png"),
        _plot_vs_gap(figure, result.rows, result.correlations, directory / "isotropy_vs_gap.png"),
    ]}


def _plot_layers(figure: type[Figure], rows: Sequence[Mapping[str, Any]], path: Path) -> str:
    panels = [*(m for m in MEASURES if m != "partition_isotropy"), "gaps"]
    fig = figure(figsize=(14, 7.5), layout="constrained")
    axes = fig.subplots(2, 4).ravel()
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(str(row["model"]), []).append(row)
    for axis, panel in zip(axes, panels, strict=False):
        for i, (model, members) in enumerate(by_model.items()):
            depth = [r["depth"] for r in members]
            if panel == "gaps":
                for gap, style in (("gap_cos_euclid", "-"), ("gap_cos_maha", "--")):
                    axis.plot(depth, [_nan(r[gap]) for r in members], style, marker=".",
                              color=f"C{i}", label=f"{model}: {SHORT_NAMES[gap]}")
                axis.axhline(0.0, color="0.6", linewidth=1)
                axis.set(title="AUROC gap\n(cosine minus other)")
            else:
                axis.plot(depth, [_nan(r[panel]) for r in members], marker=".", color=f"C{i}",
                          label=model)
                axis.set(title=f"{panel}\n({MEASURES[panel]} = more isotropic)")
        axis.set(xlabel="relative depth")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    fig.suptitle("Isotropy of the ID bank per layer (depth 0 = embeddings, 1 = last layer)")
    return save_png(fig, path)


def _plot_vs_gap(
    figure: type[Figure], rows: Sequence[Mapping[str, Any]], corr: Sequence[Mapping[str, Any]],
    path: Path,
) -> str:
    rho = {(c["measure"], c["gap"]): c["rho"] for c in corr if c["scope"] == "all"}
    fig = figure(figsize=(3.6 * len(CORRELATED), 4.2), layout="constrained")
    axes = fig.subplots(1, len(CORRELATED), squeeze=False)[0]
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    markers = dict(zip(GAPS, ("o", "x"), strict=True))
    for axis, measure in zip(axes, CORRELATED, strict=True):
        for i, model in enumerate(models):
            members = [r for r in rows if r["model"] == model]
            for gap, marker in markers.items():
                axis.scatter([_nan(r[measure]) for r in members],
                             [_nan(r[gap]) for r in members], s=16, marker=marker,
                             color=f"C{i}", label=f"{model}: {SHORT_NAMES[gap]}")
        values = ", ".join("-" if rho.get((measure, g)) is None
                           else f"{SHORT_NAMES[g]} {rho[(measure, g)]:+.2f}" for g in GAPS)
        axis.set(xlabel=f"{measure}\n({MEASURES[measure]} = more isotropic)",
                 title=f"Spearman ρ\n{values}")
        axis.axhline(0.0, color="0.6", linewidth=1)
        axis.grid(alpha=0.3)
    axes[0].set(ylabel="AUROC gap (cosine minus other)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Isotropy of the ID bank vs AUROC gap, one point per (model, layer) and gap")
    return save_png(fig, path)


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)

