"""``ood-zoo isotropy``: is an isotropic embedding space the reason cosine works?

Liu et al., "How Good Are LLMs at Out-of-Distribution Detection?" (LREC-COLING 2024) explain the
strength of the cosine detector on LLM hidden states by their isotropy, against the anisotropy of
BERT-family encoders. This study puts numbers on both halves of that claim, per model and layer:

1. **Isotropy** of the ID bank: every measure of :mod:`ood_zoo.analysis.isotropy`.
2. **Detection**: the AUROC (ID positive) of cosine 1-NN (the paper's detector, ``cosine``),
   Euclidean 1-NN on the raw, unnormalised vectors (``knn`` with ``k=1, normalize=False``) and
   Mahalanobis (``mahalanobis``, class-conditional on the ID labels, one shared covariance), and
   the gaps ``cosine - euclidean`` and ``cosine - mahalanobis``.
3. **Relation**: the Spearman correlation between each measure and each gap, over every
   (model, layer) row and within each model over its layers.

Texts come from the corpora of the ``zero-grad`` suite (:mod:`ood_zoo.bench.suites`): a seeded,
class-stratified ID bank and an ID test part of about the same size from ``--id`` (default ``rt``,
Rotten Tomatoes reviews) and an OOD sample from ``--ood`` (default ``chitchat``). Each model runs
once per corpus (:func:`ood_zoo.features.extract` with ``layers="all"``, cached on disk).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics
from ..errors import InputError
from ..io import atomic_write_bytes
from .isotropy import MEASURES, isotropy_measures

__all__ = [
    "DEFAULT_MODELS",
    "DETECTORS",
    "IsotropyConfig",
    "ModelChoice",
    "StudyResult",
    "add_arguments",
    "correlations",
    "render_tables",
    "run_cli",
    "run_study",
    "write_outputs",
]

#: The models compared by default: a LLaMA-architecture decoder and a BERT encoder.
DEFAULT_MODELS = ("smollm2-135m", "minilm")
#: Texts per part by default (bank, ID test, OOD), sized for both default models to take under
#: about 3 minutes on 2 CPU cores with a cold features cache.
DEFAULT_N = 150
#: The detectors compared: row label → (registered detector, hyperparameters).
DETECTORS: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "cosine": ("cosine", {}),
    "euclidean": ("knn", {"k": 1, "metric": "l2", "normalize": False}),
    "mahalanobis": ("mahalanobis", {}),
}
#: The AUROC gaps: column → (minuend, subtrahend) detector labels.
GAPS: Mapping[str, tuple[str, str]] = {
    "gap_cos_euclid": ("cosine", "euclidean"),
    "gap_cos_maha": ("cosine", "mahalanobis"),
}
#: Measures correlated with the gaps (``log_partition_isotropy`` stands for the partition
#: isotropy: same ranks, but no underflow to 0).
CORRELATED = ("average_cosine", "log_partition_isotropy", "isoscore", "top1_variance",
              "top10_variance")
ROW_COLUMNS = (
    "model", "layer", "depth", "n", "dim", "average_cosine", "partition_isotropy",
    "log_partition_isotropy", "isoscore", "top1_variance", "top10_variance", "auroc_cosine",
    "auroc_euclidean", "auroc_mahalanobis", "gap_cos_euclid", "gap_cos_maha", "note",
)
_SHORT = {
    "average_cosine": "avg_cos", "partition_isotropy": "I(V)", "log_partition_isotropy": "log I",
    "isoscore": "IsoScore", "top1_variance": "top1_var", "top10_variance": "top10_var",
    "auroc_cosine": "AUROC cos", "auroc_euclidean": "AUROC L2", "auroc_mahalanobis": "AUROC maha",
    "gap_cos_euclid": "cos-L2", "gap_cos_maha": "cos-maha",
}


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ModelChoice:
    """A model of the study and how its texts become vectors.

    Attributes
    ----------
    name : str
        A registered model name (``ood-zoo models``) or a local model directory.
    pooling : str, optional
        Default: the registered model's own (``model_spec(name).pooling``); for a directory,
        ``last`` for a causal LM and ``mean`` otherwise.
    template : str, optional
        A prompt with ``{text}``. Default: the registered model's (the paper's for SmolLM2,
        none for MiniLM); for a directory, the paper's for a causal LM. ``""`` forces raw text.
    """

    name: str
    pooling: str | None = None
    template: str | None = None


@dataclass(frozen=True)
class IsotropyConfig:
    """Everything that defines a study run (stored in ``isotropy.json``).

    Attributes
    ----------
    models : tuple of ModelChoice
    id_corpus, ood_corpus : str
        Corpus keys of the ``zero-grad`` suite.
    n_bank, n_test, n_ood : int
        Texts in the ID bank (isotropy is measured on it, detectors are fit on it), the ID test
        part and the OOD sample; scaled down when a corpus is smaller.
    seed : int
        Seed of the draws.
    max_length, batch_size : int
        Tokens per text (template included) and texts per forward pass.
    cache : bool or str
        The features cache: on, off, or a directory.
    plots, progress : bool
    threads : int, optional
        Torch threads; default ``OMP_NUM_THREADS`` or 2.
    """

    models: tuple[ModelChoice, ...] = tuple(ModelChoice(m) for m in DEFAULT_MODELS)
    id_corpus: str = "rt"
    ood_corpus: str = "chitchat"
    n_bank: int = DEFAULT_N
    n_test: int = DEFAULT_N
    n_ood: int = DEFAULT_N
    seed: int = 0
    max_length: int = 128
    batch_size: int = 32
    cache: bool | str = True
    plots: bool = True
    progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise InputError("give at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise InputError(f"models must be distinct, got {names}")
        for n, what in ((self.n_bank, "n_bank"), (self.n_test, "n_test"), (self.n_ood, "n_ood")):
            if n < 2:
                raise InputError(f"{what} must be >= 2, got {n}")
        if self.id_corpus == self.ood_corpus:
            raise InputError(f"the ID and OOD corpora must differ, got {self.id_corpus!r} twice")
        if self.max_length < 8:
            raise InputError(f"max_length must be >= 8, got {self.max_length}")
        for m in self.models:
            if m.template and "{text}" not in m.template:
                raise InputError(f"{m.name}: template must contain the field {{text}}")


@dataclass(frozen=True)
class _Resolved:
    """A :class:`ModelChoice` with its defaults filled in."""

    name: str
    kind: str
    pooling: str
    template: str | None


def resolve_model(choice: ModelChoice) -> _Resolved:
    """Fill in a model's pooling and template defaults without loading it.

    Raises
    ------
    InputError
        If the name is neither registered nor a local directory, or the pooling is unknown.
    """
    from ..bench.suites import PAPER_TEMPLATE
    from ..features import POOLING_MODES, model_spec
    from ..features.models import _is_causal_lm

    spec = model_spec(choice.name)
    if spec is not None:
        kind, pooling, template = spec.kind, spec.pooling, spec.template
    elif Path(choice.name).is_dir():
        kind = "decoder" if _is_causal_lm(Path(choice.name)) else "encoder"
        pooling = "last" if kind == "decoder" else "mean"
        template = PAPER_TEMPLATE if kind == "decoder" else None
    else:
        from ..registry import get_registry

        raise InputError(
            f"unknown model {choice.name!r}: not a registered name "
            f"({', '.join(get_registry().models) or 'none'}) and not a local model directory"
        )
    pooling = choice.pooling or pooling
    if pooling not in POOLING_MODES:
        raise InputError(f"{choice.name}: unknown pooling {pooling!r}; choose one of "
                         f"{list(POOLING_MODES)}")
    if choice.template is not None:
        template = choice.template or None
    return _Resolved(choice.name, kind, pooling, template)


# ---------------------------------------------------------------------------- data
@dataclass(frozen=True)
class _Texts:
    """The study's texts: ID bank then ID test (one list, one extraction), and the OOD sample."""

    id_texts: list[str]
    bank_labels: np.ndarray
    n_bank: int
    ood_texts: list[str]
    descriptions: dict[str, str]


