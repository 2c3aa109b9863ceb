"""Plots of a benchmark run: ROC curves and score histograms per setting, the layer sweep and its
heat map (detector × layer).

Needs matplotlib (``pip install 'ood_zoo[plots]'``). Without it, :func:`write_plots` prints one
clear message and returns the reason; the tables and results files are written regardless.
Figures are drawn on :class:`matplotlib.figure.Figure` objects (no pyplot, no global state) and
written atomically as PNG.
"""

from __future__ import annotations

import io
import re
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics
from ..io import atomic_write_bytes

__all__ = [
    "MISSING_MATPLOTLIB", "PLOT_DETECTORS", "figure_class", "layer_heatmap", "plot_layer_heatmap",
    "plot_layer_sweep", "plot_setting", "plot_training", "save_png", "slug", "write_plots",
]

MISSING_MATPLOTLIB = (
    "matplotlib is not installed: plots skipped (results and tables are written). "
    "Install it with: pip install 'ood_zoo[plots]'"
)
#: Detectors shown in the per-setting ROC/histogram plots by default (those present).
PLOT_DETECTORS = ("cosine", "mahalanobis", "msp_vocab", "msp", "energy")
_HIST_BINS = 40
#: ``{setting: {detector: (id_scores, ood_scores)}}``, as the suites keep them for plots.
Scores = Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]


def figure_class() -> Any:
    """:class:`matplotlib.figure.Figure` (no pyplot); ImportError without matplotlib."""
    from matplotlib.figure import Figure

    return Figure


def slug(name: str) -> str:
    """A file-name-safe form of a setting name (``far:rt>bbc`` → ``far_rt-bbc``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace(">", "-").replace(":", "_")).strip("_")


def save_png(fig: Any, path: Path) -> str:
    """Write ``fig`` as a PNG at ``path`` atomically; return the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return str(path)


def plot_setting(
    setting: str, scores: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path
) -> str:
    """ROC curves (left) and ID/OOD score histograms (one panel per detector) for one setting.

    Parameters
    ----------
    setting : str
        The title.
    scores : mapping of str to (id_scores, ood_scores)
        Per detector.
    path : Path
        Where the PNG goes.
    """
    figure_cls = figure_class()
    names = list(scores)
    fig = figure_cls(figsize=(4.2 * (1 + len(names)), 3.6))
    axes = fig.subplots(1, 1 + len(names), squeeze=False)[0]
    roc = axes[0]
    for name in names:
        id_scores, ood_scores = scores[name]
        fpr, tpr, _ = metrics.roc_curve(id_scores, ood_scores)
        roc.plot(fpr, tpr, label=f"{name} ({metrics.auroc(id_scores, ood_scores):.3f})")
    roc.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    roc.set(xlabel="FPR (OOD accepted)", ylabel="TPR (ID accepted)", title=f"ROC: {setting}")
    roc.legend(fontsize=8, loc="lower right")
    for axis, name in zip(axes[1:], names, strict=True):
        id_scores, ood_scores = (np.asarray(a, dtype=np.float64) for a in scores[name])
        both = np.concatenate([id_scores, ood_scores])
        low, high = float(both.min()), float(both.max())
        bins = np.linspace(low, high if high > low else low + 1.0, _HIST_BINS + 1)
        axis.hist(id_scores, bins=bins, alpha=0.55, density=True, label="ID test")
        axis.hist(ood_scores, bins=bins, alpha=0.55, density=True, label="OOD")
        axis.set(xlabel="score (higher = more ID)", title=name)
        axis.legend(fontsize=8)
    return save_png(fig, path)