def _draw_texts(config: IsotropyConfig, corpora: Mapping[str, Any]) -> _Texts:
    from ..data import split_indices

    for key in (config.id_corpus, config.ood_corpus):
        if key not in corpora:
            raise InputError(f"unknown corpus {key!r}; choose from {', '.join(corpora)}")
    id_data = corpora[config.id_corpus].load()
    ood_data = corpora[config.ood_corpus].load()
    wanted = {"bank": config.n_bank, "test": config.n_test}
    total = sum(wanted.values())
    if total > len(id_data):  # scale both parts down, keeping their ratio
        wanted = {k: v * len(id_data) // total for k, v in wanted.items()}
    if min(wanted.values()) < 2:
        raise InputError(f"corpus {config.id_corpus!r} has only {len(id_data)} texts")
    bank, test = split_indices(len(id_data), [wanted["bank"], wanted["test"]], seed=config.seed,
                               stratify=id_data.labels)
    (ood,) = split_indices(len(ood_data), [min(config.n_ood, len(ood_data))], seed=config.seed)
    if len(ood) < 2:
        raise InputError(f"corpus {config.ood_corpus!r} has only {len(ood_data)} texts")
    labels = (np.zeros(len(bank), dtype=np.int64) if id_data.labels is None
              else np.asarray(id_data.labels)[bank])
    return _Texts(
        id_texts=[id_data.texts[i] for i in (*bank, *test)], bank_labels=labels,
        n_bank=len(bank), ood_texts=[ood_data.texts[i] for i in ood],
        descriptions={k: corpora[k].description for k in (config.id_corpus, config.ood_corpus)},
    )


# ---------------------------------------------------------------------------- one layer
def _auroc(
    detector: str, params: Mapping[str, Any], bank: torch.Tensor, labels: np.ndarray,
    test: torch.Tensor, ood: torch.Tensor,
) -> tuple[float | None, str | None]:
    from ..registry import create

    try:
        fitted = create(detector, **params).fit(bank, labels)
        return metrics.evaluate(fitted.score(test), fitted.score(ood))["auroc"], None
    except Exception as exc:  # one failing detector leaves the other columns intact
        return None, f"{detector}: {type(exc).__name__}: {exc}"


def layer_row(
    bank: torch.Tensor, labels: np.ndarray, test: torch.Tensor, ood: torch.Tensor
) -> dict[str, Any]:
    """Isotropy of ``bank`` and the AUROC of each of :data:`DETECTORS` fit on it, plus the gaps.

    Returns
    -------
    dict
        ``n``, ``dim``, the :data:`~ood_zoo.analysis.isotropy.MEASURES` (``nan`` where
        undefined), ``auroc_<detector>`` and the :data:`GAPS` (``None`` where a detector failed)
        and ``note`` (why a value is missing, or ``None``).
    """
    row: dict[str, Any] = {"n": int(bank.shape[0]), "dim": int(bank.shape[1])}
    row.update(isotropy_measures(bank))
    notes = []
    if math.isnan(row["isoscore"]):
        notes.append("all bank vectors are identical")
    for label, (detector, params) in DETECTORS.items():
        row[f"auroc_{label}"], error = _auroc(detector, params, bank, labels, test, ood)
        if error:
            notes.append(error)
    for gap, (a, b) in GAPS.items():
        x, y = row[f"auroc_{a}"], row[f"auroc_{b}"]
        row[gap] = None if x is None or y is None else x - y
    row["note"] = "; ".join(notes) or None
    return row


# ---------------------------------------------------------------------------- correlations
def correlations(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Spearman's ρ between each isotropy measure and each AUROC gap.

    Over every row (``scope="all"``) and over the layers of each model (``scope=<model>``).
    Rows where either value is missing or ``nan`` are left out; fewer than 3 pairs, or a
    constant column, give ``rho = None``. The p-value is scipy's, which assumes independent
    samples; neighbouring layers are not, so read it as descriptive.

    Returns
    -------
    list of dict
        ``scope``, ``measure``, ``gap``, ``n``, ``rho``, ``p_value`` and ``more_isotropic``
        (whether a higher or lower measure means more isotropic).
    """
    from scipy.stats import spearmanr

    scopes = {"all": list(rows)}
    for row in rows:
        scopes.setdefault(str(row["model"]), []).append(row)
    out = []
    for scope, members in scopes.items():
        for measure in CORRELATED:
            for gap in GAPS:
                pairs = np.array(
                    [(r[measure], r[gap]) for r in members
                     if _finite(r.get(measure)) and _finite(r.get(gap))], dtype=np.float64,
                ).reshape(-1, 2)
                rho = p_value = None
                if len(pairs) >= 3 and np.ptp(pairs[:, 0]) > 0 and np.ptp(pairs[:, 1]) > 0:
                    result = spearmanr(pairs[:, 0], pairs[:, 1])
                    rho, p_value = float(result.statistic), float(result.pvalue)
                out.append({"scope": scope, "measure": measure, "gap": gap, "n": len(pairs),
                            "rho": rho, "p_value": p_value,
                            "more_isotropic": MEASURES[measure]})
    return out


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


# ---------------------------------------------------------------------------- the run
@dataclass
class StudyResult:
    """What :func:`run_study` measured.

    Attributes
    ----------
    rows : list of dict
        One per (model, layer), with the columns of :data:`ROW_COLUMNS`.
    correlations : list of dict
        :func:`correlations` of ``rows``.
    meta : dict
        ``config``, ``models`` (resolved pooling/template, hidden states, dimension), ``data``,
        ``versions``, ``machine`` and ``timing_s``.
    """

    rows: list[dict[str, Any]]
    correlations: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)


def run_study(
    config: IsotropyConfig, *, corpora: Mapping[str, Any] | None = None
) -> StudyResult:
    """Measure isotropy and detection on every layer of every model of ``config``.

    Parameters
    ----------
    config : IsotropyConfig
    corpora : mapping of str to Corpus, optional
        Where ``config.id_corpus`` and ``config.ood_corpus`` are looked up; default the
        ``zero-grad`` suite's. Tests pass small synthetic corpora here.

    Returns
    -------
    StudyResult

    Raises
    ------
    InputError
        On an unknown model, pooling or corpus (before any model runs).
    """
    from tqdm.auto import tqdm

    from ..bench.session import bench_threads, machine_info, package_versions
    from ..bench.suites import get_suite
    from ..bench.tables import jsonable
    from ..features import extract

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    resolved = [resolve_model(m) for m in config.models]
    texts = _draw_texts(config, get_suite("zero-grad").corpora if corpora is None else corpora)
    previous = torch.get_num_threads()
    threads = bench_threads(config.threads)
    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    timing: dict[str, float] = {}
    try:
        for model in resolved:
            tick = time.perf_counter()
            features = {}
            for part, part_texts in (("id", texts.id_texts), ("ood", texts.ood_texts)):
                if config.progress:
                    print(f"{model.name}: extracting {part} ({len(part_texts)} texts)",
                          file=sys.stderr)
                features[part] = extract(
                    part_texts, model.name, layers="all", pooling=model.pooling,
                    template=model.template, batch_size=config.batch_size,
                    max_length=config.max_length, cache=config.cache, progress=config.progress,
                )
            timing[f"{model.name}:extract_s"] = time.perf_counter() - tick
            tick = time.perf_counter()
            id_feats, ood_feats = features["id"], features["ood"]
            n_states = int(id_feats.shape[1])
            for layer in tqdm(range(n_states), desc=f"{model.name} layers", unit="layer",
                              disable=not config.progress):
                x = id_feats[:, layer]
                row = layer_row(x[: texts.n_bank], texts.bank_labels, x[texts.n_bank :],
                                ood_feats[:, layer])
                rows.append({"model": model.name, "layer": layer,
                             "depth": layer / max(1, n_states - 1), **row})
            timing[f"{model.name}:analysis_s"] = time.perf_counter() - tick
            models.append({**asdict(model), "n_states": n_states,
                           "dim": int(id_feats.shape[2])})
        machine = machine_info()
    finally:
        torch.set_num_threads(previous)
    timing["total_s"] = time.perf_counter() - start
    meta = {
        "config": jsonable(asdict(config)),
        "models": models,
        "data": {
            "id": config.id_corpus, "ood": config.ood_corpus, "descriptions": texts.descriptions,
            "n_bank": texts.n_bank, "n_test": len(texts.id_texts) - texts.n_bank,
            "n_ood": len(texts.ood_texts),
            "bank_classes": {str(c): int(k) for c, k in
                             zip(*np.unique(texts.bank_labels, return_counts=True), strict=True)},
        },
        "detectors": {label: {"detector": d, "params": dict(p)}
                      for label, (d, p) in DETECTORS.items()},
        "threads": threads,
        "versions": package_versions(),
        "machine": machine,
        "timing_s": timing,
    }
    return StudyResult(rows, correlations(rows), meta)


# ---------------------------------------------------------------------------- reports
def final_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The last layer's row of each model, in model order."""
    last: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        if row["model"] not in last or row["layer"] > last[row["model"]]["layer"]:
            last[row["model"]] = row
    return list(last.values())


_TABLE = ("model", "layer", "average_cosine", "partition_isotropy", "log_partition_isotropy",
          "isoscore", "top1_variance", "top10_variance", "auroc_cosine", "auroc_euclidean",
          "auroc_mahalanobis", "gap_cos_euclid", "gap_cos_maha")


def _short_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    def value(v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else v

    out = []
    for row in rows:
        entry = {_SHORT.get(c, c): value(row.get(c)) for c in columns}
        if "partition_isotropy" in columns and isinstance(row.get("partition_isotropy"), float):
            entry[_SHORT["partition_isotropy"]] = f"{row['partition_isotropy']:.3g}"
        out.append(entry)
    return out


def render_tables(result: StudyResult) -> tuple[str, str]:
    """The report as Markdown (final layers, every layer, correlations) and as plain text."""
    from ..bench.tables import markdown_table

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
        "AUROC: ID positive. cos = cosine 1-NN, L2 = Euclidean 1-NN on raw vectors, maha = "
        "class-conditional Mahalanobis; gaps are cosine minus the other.",
        "IsoScore is capped at (n - 2) / (d - 1) when the bank (n vectors) is smaller than the "
        "dimension d.",
    ]
    final = _short_rows(final_rows(result.rows), _TABLE)
    layers = _short_rows(result.rows, ("model", "layer", "depth", *_TABLE[2:]))
    corr = [{"scope": c["scope"], "measure": _SHORT.get(c["measure"], c["measure"]),
             "gap": _SHORT.get(c["gap"], c["gap"]), "n": c["n"], "rho": c["rho"],
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


def _csv(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """The rows as CSV; NaN and infinite values are left empty."""
    from ..bench.tables import csv_bytes

    return csv_bytes([{k: (v if _finite_or_text(v) else None) for k, v in row.items()}
                      for row in rows], ROW_COLUMNS)


def _finite_or_text(value: Any) -> bool:
    return isinstance(value, str) or _finite(value)


# ---------------------------------------------------------------------------- plots
def _plot_layers(rows: Sequence[Mapping[str, Any]], path: Path) -> str:
    from ..bench import plots

    panels = [*(m for m in MEASURES if m != "partition_isotropy"), "gaps"]
    fig = plots._figure_module()(figsize=(14, 7.5), layout="constrained")
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
                              color=f"C{i}", label=f"{model}: {_SHORT[gap]}")
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
    return plots._save(fig, path)


def _plot_vs_gap(
    rows: Sequence[Mapping[str, Any]], corr: Sequence[Mapping[str, Any]], path: Path
) -> str:
    from ..bench import plots

    rho = {(c["measure"], c["gap"]): c["rho"] for c in corr if c["scope"] == "all"}
    fig = plots._figure_module()(figsize=(3.6 * len(CORRELATED), 4.2), layout="constrained")
    axes = fig.subplots(1, len(CORRELATED), squeeze=False)[0]
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    markers = dict(zip(GAPS, ("o", "x"), strict=True))
    for axis, measure in zip(axes, CORRELATED, strict=True):
        for i, model in enumerate(models):
            members = [r for r in rows if r["model"] == model]
            for gap, marker in markers.items():
                axis.scatter([_nan(r[measure]) for r in members],
                             [_nan(r[gap]) for r in members], s=16, marker=marker,
                             color=f"C{i}", label=f"{model}: {_SHORT[gap]}")
        values = ", ".join("-" if rho.get((measure, g)) is None
                           else f"{_SHORT[g]} {rho[(measure, g)]:+.2f}" for g in GAPS)
        axis.set(xlabel=f"{measure}\n({MEASURES[measure]} = more isotropic)",
                 title=f"Spearman ρ\n{values}")
        axis.axhline(0.0, color="0.6", linewidth=1)
        axis.grid(alpha=0.3)
    axes[0].set(ylabel="AUROC gap (cosine minus other)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Isotropy of the ID bank vs AUROC gap, one point per (model, layer) and gap")
    return plots._save(fig, path)


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def write_plots(result: StudyResult, directory: Path) -> dict[str, Any]:
    """``isotropy_layers.png`` and ``isotropy_vs_gap.png`` into ``directory``.

    Returns
    -------
    dict
        ``{"files": [paths]}``, or ``{"skipped": reason}`` when matplotlib is missing.
    """
    from ..bench import plots

    try:
        plots._figure_module()
    except ImportError:
        print(plots.MISSING_MATPLOTLIB, file=sys.stderr)
        return {"skipped": plots.MISSING_MATPLOTLIB}
    return {"files": [
        _plot_layers(result.rows, directory / "isotropy_layers.png"),
        _plot_vs_gap(result.rows, result.correlations, directory / "isotropy_vs_gap.png"),
    ]}


def write_outputs(result: StudyResult, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``isotropy.json``, ``isotropy.md``, ``isotropy.csv`` and ``plots/*.png`` atomically.

    Returns
    -------
    dict
        ``{"files": [...], "plots": {...}}``: the paths written and the plot status (files
        relative to ``out_dir``, or the reason plots were skipped).
    """
    from ..bench.tables import jsonable

    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
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
        "correlations": result.correlations,
        **{k: v for k, v in result.meta.items() if k != "config"},
        "plots": status,
    }
    md, _ = render_tables(result)
    outputs = {
        "isotropy.json": (json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n"
                          ).encode("utf-8"),
        "isotropy.md": (md + "\n").encode("utf-8"),
        "isotropy.csv": _csv(result.rows),
    }
    files = []
    for name, data in outputs.items():
        atomic_write_bytes(directory / name, data)
        files.append(str(directory / name))
    return {"files": files + [str(directory / f) for f in status.get("files", [])],
            "plots": status}


# ---------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``ood-zoo isotropy`` to ``parser``."""
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated registered models or local model directories "
                        f"(default {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--pooling", action="append", default=[], metavar="[MODEL=]MODE",
                        help="pooling (last, mean, first) of every model, or of MODEL; "
                        "repeatable (default: each model's own)")
    parser.add_argument("--template", action="append", default=[], metavar="[MODEL=]TEXT",
                        help="prompt with {text} for every model, or for MODEL; '' for raw text; "
                        "repeatable (default: the paper's for SmolLM2/causal LMs, none for "
                        "encoders)")
    parser.add_argument("--id", default="rt", help="ID corpus of the zero-grad suite (default rt)")
    parser.add_argument("--ood", default="chitchat",
                        help="OOD corpus of the zero-grad suite (default chitchat)")
    parser.add_argument("--n-bank", type=int, default=DEFAULT_N,
                        help=f"ID bank texts (default {DEFAULT_N})")
    parser.add_argument("--n-test", type=int, default=DEFAULT_N,
                        help=f"ID test texts (default {DEFAULT_N})")
    parser.add_argument("--n-ood", type=int, default=DEFAULT_N,
                        help=f"OOD texts (default {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    parser.add_argument("--max-length", type=int, default=128,
                        help="tokens per text, template included (default 128)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="results/isotropy",
                        help="results directory (default results/isotropy)")
    parser.add_argument("--no-cache", action="store_true", help="do not use the features cache")
    parser.add_argument("--no-plots", action="store_true", help="do not draw plots")
    parser.add_argument("--threads", type=int, help="torch threads (default OMP_NUM_THREADS or 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _per_model(values: Sequence[str], names: Sequence[str], what: str) -> dict[str | None, str]:
    """``[MODEL=]VALUE`` options as ``{model or None (every model): value}``."""
    from ..cli import CommandError

    out: dict[str | None, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        target, text = (key, rest) if sep and key in names else (None, value)
        if target in out:
            raise CommandError(f"{what} given twice for {target or 'every model'}")
        out[target] = text
    return out


def config_from_args(args: argparse.Namespace) -> IsotropyConfig:
    """An :class:`IsotropyConfig` from parsed ``ood-zoo isotropy`` options.

    Raises
    ------
    ood_zoo.cli.CommandError
        On an empty model list, an unknown model or corpus, or an option given twice.
    """
    from ..bench.suites import get_suite
    from ..cli import CommandError

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        raise CommandError("--models is empty")
    pooling = _per_model(args.pooling, names, "--pooling")
    template = _per_model(args.template, names, "--template")
    corpora = get_suite("zero-grad").corpora
    for option, key in (("--id", args.id), ("--ood", args.ood)):
        if key not in corpora:
            raise CommandError(f"{option}: unknown corpus {key!r}; choose from "
                               f"{', '.join(corpora)}")
    models = tuple(
        ModelChoice(n, pooling.get(n, pooling.get(None)), template.get(n, template.get(None)))
        for n in names
    )
    config = IsotropyConfig(
        models=models, id_corpus=args.id, ood_corpus=args.ood, n_bank=args.n_bank,
        n_test=args.n_test, n_ood=args.n_ood, seed=args.seed, max_length=args.max_length,
        batch_size=args.batch_size, cache=not args.no_cache, plots=not args.no_plots,
        progress=not args.quiet, threads=args.threads,
    )
    for model in models:
        try:
            resolve_model(model)
        except InputError as exc:
            raise CommandError(str(exc)) from None
    return config


def run_cli(args: argparse.Namespace) -> int:
    """Run ``ood-zoo isotropy``: the study, its outputs, and the final-layer table on stdout."""
    config = config_from_args(args)
    result = run_study(config)
    written = write_outputs(result, args.out)
    print(render_tables(result)[1])
    if "skipped" in written["plots"]:
        print(f"plots skipped: {written['plots']['skipped']}")
    print(f"total {result.meta['timing_s']['total_s']:.1f} s; wrote {len(written['files'])} "
          f"files to {args.out}")
    return 0