def plot_layer_sweep(
    sweep_table: Sequence[Mapping[str, Any]], path: Path, *, n_states: int | None = None
) -> str:
    """AUROC against layer, one panel per detector, one line per setting (mean ± std band)."""
    figure_cls = figure_class()
    by_detector: dict[str, dict[str, list[tuple[int, float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for row in sweep_table:
        if row.get("auroc") is None:
            continue
        by_detector[row["detector"]][row["setting"]].append(
            (int(row["layer"]), float(row["auroc"]), float(row.get("auroc_std") or 0.0))
        )
    detectors = list(by_detector)
    fig = figure_cls(figsize=(6.5 * max(1, len(detectors)), 4.4))
    axes = fig.subplots(1, max(1, len(detectors)), squeeze=False)[0]
    from matplotlib import colormaps

    palette = list(colormaps["tab20"].colors)  # more settings than the default 10 colours
    for axis, detector in zip(axes, detectors, strict=False):
        axis.set_prop_cycle(color=palette)
        for setting, points in by_detector[detector].items():
            points.sort()
            layers = np.array([p[0] for p in points])
            mean = np.array([p[1] for p in points])
            std = np.array([p[2] for p in points])
            style = "-" if setting.startswith("far") else "--"
            (line,) = axis.plot(layers, mean, style, marker=".", label=setting)
            axis.fill_between(layers, mean - std, mean + std, color=line.get_color(), alpha=0.12)
        axis.set(xlabel="hidden state (0 = embeddings)", ylabel="AUROC", title=detector)
        if n_states:
            axis.set_xlim(-0.5, n_states - 0.5)
        axis.grid(alpha=0.3)
    if detectors:
        axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Layer sweep: AUROC per layer (solid far-OOD, dashed near-OOD)")
    return save_png(fig, path)


def layer_heatmap(
    sweep_table: Sequence[Mapping[str, Any]],
) -> dict[str, tuple[list[str], list[int], np.ndarray]]:
    """The layer sweep's AUROC as ``{group: (detectors, layers, values [detector, layer])}``.

    A setting's group is its name up to the first ``:`` (``far``, ``near``), or ``all`` without
    one; a cell is the mean AUROC over the group's settings that have it, NaN if none.
    """
    cells: dict[str, dict[tuple[str, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in sweep_table:
        if row.get("auroc") is None:
            continue
        setting = str(row["setting"])
        group = setting.split(":", 1)[0] if ":" in setting else "all"
        cells[group][(row["detector"], int(row["layer"]))].append(float(row["auroc"]))
    out = {}
    for group, values in cells.items():
        detectors = list(dict.fromkeys(d for d, _ in values))
        layers = sorted({layer for _, layer in values})
        grid = np.full((len(detectors), len(layers)), np.nan)
        for (detector, layer), aurocs in values.items():
            grid[detectors.index(detector), layers.index(layer)] = float(np.mean(aurocs))
        out[group] = (detectors, layers, grid)
    return out


def plot_layer_heatmap(sweep_table: Sequence[Mapping[str, Any]], path: Path) -> str:
    """AUROC per detector (rows) and layer (columns), one panel per setting group
    (:func:`layer_heatmap`), on one colour scale from chance (0.5) to 1; the best layer of each
    row is outlined."""
    figure_cls = figure_class()
    groups = layer_heatmap(sweep_table)
    widest = max((len(layers) for _, layers, _ in groups.values()), default=1)
    tallest = max((len(detectors) for detectors, _, _ in groups.values()), default=1)
    fig = figure_cls(figsize=(2.5 + 0.32 * widest, (1.2 + 0.38 * tallest) * max(1, len(groups))))
    axes = fig.subplots(max(1, len(groups)), 1, squeeze=False, gridspec_kw={"hspace": 0.35})[:, 0]
    image = None
    for axis, (group, (detectors, layers, grid)) in zip(axes, groups.items(), strict=False):
        image = axis.imshow(grid, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto",
                            interpolation="nearest")
        axis.set_xticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
        axis.set_yticks(range(len(detectors)), detectors, fontsize=8)
        axis.set_title(f"{group}: AUROC per layer (mean over settings)")
        for row, values in enumerate(grid):
            if np.isfinite(values).any():
                best = int(np.nanargmax(values))
                axis.add_patch(_outline(best, row))
    axes[-1].set_xlabel("hidden state (0 = embeddings)")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="AUROC", shrink=0.9)
    return save_png(fig, path)


def _outline(column: int, row: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=1.5)


def plot_training(training: Sequence[Mapping[str, Any]], path: Path) -> str:
    """Fine-tuning curves: train loss (left) and dev accuracy (right) per epoch, one line per
    run, with the reporting epoch marked."""
    figure_cls = figure_class()
    fig = figure_cls(figsize=(11, 3.8))
    loss_axis, acc_axis = fig.subplots(1, 2)
    for run in training:
        history = run["history"]
        epochs = [h["epoch"] for h in history]
        label = f"{run['setting']} {run['variant']} k={run['shots']} s{run['seed']}"
        (line,) = loss_axis.plot(epochs, [h["train_loss"] for h in history], marker=".",
                                 label=label)
        acc_axis.plot(epochs, [h["dev_accuracy"] for h in history], marker=".",
                      color=line.get_color())
        if run.get("best_epoch"):
            acc_axis.plot([run["best_epoch"]], [run["best_dev_accuracy"]], marker="*",
                          markersize=12, color=line.get_color())
    loss_axis.set(xlabel="epoch", ylabel="train loss", title="Fine-tuning loss", yscale="log")
    acc_axis.set(xlabel="epoch", ylabel="dev accuracy", ylim=(-0.02, 1.02),
                 title="Dev accuracy (★ reporting epoch)")
    for axis in (loss_axis, acc_axis):
        axis.grid(alpha=0.3)
    loss_axis.legend(fontsize=7)
    return save_png(fig, path)


def write_plots(
    scores: Scores,
    directory: Path,
    *,
    detectors: Sequence[str] = PLOT_DETECTORS,
    sweep_table: Sequence[Mapping[str, Any]] = (),
    n_states: int | None = None,
    training: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Every plot of a run into ``directory``: one per setting (the ``detectors`` it has
    scores of), then the layer sweep with its heat map and the fine-tuning curves when there are
    any.

    Returns
    -------
    dict
        ``{"files": [paths]}``, or ``{"skipped": reason}`` when matplotlib is missing.
    """
    try:
        figure_class()
    except ImportError:
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        return {"skipped": MISSING_MATPLOTLIB}
    files = []
    for setting, per_detector in scores.items():
        picked = {d: per_detector[d] for d in detectors if d in per_detector}
        if picked:
            files.append(plot_setting(setting, picked, directory / f"{slug(setting)}.png"))
    if sweep_table:
        files.append(plot_layer_sweep(sweep_table, directory / "layer_sweep.png",
                                      n_states=n_states))
        files.append(plot_layer_heatmap(sweep_table, directory / "layer_sweep_heatmap.png"))
    if training:
        files.append(plot_training(training, directory / "training.png"))
    return {"files": files}
